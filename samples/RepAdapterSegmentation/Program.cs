// RepAdapter semantic segmentation, end to end: build a data set with no download, train RepAdapter and a head-only
// baseline (same head, same epochs) on ML.NET's pretrained ResNet-18, evaluate both (mean IoU), save, reload, predict,
// and write overlays (image | ground truth | prediction) to look at.
//
//   dotnet run -c Release --project samples/RepAdapterSegmentation [-- --train 240 --test 100 --seed 42 --time-budget 600]
//       [--epochs 24 --lr 0.01 --scale 1] (unset: the trainer's CPU recipe, its scale and learning rate chosen on held-out mosaics)
//
// Data: mosaics of the Fashion-MNIST items committed in samples/data/fashion-mnist (2 x 2 cells of 56 px items on
// black, 112 px; class 0 background, 1..10 the items), generated into samples/data/segmentation-mosaics at first run.
using System.Diagnostics;
using SkiaSharp;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Segmentation;
using RepAdapter.SampleData;
using RepAdapterSegmentation;

var arguments = Arguments.Parse(args);
var mlContext = new MLContext(seed: arguments.Seed);
mlContext.Log += (_, e) =>
{
    if (e.Kind == Microsoft.ML.Runtime.ChannelMessageKind.Info && e.Source.Contains("RepAdapter") && e.RawMessage.StartsWith("epoch ")) Console.WriteLine($"  {e.RawMessage}");
};

string data = Path.Combine(Arguments.RepoRoot(), "samples", "data");
string items = Path.Combine(data, "fashion-mnist");
string mosaics = Path.Combine(data, "segmentation-mosaics");
string[] classNames = SegmentationMosaics.ClassNames(Path.Combine(items, "train"));
var trainRows = SegmentationMosaics.Write(Path.Combine(items, "train"), Path.Combine(mosaics, $"train-{arguments.Train}"), arguments.Train, seed: 1);
var testRows = SegmentationMosaics.Write(Path.Combine(items, "test"), Path.Combine(mosaics, $"test-{arguments.Test}"), arguments.Test, seed: 2);
Console.WriteLine($"Data: {trainRows.Count} training and {testRows.Count} test mosaics (112 px), {classNames.Length} classes, in {mosaics}.");

// Masks are loaded as data preparation, outside the saved model, so that the model scores from image paths alone.
IDataView WithMasks(List<SegmentationMosaics.Mosaic> rows)
{
    var view = mlContext.Data.LoadFromEnumerable(rows.Select(r => new Row { ImagePath = r.ImagePath, MaskPath = r.MaskPath }));
    return mlContext.Transforms.LoadImages("Mask", "", nameof(Row.MaskPath)).Fit(view).Transform(view);
}
var trainData = WithMasks(trainRows);
var testData = WithMasks(testRows);

var settings = new MLModel.TrainingSettings(classNames, arguments.Epochs, LearningRate: arguments.LearningRate, Seed: arguments.Seed, AdapterScale: arguments.Scale,
    TimeBudget: arguments.TimeBudget);
var results = new List<(string Name, SegmentationMetrics Metrics, TimeSpan Time, long Trainable)>();
ITransformer? repAdapterModel = null;
foreach (var (name, trainable) in new[] { ("RepAdapter", arguments.Trainable), ("Head only", TrainableParameters.HeadOnly) })
{
    Console.WriteLine($"\nTraining: {name}");
    var clock = Stopwatch.StartNew();
    var model = MLModel.RetrainPipeline(mlContext, trainData, settings with { Trainable = trainable });
    clock.Stop();
    var metrics = mlContext.MulticlassClassification.EvaluateSegmentation(model.Transform(testData));
    var transformer = ((IEnumerable<ITransformer>)model).OfType<RepAdapterSegmentationTransformer>().Single();
    results.Add((name, metrics, clock.Elapsed, transformer.TrainableParameterCount));
    Console.WriteLine($"  trained: {transformer.Summary.Recipe}" + (transformer.Summary.Search is { } search ? $"; search: {search.Reason}" : ""));
    if (trainable != TrainableParameters.HeadOnly) repAdapterModel = model;
}

