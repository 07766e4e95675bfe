using System.Diagnostics;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Classification;
using Microsoft.ML.RepAdapter.Training;
using RepAdapter.SampleData;

namespace RepAdapter.Benchmarks;

/// <summary>
/// Test accuracy, trainable parameters and training time of each method on each task, side by side on the same images:
/// RepAdapter, LoRA, head-only (linear probe), full fine-tuning (all on ML.NET's pretrained ResNet-18 with the same
/// recipe), and the pipeline ML.NET users run today (DnnFeaturizeImage ResNet-18 features + LbfgsMaximumEntropy).
/// </summary>
internal static class AccuracySuite
{
    /// <summary>One method's recipe: what trains and how (the rest of the options at their defaults).</summary>
    public sealed record Method(string Name, TrainableParameters Trainable, AdaptationMethod Adaptation, double LearningRate, int Epochs, float Scale = 1f,
        int? AdaptedBlocks = null);

    public sealed record Settings(string[] Tasks, int ImageSize, int BatchSize, Method[] Methods, bool MLNetPipeline)
    {
        // The recipe measured on Fashion-MNIST-1k (README, "Choosing the recipe"): adapters in the last 3 blocks with the frozen
        // prefix cached, s = 10, lr 3e-3, 12 epochs at 112 px; LoRA gets the same; head-only its own learning rate; full
        // fine-tuning the usual small one, and fewer epochs (each costs every block's backward pass).
        public static Settings Default => new(["fashion-mnist-1k", "count-shapes", "shape-orientation"], 112, 16,
        [
            new("RepAdapter", TrainableParameters.AdaptersAndHead, AdaptationMethod.RepAdapter, 3e-3, 12, Scale: 10f, AdaptedBlocks: 3),
            new("LoRA", TrainableParameters.AdaptersAndHead, AdaptationMethod.LoRA, 3e-3, 12, Scale: 10f, AdaptedBlocks: 3),
            new("head only", TrainableParameters.HeadOnly, AdaptationMethod.RepAdapter, 1e-2, 12),
            new("full fine-tune", TrainableParameters.All, AdaptationMethod.RepAdapter, 1e-4, 8),
        ], true);
    }

    public sealed record Result(string Task, string Method, double Accuracy, long Trainable, double TrainSeconds, double[] Losses);

    public static List<Result> Run(Settings settings, Report report)
    {
        var results = new List<Result>();
        var notApplicable = new SortedSet<string>();
        string work = Path.Combine(Path.GetTempPath(), "repadapter-bench-tasks");
        foreach (string name in settings.Tasks)
        {
            var task = name switch
            {
                "fashion-mnist-1k" => FashionMnist.Task1k(),
                "count-shapes" => StructuredTasks.Counting(),
                "shape-orientation" => StructuredTasks.Orientation(),
                _ => throw new ArgumentException($"Unknown task {name}: fashion-mnist-1k, count-shapes, shape-orientation."),
            };
            var (train, test) = task.WriteFiles(Path.Combine(work, task.Name));
            Console.WriteLine($"{task.Name}: {train.Count} training, {test.Count} test images, {task.Classes.Count} classes");
            if (settings.MLNetPipeline) results.Add(MLNetPipeline(task.Name, train, test));
            foreach (var method in settings.Methods)
            {
                if (Fine(task.Name, train, test, method, settings) is { } result) results.Add(result);
                else notApplicable.Add(method.Name);
            }
        }

        report.Text($"ML.NET's pretrained ResNet-18 for every method; RepAdapter, LoRA, head-only and full fine-tuning share the recipe "
            + $"({settings.ImageSize} px, batch {settings.BatchSize}, AdamW, cosine schedule without warm-up; epochs and learning rate per method "
            + "below), and train on the same images as the ML.NET pipeline (224 px, DnnFeaturizeImage + LbfgsMaximumEntropy). Training "
            + "time is the time of `Fit` (for the ML.NET pipeline, featurising the training images included).");
        foreach (string method in notApplicable)
            report.Text($"{method}: not applicable to ML.NET's ResNet-18 (the library's LoRA is defined for linear layers; ResNet's adapter sites are convolutions), so no row.");
        report.Table("methods", ["method", "trainable", "adaptation", "adapted blocks", "learning rate", "epochs", "scale s"],
            settings.Methods.Select(m => new object[] { m.Name, m.Trainable, m.Adaptation, m.AdaptedBlocks?.ToString() ?? "all", m.LearningRate, m.Epochs, m.Scale }));
        report.Table("accuracy", ["task", "method", "test accuracy", "trainable parameters", "training time s"],
            results.Select(r => new object[] { r.Task, r.Method, $"{100 * r.Accuracy:F1} %", r.Trainable, r.TrainSeconds }));
        Plots.AccuracyVsParameters(report.Plot("accuracy-vs-parameters", "test accuracy against trainable parameters"),
            [.. results.Select(r => (r.Task, r.Method, r.Trainable, r.Accuracy))]);
        Plots.Curves(report.Plot("training-curves", "training loss per epoch"), "Training loss per epoch",
            [.. results.Where(r => r.Losses.Length > 0).Select(r => ($"{r.Task} {r.Method}", r.Losses))], "mean training loss");
        report.Data("results", results);
        return results;
    }

