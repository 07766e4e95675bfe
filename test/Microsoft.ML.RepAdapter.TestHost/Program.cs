// A separate process for the tests, for what must work in a fresh process and for what could kill one:
//   TestHost score <model.zip> <image-list.txt> <scores.json>
//       loads the model, scores every image path of the list with a PredictionEngine (row by row) and with one batch
//       Transform, and writes both score matrices as JSON.
//   TestHost segment <model.zip> <image-list.txt> <masks.json>
//       the same for a segmentation model's PredictedMask.
//   TestHost read-checkpoint <path>
//       reads a checkpoint file.
//   TestHost fit <option>=<value> <image> <image> ...
//       fits a tiny ViT on the images (first half one class, second half another) with one trainer option set.
//   TestHost resumable <state-folder|-> <scores.json> <image> <image> ...
//       fits a tiny ViT for 8 epochs saving its state in the folder (resuming from it if there is one), prints
//       "EPOCH n" after each epoch it trains, and writes the training images' scores.
//   TestHost stream <images> <cache> <pixels>
//       fits a tiny ViT for 2 epochs on that many generated <pixels>-square images (never all in memory: each row's
//       image is drawn when the trainer reads it) with that ImageCache, and prints peak memory and throughput as JSON.
// A handled error prints "EXCEPTION <type>: <message>" and exits 0; a native crash ends the process otherwise, which
// the calling test reports instead of dying with it.
using System.Text.Json;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Formats;
using Microsoft.ML.RepAdapter;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Checkpoints;
using Microsoft.ML.RepAdapter.Classification;
using Microsoft.ML.RepAdapter.MLNet;

try
{
    switch (args.FirstOrDefault())
    {
        case "score" when args.Length == 4:
            Score(args[1], args[2], args[3]);
            break;
        case "segment" when args.Length == 4:
            Segment(args[1], args[2], args[3]);
            break;
        case "read-checkpoint" when args.Length == 2:
            using (var checkpoint = CheckpointReader.Read(args[1])) Console.WriteLine($"OK {checkpoint.Tensors.Count} tensors");
            break;
        case "fit" when args.Length >= 4:
            Fit(args[1], args[2..]);
            break;
        case "resumable" when args.Length >= 5:
            Resumable(args[1] == "-" ? null : args[1], args[2], args[3..]);
            break;
        case "stream" when args.Length == 4:
            Stream(int.Parse(args[1]), Enum.Parse<ImageCache>(args[2]), int.Parse(args[3]));
            break;
        default:
            Console.Error.WriteLine("usage: TestHost score|segment <model.zip> <image-list.txt> <output.json> | read-checkpoint <path> "
                + "| fit <option>=<value> <image>... | resumable <state-folder|-> <scores.json> <image>... | stream <images> <cache> <pixels>");
            return 2;
    }
}
catch (Exception e)
{
    Console.WriteLine($"EXCEPTION {e.GetType().FullName}: {e.Message}");
}
return 0;

static void Score(string modelPath, string imageList, string output)
{
    var mlContext = new MLContext(seed: 0);
    var model = mlContext.Model.Load(modelPath, out _);
    var inputs = File.ReadAllLines(imageList).Where(line => line.Length > 0).Select(path => new ImageInput { ImagePath = path }).ToList();

    using var engine = mlContext.Model.CreatePredictionEngine<ImageInput, ScoreOutput>(model);
    var engineScores = inputs.Select(input => engine.Predict(input).Score).ToList();

    var scored = model.Transform(mlContext.Data.LoadFromEnumerable(inputs));
    var batchScores = scored.GetColumn<float[]>("Score").ToList();

    File.WriteAllText(output, JsonSerializer.Serialize(new { engine = engineScores, batch = batchScores }));
    Console.WriteLine($"scored {inputs.Count} images");
}

static void Segment(string modelPath, string imageList, string output)
{
    var mlContext = new MLContext(seed: 0);
    var model = mlContext.Model.Load(modelPath, out _);
    var inputs = File.ReadAllLines(imageList).Where(line => line.Length > 0).Select(path => new ImageInput { ImagePath = path }).ToList();

    using var engine = mlContext.Model.CreatePredictionEngine<ImageInput, MaskOutput>(model);
    var engineMasks = inputs.Select(input => engine.Predict(input).PredictedMask).ToList();
    var batchMasks = model.Transform(mlContext.Data.LoadFromEnumerable(inputs)).GetColumn<uint[]>("PredictedMask").ToList();

    File.WriteAllText(output, JsonSerializer.Serialize(new { engine = engineMasks, batch = batchMasks }));
    Console.WriteLine($"segmented {inputs.Count} images");
}

static void Fit(string setting, string[] images)
{
    var mlContext = new MLContext(seed: 0);
    var rows = images.Select((path, i) => new LabeledInput { ImagePath = path, Label = i < images.Length / 2 ? "a" : "b" });
    var data = mlContext.Data.LoadFromEnumerable(rows);
    var options = new RepAdapterImageClassificationTrainer.Options
    {
        Backbone = new VisionTransformer(new VisionTransformerConfig(ImageSize: 16, PatchSize: 4, EmbedDim: 32, Depth: 1, NumHeads: 2)),
        Epochs = 1,
        BatchSize = 2,
        WarmupEpochs = 0,
        TimeBudget = TimeSpan.Zero,
    };
    var (name, value) = (setting.Split('=')[0], setting.Split('=')[1]);
    var field = typeof(RepAdapterImageClassificationTrainer.Options).GetField(name) ?? throw new ArgumentException($"no option {name}");
    var type = Nullable.GetUnderlyingType(field.FieldType) ?? field.FieldType;
    field.SetValue(options, Convert.ChangeType(value, type, System.Globalization.CultureInfo.InvariantCulture));
    mlContext.Transforms.Conversion.MapValueToKey("Label")
        .Append(mlContext.Transforms.LoadImages("Image", "", nameof(LabeledInput.ImagePath)))
        .Append(mlContext.MulticlassClassification.Trainers.RepAdapter(options))
        .Fit(data);
    Console.WriteLine("OK fitted");
}

