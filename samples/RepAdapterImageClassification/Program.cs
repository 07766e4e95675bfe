// RepAdapter image classification, end to end: train, evaluate next to a head-only baseline, save, reload, predict;
// then the same model as ML.NET built-ins around its ONNX graph (ToOnnxPipeline), compared with the TorchSharp model.
//
//   dotnet run --project samples/RepAdapterImageClassification
//       Fashion-MNIST images committed in samples/data/fashion-mnist, ML.NET's pretrained ResNet-18. No download.
//   dotnet run --project samples/RepAdapterImageClassification -- --fashion-mnist /usr/share/datasets/fashion-mnist --per-class 100
//       draws a larger balanced sample from the full set (Debian package dataset-fashion-mnist).
//   dotnet run --project samples/RepAdapterImageClassification -- --train <folder> --test <folder>
//       [--architecture vit_base_patch16_224 --checkpoint ViT-B_16.npz] [--time-budget 120] [--epochs 12] [--batch-size 16]
//       [--scale 10] [--adapted-blocks 3|all] [--image-size 112] any folder of images, one sub-folder per label.
//   Without arguments the trainer's CPU recipe runs (ML.NET's ResNet-18 at 112 px, its mean image resampled), with the
//   scale, learning rate and adapted blocks chosen on held-out training images; every option given is kept as given.
using System.Diagnostics;
using System.IO.Compression;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Classification;
using Microsoft.ML.RepAdapter.MLNet;
using RepAdapterImageClassification;

var arguments = Arguments.Parse(args);
var mlContext = new MLContext(seed: 42);
mlContext.Log += (_, e) =>
{
    if (e.Kind == Microsoft.ML.Runtime.ChannelMessageKind.Info && e.Source.Contains("RepAdapter")) Console.WriteLine($"  {e.RawMessage}");
};

var (trainRows, testRows, dataName) = arguments.LoadData();
Console.WriteLine($"Data: {dataName}: {trainRows.Count} training and {testRows.Count} test images, {trainRows.Select(r => r.Label).Distinct().Count()} labels.");
var trainData = mlContext.Data.LoadFromEnumerable(trainRows);
var testData = mlContext.Data.LoadFromEnumerable(testRows);

var settings = arguments.Settings();
var results = new List<(string name, MulticlassClassificationMetrics metrics, TimeSpan time, long trainable)>();
IReadOnlyList<string> labels = [];
ITransformer? repAdapterModel = null;
foreach (var (name, trainable) in new[] { ("RepAdapter", TrainableParameters.AdaptersAndHead), ("Head only (linear probe)", TrainableParameters.HeadOnly) })
{
    Console.WriteLine($"\nTraining: {name}");
    var clock = Stopwatch.StartNew();
    // Head-only gets its own best learning rate (measured: 1e-2), so the comparison is with a well-tuned linear probe.
    MLModel.Settings = trainable == TrainableParameters.HeadOnly ? settings with { Trainable = trainable, LearningRate = 1e-2 } : settings;
    var model = MLModel.RetrainPipeline(mlContext, trainData);
    clock.Stop();
    var metrics = mlContext.MulticlassClassification.Evaluate(model.Transform(testData));
    var transformer = ((IEnumerable<ITransformer>)model).OfType<RepAdapterImageClassificationTransformer>().Single();
    results.Add((name, metrics, clock.Elapsed, transformer.TrainableParameterCount));
    if (trainable == TrainableParameters.AdaptersAndHead) (repAdapterModel, labels) = (model, transformer.LabelNames);
}

Console.WriteLine("\nTraining: ML.NET pipeline (DnnFeaturizeImage ResNet-18 + LbfgsMaximumEntropy), what ML.NET users run today");
var (baseline, baselineTime, baselineTrainable) = MLNetPipeline.FitAndEvaluate(mlContext, trainRows, testRows);
results.Add(("ML.NET pipeline", baseline, baselineTime, baselineTrainable));

Console.WriteLine("\nEvaluation on the test images");
Console.WriteLine($"{"method",-26} {"trainable params",17} {"accuracy",9} {"macro acc",10} {"log-loss",9} {"train time",11}");
foreach (var (name, m, time, trainable) in results)
    Console.WriteLine($"{name,-26} {trainable,17:N0} {m.MicroAccuracy,9:P1} {m.MacroAccuracy,10:P1} {m.LogLoss,9:F3} {time,11:mm\\:ss}");