    public sealed class ImagePath
    {
        public string Path { get; set; } = "";
        public string Label { get; set; } = "";
    }

    private static (IDataView Train, IDataView Test) Load(MLContext ml, List<(string Path, string Label)> train, List<(string Path, string Label)> test) =>
        (ml.Data.LoadFromEnumerable(train.Select(r => new ImagePath { Path = r.Path, Label = r.Label })),
         ml.Data.LoadFromEnumerable(test.Select(r => new ImagePath { Path = r.Path, Label = r.Label })));

    /// <summary>What ML.NET users run today: LoadImages, ResizeImages(224), ExtractPixels, DnnFeaturizeImage(ResNet18), LbfgsMaximumEntropy.</summary>
    private static Result MLNetPipeline(string task, List<(string Path, string Label)> trainRows, List<(string Path, string Label)> testRows)
    {
        var ml = new MLContext(seed: 42);
        var (train, test) = Load(ml, trainRows, testRows);
        var pipeline = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoadImages("Image", "", nameof(ImagePath.Path)))
            .Append(ml.Transforms.ResizeImages("Image", 224, 224))
            .Append(ml.Transforms.ExtractPixels("Pixels", "Image"))
            .Append(ml.Transforms.DnnFeaturizeImage("Features", m => m.ModelSelector.ResNet18(ml, m.OutputColumn, m.InputColumn), "Pixels"))
            .Append(ml.MulticlassClassification.Trainers.LbfgsMaximumEntropy("Label", "Features"));
        var clock = Stopwatch.StartNew();
        var model = pipeline.Fit(train);
        double seconds = clock.Elapsed.TotalSeconds;
        var metrics = ml.MulticlassClassification.Evaluate(model.Transform(test));
        int classes = metrics.ConfusionMatrix.NumberOfClasses;
        Console.WriteLine($"  ML.NET pipeline: {metrics.MicroAccuracy:P1} in {seconds:F0} s");
        return new Result(task, "ML.NET pipeline", metrics.MicroAccuracy, 512L * classes + classes, seconds, []);
    }

    /// <summary>The method's result, or null when it does not apply to the backbone (LoRA on convolutions).</summary>
    private static Result? Fine(string task, List<(string Path, string Label)> trainRows, List<(string Path, string Label)> testRows, Method method, Settings settings)
    {
        var ml = new MLContext(seed: 42);
        var (train, test) = Load(ml, trainRows, testRows);
        var losses = new List<double>();
        var options = new RepAdapterImageClassificationTrainer.Options
        {
            ImageSize = settings.ImageSize,
            Trainable = method.Trainable,
            Method = method.Adaptation,
            AdapterScale = method.Scale,
            AdaptedBlocks = method.AdaptedBlocks,
            Epochs = method.Epochs,
            BatchSize = settings.BatchSize,
            LearningRate = method.LearningRate,
            WarmupEpochs = 0,
            MetricsCallback = r => losses.Add(r.Loss),
        };
        var pipeline = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoadImages("Image", "", nameof(ImagePath.Path)))
            .Append(ml.MulticlassClassification.Trainers.RepAdapter(options));
        var clock = Stopwatch.StartNew();
        TransformerChain<RepAdapterImageClassificationTransformer> model;
        try
        {
            model = pipeline.Fit(train);
        }
        catch (NotSupportedException e)
        {
            Console.WriteLine($"  {method.Name}: not applicable: {e.Message}");
            return null;
        }
        double seconds = clock.Elapsed.TotalSeconds;
        var metrics = ml.MulticlassClassification.Evaluate(model.Transform(test));
        long trainable = model.LastTransformer.TrainableParameterCount;
        Console.WriteLine($"  {method.Name}: {metrics.MicroAccuracy:P1} in {seconds:F0} s, {trainable:N0} trainable");
        return new Result(task, method.Name, metrics.MicroAccuracy, trainable, seconds, [.. losses]);
    }
}