Console.WriteLine("\nEvaluation on the test mosaics (every labelled pixel)");
Console.WriteLine($"{"method",-12} {"trainable params",17} {"mIoU",7} {"pixel acc",10} {"train time",11}");
foreach (var (name, m, time, trainable) in results)
    Console.WriteLine($"{name,-12} {trainable,17:N0} {m.MeanIoU,7:P1} {m.PixelAccuracy,10:P1} {time,11:mm\\:ss}");
Console.WriteLine($"\n{"class",-12} {"IoU RepAdapter",15} {"IoU head only",14}");
for (int k = 0; k < classNames.Length; k++)
    Console.WriteLine($"{classNames[k],-12} {results[0].Metrics.PerClassIoU[k],15:P1} {results[1].Metrics.PerClassIoU[k],14:P1}");

mlContext.Model.Save(repAdapterModel!, trainData.Schema, MLModel.MLNetModelPath);
Console.WriteLine($"\nSaved {MLModel.MLNetModelPath} ({new FileInfo(MLModel.MLNetModelPath).Length / 1048576.0:F1} MB, merged weights).");

string overlays = Path.Combine(Path.GetDirectoryName(MLModel.MLNetModelPath)!, "overlays.png");
var shown = new List<(string Image, string Mask, uint[] Predicted)>();
Console.WriteLine("Reloaded it and segmented a few test mosaics:");
foreach (var row in testRows.Take(4))
{
    var output = MLModel.Predict(new MLModel.ModelInput { ImagePath = row.ImagePath });
    shown.Add((row.ImagePath, row.MaskPath, output.PredictedMask));
    var found = output.PredictedMask.Where(k => k > 0).GroupBy(k => k).OrderByDescending(g => g.Count()).Take(3).Select(g => classNames[g.Key]);
    Console.WriteLine($"  {row.ImagePath}: {string.Join(", ", found)}");
}
Overlay.Write(shown, classNames, $"RepAdapter, {results[0].Metrics.MeanIoU:P1} mean IoU on {arguments.Test} test mosaics", overlays);
Console.WriteLine($"Overlays (image | ground truth | prediction, with the colour key): {overlays}");
return 0;

internal sealed class Row
{
    public string ImagePath { get; set; } = "";
    public string MaskPath { get; set; } = "";
}

/// <summary>
/// One figure of rows (image | ground truth | prediction), each panel enlarged, captioned, with a key of the classes'
/// colours (the transformer's ClassColor), so that a reader can tell what was predicted where.
/// </summary>
internal static class Overlay
{
    private const int Scale = 3, Caption = 34, KeyRow = 30, Margin = 12;