var best = results[0].metrics;
Console.WriteLine("\nRepAdapter per class");
Console.WriteLine($"{"label",-14} {"precision",10} {"recall",8} {"log-loss",9}");
for (int k = 0; k < best.ConfusionMatrix.NumberOfClasses; k++)
    Console.WriteLine($"{labels[k],-14} {best.ConfusionMatrix.PerClassPrecision[k],10:P1} {best.ConfusionMatrix.PerClassRecall[k],8:P1} {best.PerClassLogLoss[k],9:F3}");

mlContext.Model.Save(repAdapterModel!, trainData.Schema, MLModel.MLNetModelPath);
Console.WriteLine($"\nSaved {MLModel.MLNetModelPath} ({new FileInfo(MLModel.MLNetModelPath).Length / 1048576.0:F1} MB, merged weights).");

// The same task as a kilobyte task model: the adapters before merging and the head, with the backbone's source and
// fingerprint. Loading it rebuilds ML.NET's ResNet-18, merges, and scores exactly as the merged model does.
var trained = ((IEnumerable<ITransformer>)repAdapterModel!).OfType<RepAdapterImageClassificationTransformer>().Single();
string taskModelPath = Path.ChangeExtension(MLModel.MLNetModelPath, ".task.zip");
trained.Storage = ModelStorage.AdaptersOnly;
mlContext.Model.Save(repAdapterModel!, trainData.Schema, taskModelPath);
trained.Storage = ModelStorage.Merged;
var fromTaskModel = mlContext.Model.Load(taskModelPath, out _);
double scoreGap = repAdapterModel!.Transform(testData).GetColumn<float[]>("Score")
    .Zip(fromTaskModel.Transform(testData).GetColumn<float[]>("Score"), (a, b) => a.Zip(b, (x, y) => Math.Abs(x - y)).Max()).Max();
Console.WriteLine($"Saved {taskModelPath} ({new FileInfo(taskModelPath).Length / 1024.0:F0} KB, adapters only): reloaded, it scores the test images "
    + $"as the merged model (largest score difference {scoreGap:G2}).");

Console.WriteLine("Reloaded the merged model and predicted a few test images:");
foreach (var row in testRows.Where((_, i) => i % Math.Max(1, testRows.Count / 5) == 0).Take(5))
{
    var input = new MLModel.ModelInput { ImageSource = row.ImageSource };
    var top = MLModel.PredictAllLabels(input).Take(3).Select(kv => $"{kv.Key} {kv.Value:P0}");
    Console.WriteLine($"  true {row.Label,-12} predicted {MLModel.Predict(input).PredictedLabel,-12} top 3: {string.Join(", ", top)}");
}