static void Resumable(string? stateFolder, string scoresPath, string[] images)
{
    var mlContext = new MLContext(seed: 0);
    var rows = images.Select((path, i) => new LabeledInput { ImagePath = path, Label = i < images.Length / 2 ? "a" : "b" });
    var data = mlContext.Transforms.Conversion.MapValueToKey("Label")
        .Append(mlContext.Transforms.LoadImages("Image", "", nameof(LabeledInput.ImagePath)))
        .Fit(mlContext.Data.LoadFromEnumerable(rows)).Transform(mlContext.Data.LoadFromEnumerable(rows));
    TorchSharp.torch.manual_seed(3);
    var options = new RepAdapterImageClassificationTrainer.Options
    {
        Backbone = new VisionTransformer(new VisionTransformerConfig(ImageSize: 16, PatchSize: 4, EmbedDim: 32, Depth: 2, NumHeads: 2)),
        Epochs = 8,
        BatchSize = 2,
        WarmupEpochs = 1,
        LearningRate = 3e-3,
        AdapterScale = 1f,
        AdaptedBlocks = Microsoft.ML.RepAdapter.MLNet.TrainingRecipe.AllBlocks,
        TrainingStateFolder = stateFolder,
        MetricsCallback = report => Console.WriteLine($"EPOCH {report.Epoch}"),
    };
    var model = mlContext.MulticlassClassification.Trainers.RepAdapter(options).Fit(data);
    File.WriteAllText(scoresPath, JsonSerializer.Serialize(model.Transform(data).GetColumn<float[]>("Score").ToList()));
    Console.WriteLine("OK fitted");
}

static void Stream(int count, ImageCache cache, int pixels)
{
    var mlContext = new MLContext(seed: 0);
    RepAdapterImageClassificationTrainer.Options Options()
    {
        TorchSharp.torch.manual_seed(3);
        return new()
        {
            ImageColumnName = nameof(GeneratedImage.ImageSource),
            Backbone = new VisionTransformer(new VisionTransformerConfig(ImageSize: pixels, PatchSize: pixels / 4, EmbedDim: 32, Depth: 1, NumHeads: 2)),
            Trainable = Microsoft.ML.RepAdapter.Adapters.TrainableParameters.All,
            Epochs = 2,
            BatchSize = 64,
            WarmupEpochs = 0,
            Cache = cache,
            DecodeThreads = 1,
            TimeBudget = TimeSpan.Zero,
        };
    }
    ITransformer Fit(int images, RepAdapterImageClassificationTrainer.Options options) => mlContext.Transforms.Conversion.MapValueToKey("Label")
        .Append(mlContext.MulticlassClassification.Trainers.RepAdapter(options))
        .Fit(mlContext.Data.LoadFromEnumerable(GeneratedImage.Rows(images, pixels)));

    // A first small fit loads what every fit needs once (libtorch's and oneDNN's code pages, thread pools, ML.NET's
    // components), so that the peak measured next is what this data set adds.
    Fit(256, Options());
    GC.Collect();
    GC.WaitForPendingFinalizers();
    long before = PeakResidentBytes(reset: true);
    var options = Options();
    var reports = new List<Microsoft.ML.RepAdapter.Training.EpochReport>();
    options.MetricsCallback = reports.Add;
    var clock = System.Diagnostics.Stopwatch.StartNew();
    Fit(count, options);
    double seconds = clock.Elapsed.TotalSeconds;
    long peak = PeakResidentBytes(reset: false);
    Console.WriteLine(JsonSerializer.Serialize(new
    {
        images = count,
        cache = cache.ToString(),
        decoded_mb = count * 3.0 * pixels * pixels / 1e6,
        before_mb = before / 1e6,
        peak_mb = peak / 1e6,
        fit_seconds = seconds,
        images_per_second = reports.Select(r => r.ImagesPerSecond).ToArray(),
        train_accuracy = reports[^1].TrainAccuracy,
    }));
}

// Peak resident memory (VmHWM); writing 5 to clear_refs restarts the peak from the current size (Linux).
static long PeakResidentBytes(bool reset)
{
    if (reset) File.WriteAllText("/proc/self/clear_refs", "5");
    string line = File.ReadLines("/proc/self/status").First(l => l.StartsWith("VmHWM:"));
    return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
}

internal sealed class ImageInput
{
    public string ImagePath { get; set; } = "";
}

internal sealed class LabeledInput
{
    public string ImagePath { get; set; } = "";
    public string Label { get; set; } = "";
}

internal sealed class MaskOutput
{
    public uint[] PredictedMask { get; set; } = [];
}

internal sealed class ScoreOutput
{
    public float[] Score { get; set; } = [];
}