    public static void Write(IReadOnlyList<(string Image, string Mask, uint[] Predicted)> rows, string[] classNames, string title, string output)
    {
        using var first = SKBitmap.Decode(rows[0].Image);
        int panel = first.Width * Scale, height = first.Height * Scale;
        int keyColumns = 4, keyRows = (classNames.Length + keyColumns - 1) / keyColumns;
        int width = 3 * panel + 4 * Margin;
        int total = Caption * 2 + rows.Count * (height + Margin) + keyRows * KeyRow + Margin;
        using var figure = new SKBitmap(width, total);
        using var canvas = new SKCanvas(figure);
        canvas.Clear(SKColors.White);
        using var font = new SKFont(SKTypeface.Default, 18);
        using var ink = new SKPaint { Color = SKColors.Black, IsAntialias = true };
        canvas.DrawText(title, Margin, 24, font, ink);
        string[] captions = ["image", "ground truth", "prediction"];
        for (int c = 0; c < 3; c++) canvas.DrawText(captions[c], Margin + c * (panel + Margin), Caption + 24, font, ink);
        for (int r = 0; r < rows.Count; r++)
        {
            int top = 2 * Caption + r * (height + Margin);
            using var image = SKBitmap.Decode(rows[r].Image);
            using var mask = SKBitmap.Decode(rows[r].Mask);
            var panels = new[] { image, Colored(mask.Width, mask.Height, p => mask.GetPixel(p % mask.Width, p / mask.Width).Red), Colored(mask.Width, mask.Height, p => (int)rows[r].Predicted[p]) };
            for (int c = 0; c < 3; c++)
            {
                // Nearest-pixel enlargement: class boundaries stay sharp.
                using var picture = SKImage.FromBitmap(panels[c]);
                canvas.DrawImage(picture, new SKRect(Margin + c * (panel + Margin), top, Margin + c * (panel + Margin) + panel, top + height),
                    new SKSamplingOptions(SKFilterMode.Nearest));
            }
            panels[1].Dispose();
            panels[2].Dispose();
        }
        int keyTop = 2 * Caption + rows.Count * (height + Margin);
        for (int k = 0; k < classNames.Length; k++)
        {
            var (red, green, blue) = RepAdapterSegmentationTransformer.ClassColor(k);
            float x = Margin + k % keyColumns * (width - 2 * Margin) / keyColumns, y = keyTop + k / keyColumns * KeyRow;
            using var swatch = new SKPaint { Color = new SKColor(red, green, blue) };
            canvas.DrawRect(x, y, 20, 20, swatch);
            canvas.DrawRect(x, y, 20, 20, new SKPaint { Color = SKColors.Gray, Style = SKPaintStyle.Stroke });
            canvas.DrawText($"{k} {classNames[k]}", x + 26, y + 16, font, ink);
        }
        using var data = figure.Encode(SKEncodedImageFormat.Png, 100);
        File.WriteAllBytes(output, data.ToArray());
    }

    /// <summary>A bitmap of each pixel's class colour, the class of pixel p (row-major) given by <paramref name="classOf"/>.</summary>
    private static SKBitmap Colored(int width, int height, Func<int, int> classOf)
    {
        var bitmap = new SKBitmap(width, height);
        for (int p = 0; p < width * height; p++)
        {
            var (red, green, blue) = RepAdapterSegmentationTransformer.ClassColor(classOf(p));
            bitmap.SetPixel(p % width, p / width, new SKColor(red, green, blue));
        }
        return bitmap;
    }
}

internal sealed record Arguments(int Train, int Test, int? Epochs, int Seed, double? LearningRate, TrainableParameters Trainable, float? Scale,
    TimeSpan? TimeBudget)
{
    public static Arguments Parse(string[] args)
    {
        var a = new Arguments(240, 100, null, 42, null, TrainableParameters.AdaptersHeadAndBiases, null, null);
        for (int i = 0; i < args.Length; i += 2)
        {
            string value = i + 1 < args.Length ? args[i + 1] : throw new ArgumentException($"{args[i]} needs a value.");
            a = args[i] switch
            {
                "--train" => a with { Train = int.Parse(value) },
                "--test" => a with { Test = int.Parse(value) },
                "--epochs" => a with { Epochs = int.Parse(value) },
                "--seed" => a with { Seed = int.Parse(value) },
                "--lr" => a with { LearningRate = double.Parse(value, System.Globalization.CultureInfo.InvariantCulture) },
                "--trainable" => a with { Trainable = Enum.Parse<TrainableParameters>(value) },
                "--scale" => a with { Scale = float.Parse(value, System.Globalization.CultureInfo.InvariantCulture) },
                "--time-budget" => a with { TimeBudget = TimeSpan.FromSeconds(double.Parse(value, System.Globalization.CultureInfo.InvariantCulture)) },
                var unknown => throw new ArgumentException($"Unknown option {unknown}."),
            };
        }
        return a;
    }

    public static string RepoRoot()
    {
        foreach (var start in new[] { Directory.GetCurrentDirectory(), AppContext.BaseDirectory })
        {
            for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
                if (Directory.Exists(Path.Combine(dir.FullName, "samples", "data", "fashion-mnist"))) return dir.FullName;
        }
        throw new DirectoryNotFoundException("samples/data/fashion-mnist not found: run from the repository.");
    }
}