// Deployment without libtorch: the same model as ML.NET built-ins around its ONNX graph (ToOnnxPipeline), saved, reloaded,
// and compared with the TorchSharp model on the test images. ML.NET decodes images from files only (LoadImages), so the
// test images are written to a temporary folder; samples/OnnxScoring loads the saved .zip without TorchSharp.
var repAdapter = ((IEnumerable<ITransformer>)repAdapterModel!).OfType<RepAdapterImageClassificationTransformer>().Single();
var imageFolder = Directory.CreateTempSubdirectory("repadapter-onnx-");
try
{
    var paths = testRows.Select((row, i) =>
    {
        string path = Path.Combine(imageFolder.FullName, $"{i:D5}.img");
        File.WriteAllBytes(path, row.ImageSource);
        return new ImagePath(path);
    }).ToList();
    var pathData = mlContext.Data.LoadFromEnumerable(paths);
    // Images of one size (Fashion-MNIST: 28 x 28) are resampled in the graph as the library does; otherwise ML.NET's
    // ResizeImages (nearest pixel) makes them S x S.
    var sizes = testRows.Select(row =>
    {
        using var image = MLImage.CreateFromStream(new MemoryStream(row.ImageSource));
        return (image.Width, image.Height);
    }).Distinct().ToList();
    (int Width, int Height)? sourceSize = sizes.Count == 1 ? sizes[0] : null;
    var onnxChain = mlContext.Transforms.LoadImages("ImageSource", "", nameof(ImagePath.Path)).Fit(pathData)
        .Append(repAdapter.ToOnnxPipeline(mlContext, sourceSize));
    // As the training pipeline ends: PredictedLabel back to the label text, so ModelOutput reads either model.
    var onnxModel = onnxChain.Append(mlContext.Transforms.Conversion.MapKeyToValue("PredictedLabel").Fit(onnxChain.Transform(pathData)));
    string onnxModelPath = Path.ChangeExtension(MLModel.MLNetModelPath, ".onnx.zip");
    mlContext.Model.Save(onnxModel, pathData.Schema, onnxModelPath);
    var reloaded = mlContext.Model.Load(onnxModelPath, out _);
    var torchLabels = repAdapterModel!.Transform(testData).GetColumn<string>("PredictedLabel").ToArray();
    var onnxLabels = reloaded.Transform(pathData).GetColumn<string>("PredictedLabel").ToArray();
    int agree = torchLabels.Zip(onnxLabels).Count(p => p.First == p.Second);
    Console.WriteLine($"\nSaved {onnxModelPath} ({new FileInfo(onnxModelPath).Length / 1048576.0:F1} MB): ML.NET built-ins and the ONNX graph, loadable without TorchSharp (samples/OnnxScoring).");
    string resizing = sourceSize is var (w, h) ? $"{w} x {h} images resampled in the graph" : "ResizeImages, nearest pixel";
    Console.WriteLine($"ONNX chain vs TorchSharp model: {agree} of {torchLabels.Length} test predictions agree ({resizing}).");

    // The same chain with int8 linear layers (ONNX Runtime's dynamic quantization): accuracy against float32's.
    var int8Chain = mlContext.Transforms.LoadImages("ImageSource", "", nameof(ImagePath.Path)).Fit(pathData)
        .Append(repAdapter.ToOnnxPipeline(mlContext, sourceSize, OnnxQuantization.DynamicInt8));
    var int8Labels = int8Chain.Append(mlContext.Transforms.Conversion.MapKeyToValue("PredictedLabel").Fit(int8Chain.Transform(pathData)))
        .Transform(pathData).GetColumn<string>("PredictedLabel").ToArray();
    double Accuracy(string[] predicted) => predicted.Zip(testRows, (p, row) => p == row.Label ? 1.0 : 0.0).Average();
    Console.WriteLine($"ONNX int8 (linear layers int8, convolutions float32): accuracy {Accuracy(int8Labels):P1} against float32's {Accuracy(onnxLabels):P1}; "
        + $"{int8Labels.Zip(onnxLabels).Count(p => p.First == p.Second)} of {onnxLabels.Length} predictions agree.");
}
finally
{
    imageFolder.Delete(recursive: true);
}
return 0;

internal sealed record ImagePath(string Path);

internal sealed record Arguments(string? Train, string? Test, string? FashionMnist, int PerClass, string? Architecture, string? Checkpoint,
    int? Epochs, int? BatchSize, float? Scale, int? AdaptedBlocks, int? ImageSize, TimeSpan? TimeBudget)
{
    private static readonly string[] FashionLabels = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"];

    public static Arguments Parse(string[] args)
    {
        var a = new Arguments(null, null, null, 100, null, null, null, null, null, null, null, null);
        for (int i = 0; i < args.Length; i++)
        {
            string value = i + 1 < args.Length ? args[i + 1] : throw new ArgumentException($"{args[i]} needs a value.");
            a = args[i++] switch
            {
                "--train" => a with { Train = value },
                "--test" => a with { Test = value },
                "--fashion-mnist" => a with { FashionMnist = value },
                "--per-class" => a with { PerClass = int.Parse(value) },
                "--architecture" => a with { Architecture = value },
                "--checkpoint" => a with { Checkpoint = value },
                "--epochs" => a with { Epochs = int.Parse(value) },
                "--batch-size" => a with { BatchSize = int.Parse(value) },
                "--scale" => a with { Scale = float.Parse(value) },
                "--image-size" => a with { ImageSize = int.Parse(value) },
                "--adapted-blocks" => a with { AdaptedBlocks = value == "all" ? Microsoft.ML.RepAdapter.MLNet.TrainingRecipe.AllBlocks : int.Parse(value) },
                "--time-budget" => a with { TimeBudget = TimeSpan.FromSeconds(double.Parse(value, System.Globalization.CultureInfo.InvariantCulture)) },
                var unknown => throw new ArgumentException($"Unknown option {unknown}."),
            };
        }
        return a;
    }

    public MLModel.TrainingSettings Settings()
    {
        if (Architecture is not null && Checkpoint is null) throw new ArgumentException("--architecture needs --checkpoint: fine-tuning needs pretrained weights.");
        return new MLModel.TrainingSettings(Epochs, BatchSize, AdapterScale: Scale, AdaptedBlocks: AdaptedBlocks, CheckpointPath: Checkpoint,
            Architecture: Architecture, ImageSize: ImageSize, TimeBudget: TimeBudget);
    }

    public (List<MLModel.ModelInput> train, List<MLModel.ModelInput> test, string name) LoadData()
    {
        if (Train is not null)
        {
            var train = FromFolder(Train);
            var test = Test is not null ? FromFolder(Test) : [];
            if (test.Count == 0) throw new ArgumentException("--train needs --test <folder> with the same label sub-folders.");
            return (train, test, Train);
        }
        if (FashionMnist is not null)
            return (FromIdx(FashionMnist, "train", PerClass), FromIdx(FashionMnist, "t10k", Math.Max(1, PerClass / 2)), $"Fashion-MNIST ({FashionMnist})");
        string subset = Path.Combine(FindRepoRoot(), "samples", "data", "fashion-mnist");
        return (FromFolder(Path.Combine(subset, "train")), FromFolder(Path.Combine(subset, "test")), "Fashion-MNIST subset (samples/data)");
    }

    private static List<MLModel.ModelInput> FromFolder(string folder) =>
        [.. Directory.GetDirectories(folder).Order(StringComparer.Ordinal)
            .SelectMany(labelFolder => Directory.GetFiles(labelFolder).Order(StringComparer.Ordinal)
                .Select(file => new MLModel.ModelInput { Label = Path.GetFileName(labelFolder), ImageSource = File.ReadAllBytes(file) }))];

    /// <summary>The first <paramref name="perClass"/> items of each class of an IDX split, encoded as PNG.</summary>
    private static List<MLModel.ModelInput> FromIdx(string folder, string split, int perClass)
    {
        byte[] images = ReadGzip(Path.Combine(folder, $"{split}-images-idx3-ubyte.gz"));
        byte[] labels = ReadGzip(Path.Combine(folder, $"{split}-labels-idx1-ubyte.gz"));
        const int Side = 28, Header = 16;
        var rows = new List<MLModel.ModelInput>();
        var taken = new int[10];
        for (int i = 0; i < labels.Length - 8 && rows.Count < perClass * 10; i++)
        {
            int label = labels[8 + i];
            if (taken[label]++ >= perClass) continue;
            var bgra = new byte[Side * Side * 4];
            for (int p = 0; p < Side * Side; p++)
            {
                byte v = images[Header + i * Side * Side + p];
                (bgra[4 * p], bgra[4 * p + 1], bgra[4 * p + 2], bgra[4 * p + 3]) = (v, v, v, 255);
            }
            using var image = MLImage.CreateFromPixels(Side, Side, MLPixelFormat.Bgra32, bgra);
            string png = Path.Combine(Path.GetTempPath(), $"fashion-{Guid.NewGuid():N}.png");
            image.Save(png);
            rows.Add(new MLModel.ModelInput { Label = FashionLabels[label], ImageSource = File.ReadAllBytes(png) });
            File.Delete(png);
        }
        return rows;
    }

    private static byte[] ReadGzip(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{path} not found (apt-get install dataset-fashion-mnist).", path);
        using var gzip = new GZipStream(File.OpenRead(path), CompressionMode.Decompress);
        using var memory = new MemoryStream();
        gzip.CopyTo(memory);
        return memory.ToArray();
    }

    private static string FindRepoRoot()
    {
        foreach (var start in new[] { Directory.GetCurrentDirectory(), AppContext.BaseDirectory })
        {
            for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
                if (Directory.Exists(Path.Combine(dir.FullName, "samples", "data", "fashion-mnist"))) return dir.FullName;
        }
        throw new DirectoryNotFoundException("samples/data/fashion-mnist not found: run from the repository, or pass --train/--test.");
    }
}
