using System.Diagnostics;
using System.Text.Json;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Classification;
using Microsoft.ML.RepAdapter.MLNet;
using RepAdapter.SampleData;

namespace RepAdapter.Benchmarks;

/// <summary>
/// Test accuracy, trainable parameters and Fit time on several tasks and seeds, side by side on the same images: the bare
/// call (<c>RepAdapter()</c>: the CPU recipe, its levers chosen on held-out training images), the same recipe without
/// the search, a head-only linear probe trained to convergence on cached features (its learning rate chosen on held-out
/// training images), and the pipeline ML.NET users run today (DnnFeaturizeImage ResNet-18 + LbfgsMaximumEntropy). Every
/// setting is chosen on training data only; the test images are used once, to report.
/// </summary>
internal static class AccuracySuite
{
    /// <summary>One method: a name, what it sets on top of the columns (null: nothing, the bare call), and on which seeds it runs (null: all).</summary>
    public sealed record Method(string Name, Action<RepAdapterImageClassificationTrainer.Options>? Configure, int[]? OnlySeeds = null);

    /// <summary>The recipe without search and its search's alternatives as fixed recipes: the best of them in hindsight (test accuracy) is the bar.</summary>
    private const string Fixed = "CPU recipe, no search";

    private static Method Hindsight(string name, Action<RepAdapterImageClassificationTrainer.Options> lever) =>
        new($"fixed, {name}", o => { o.TimeBudget = TimeSpan.Zero; lever(o); }, [1]);

    public static readonly Method[] AllMethods =
    [
        new("bare call", null),
        new(Fixed, o => o.TimeBudget = TimeSpan.Zero),
        // The same with the frozen prefix computed in bfloat16 (FrozenPrefixPrecision): what it costs or saves, and changes.
        new(Fixed + ", bf16 prefix", o =>
        {
            o.TimeBudget = TimeSpan.Zero;
            o.FrozenPrefixPrecision = ScoringPrecision.BFloat16;
        }),
        Hindsight("s = 1", o => o.AdapterScale = 1f),
        Hindsight("lr 1e-3", o => o.LearningRate = 1e-3),
        Hindsight("lr 1e-2", o => o.LearningRate = 1e-2),
        Hindsight("last 5 blocks", o => o.AdaptedBlocks = 5),
        // ML.NET's baseline trains its linear model to convergence (LBFGS); here the probe gets 100 epochs on cached
        // features, and its learning rate is the search's choice on held-out training images.
        new("head only", o =>
        {
            o.Trainable = TrainableParameters.HeadOnly;
            o.Epochs = 100;
            o.SearchSpace = new RecipeSearchSpace([], [1e-3, 1e-2, 3e-2], []);
        }),
        // The other methods as a user picks one: the bare call with Method set (the search still chooses the rest).
        .. AdapterMethods.All.Where(m => m.Id != AdaptationMethod.RepAdapter).Select(m => new Method(BareCallWith(m.Id), o => o.Method = m.Id)),
    ];

    /// <summary>The row name of the bare call with <paramref name="method"/> set.</summary>
    public static string BareCallWith(AdaptationMethod method) => $"bare call, {method}";

    /// <summary>The rows of the methods comparison: every method through the bare call, head only, and ML.NET's pipeline.</summary>
    public static string[] MethodRows => ["bare call", .. AdapterMethods.All.Where(m => m.Id != AdaptationMethod.RepAdapter).Select(m => BareCallWith(m.Id)), "head only"];

    /// <param name="Plotted">The rows the plot shows (null: ML.NET pipeline, head only, the fixed recipe and the bare call).</param>
    public sealed record Settings(string[] Tasks, int[] Seeds, string[] Methods, bool MLNetPipeline, string[]? Plotted = null)
    {
        public static Settings Default => new(
            ["fashion-mnist-1k", "fashion-mnist-1k-b", "fashion-mnist-16-shot", "fashion-mnist-shifted", "count-shapes", "shape-orientation"],
            [1, 2, 3], [.. AllMethods.Select(m => m.Name)], true);

        /// <summary>The CPU recipe (no search) with its frozen prefix in float32 and in bfloat16, on a real-image task and a structured one.</summary>
        public static Settings PrefixPrecision => Default with
        {
            Tasks = ["fashion-mnist-1k-b", "shape-orientation"],
            Methods = [Fixed, Fixed + ", bf16 prefix"],
            MLNetPipeline = false,
            Plotted = [Fixed, Fixed + ", bf16 prefix"],
        };

        /// <summary>Every method side by side through the bare call, on three of the tasks (a held-out 1k split, the few-shot split, a structured task).</summary>
        public static Settings MethodComparison => Default with
        {
            Tasks = ["fashion-mnist-1k-b", "fashion-mnist-16-shot", "shape-orientation"],
            Methods = MethodRows,
            Plotted = ["ML.NET pipeline", .. MethodRows],
        };
    }

    public sealed record Result(string Task, string Method, int Seed, double Accuracy, long Trainable, double TrainSeconds, string Recipe, string? Search,
        double[] Losses);

    public static List<Result> Run(Settings settings, Report report)
    {
        var results = new List<Result>();
        string work = Path.Combine(Path.GetTempPath(), "repadapter-bench-tasks");
        foreach (string name in settings.Tasks)
        {
            var task = name switch
            {
                "fashion-mnist-1k" => FashionMnist.Task1k(),
                "fashion-mnist-1k-b" => FashionMnist.Task1kB(),
                "fashion-mnist-16-shot" => FashionMnist.FewShot16(),
                "fashion-mnist-shifted" => FashionMnist.Shifted(),
                "count-shapes" => StructuredTasks.Counting(),
                "shape-orientation" => StructuredTasks.Orientation(),
                _ => throw new ArgumentException($"Unknown task {name}: {string.Join(", ", Settings.Default.Tasks)}."),
            };
            var (train, test) = task.WriteFiles(Path.Combine(work, task.Name));
            Console.WriteLine($"{task.Name}: {train.Count} training, {test.Count} test images, {task.Classes.Count} classes");
            // LBFGS from a zero start on the same features: the same model whatever the seed, so one run.
            if (settings.MLNetPipeline) results.Add(MLNetPipeline(task.Name, train, test));
            foreach (int seed in settings.Seeds)
                foreach (var method in AllMethods.Where(m => settings.Methods.Contains(m.Name) && (m.OnlySeeds?.Contains(seed) ?? true)))
                    results.Add(Fine(task.Name, train, test, method, seed));
        }

        report.Text("ML.NET's pretrained ResNet-18 for every method, on the same training and test images. **bare call**: "
            + "`mlContext.MulticlassClassification.Trainers.RepAdapter()` with nothing set: the CPU recipe (112 px, adapters in the last 3 "
            + "blocks with the frozen prefix cached, s = 10, lr 3e-3, 12 epochs, batch 16) and its search of s, the learning rate and the "
            + "adapted blocks on held-out training images, then a final fit on all of them. **CPU recipe, no search**: the same with "
            + "`TimeBudget = TimeSpan.Zero`. **head only**: a linear probe on cached features, 100 epochs, its learning rate chosen the "
            + "same way. **ML.NET pipeline**: LoadImages, ResizeImages(224), ExtractPixels, DnnFeaturizeImage(ResNet18), "
            + "LbfgsMaximumEntropy (deterministic, one run). **fixed, ...**: the search's alternatives as fixed recipes (seed 1 only), "
            + "so that the best fixed recipe in hindsight (by test accuracy, which only this comparison looks at) is a bar for the search. "
            + "**bare call, M**: the bare call with `Method = M` (LoRA and DoRA take the same rank 8 and scale lever as RepAdapter; SSF and RLRR have no scale, so theirs is 1 and not searched). No setting of any method was chosen on the test images. Fit time includes decoding (and for the ML.NET pipeline, "
            + "featurising) the training images. Fashion-MNIST-1k is the task the CPU recipe was tuned on (recipe-exploration.md, on its "
            + "test images): the other tasks are held out from that tuning.");
        var groups = results.GroupBy(r => (r.Task, r.Method)).Select(g => (g.Key.Task, g.Key.Method, Accuracies: g.Select(r => r.Accuracy).ToArray(),
            Seconds: g.Average(r => r.TrainSeconds), Trainable: g.First().Trainable)).ToList();
        double MLNetSeconds(string task) => groups.FirstOrDefault(g => g.Task == task && g.Method == "ML.NET pipeline").Seconds;
        report.Table("summary", ["task", "method", "runs", "test accuracy, mean", "min - max", "Fit time s, mean", "Fit time / ML.NET's"],
            groups.Select(g => new object[]
            {
                g.Task, g.Method, g.Accuracies.Length, $"{100 * g.Accuracies.Average():F1} %", $"{100 * g.Accuracies.Min():F1} - {100 * g.Accuracies.Max():F1}",
                $"{g.Seconds:F1}", MLNetSeconds(g.Task) > 0 ? $"{g.Seconds / MLNetSeconds(g.Task):F2}" : "",
            }));
        // The issue's targets, per task: bare call >= ML.NET + 3 points (where ML.NET < 95 %), within 0.5 points of the best fixed
        // recipe in hindsight (seed 1, the seed the fixed alternatives ran), Fit within 6x ML.NET's.
        // Only for the tasks that ran all three (the methods suite runs no fixed recipes, so it has no such table).
        var targets = settings.Tasks.Select(task =>
        {
            var bare = results.Where(r => r.Task == task && r.Method == "bare call").ToList();
            var mlnet = results.FirstOrDefault(r => r.Task == task && r.Method == "ML.NET pipeline");
            var fixedOnes = results.Where(r => r.Task == task && r.Seed == 1
                && (r.Method == Fixed || r.Method.StartsWith("fixed, ", StringComparison.Ordinal))).ToList();
            if (bare.Count == 0 || mlnet is null || fixedOnes.Count == 0) return null;
            var best = fixedOnes.MaxBy(r => r.Accuracy)!;
            var bareSeed1 = bare.FirstOrDefault(r => r.Seed == 1);
            return new object[]
            {
                task, $"{100 * bare.Average(r => r.Accuracy):F1} %", $"{100 * mlnet.Accuracy:F1} %", $"{100 * (bare.Average(r => r.Accuracy) - mlnet.Accuracy):+0.0;-0.0}",
                bareSeed1 is null ? "" : $"{100 * bareSeed1.Accuracy:F1} %", $"{100 * best.Accuracy:F1} % ({best.Method})",
                bareSeed1 is null ? "" : $"{100 * (best.Accuracy - bareSeed1.Accuracy):F1}", $"{bare.Average(r => r.TrainSeconds) / mlnet.TrainSeconds:F2}",
            };
        }).OfType<object[]>().ToList();
        if (targets.Count > 0)
            report.Table("targets", ["task", "bare call, mean", "ML.NET pipeline", "gain, points", "bare call, seed 1", "best fixed recipe (seed 1)",
                "behind it, points", "Fit time / ML.NET's"], targets);
        report.Table("runs", ["task", "method", "seed", "test accuracy", "Fit time s", "recipe trained", "search"],
            results.Select(r => new object[] { r.Task, r.Method, r.Seed, $"{100 * r.Accuracy:F1} %", $"{r.TrainSeconds:F1}", r.Recipe, r.Search ?? "" }));
        PlotByTask(report.Plot("accuracy-by-task", "mean test accuracy per task and method, min - max over seeds"), [.. settings.Tasks], results,
            settings.Plotted);
        report.Data("results", results);
        return results;
    }

    /// <summary>The methods every seed ran, side by side per task, with min - max over the seeds as black lines.</summary>
    private static void PlotByTask(string path, string[] tasks, IReadOnlyList<Result> results, string[]? shown = null)
    {
        shown ??= ["ML.NET pipeline", "head only", Fixed, "bare call"];
        int[] seeds = [.. results.Where(r => r.Method == "bare call").Select(r => r.Seed).Distinct().Order()];
        double[] Per(string method, Func<IEnumerable<double>, double> of) =>
            [.. tasks.Select(t => results.Where(r => r.Task == t && r.Method == method).Select(r => 100 * r.Accuracy).ToList() is { Count: > 0 } a ? of(a) : double.NaN)];
        Plots.GroupedBars(path, $"Test accuracy, mean of seeds {string.Join(", ", seeds)} (ML.NET pipeline: one run)", "test accuracy, %", tasks,
            [.. shown.Select(m => (m, Per(m, a => a.Average())))], [.. shown.Select(m => (Per(m, a => a.Min()), Per(m, a => a.Max())))]);
    }

    /// <summary>Draws the accuracy plot again from a run's <c>accuracy.json</c> (its measured results), without training.</summary>
    public static void Replot()
    {
        string json = Path.Combine(Report.OutputFolder, "accuracy.json");
        using var document = JsonDocument.Parse(File.ReadAllText(json));
        var results = document.RootElement.GetProperty("results").Deserialize<List<Result>>()
            ?? throw new InvalidDataException($"{json} has no measured results.");
        PlotByTask(Path.Combine(Report.OutputFolder, "accuracy-accuracy-by-task.png"), [.. results.Select(r => r.Task).Distinct()], results);
        Plots.RenderPending();
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
        return new Result(task, "ML.NET pipeline", 0, metrics.MicroAccuracy, 512L * classes + classes, seconds, "224 px, LBFGS", null, []);
    }

    /// <summary>One method on one task with one seed (the MLContext's, which the trainer takes).</summary>
    private static Result Fine(string task, List<(string Path, string Label)> trainRows, List<(string Path, string Label)> testRows, Method method, int seed)
    {
        var ml = new MLContext(seed: seed);
        var (train, test) = Load(ml, trainRows, testRows);
        var losses = new List<double>();
        var options = new RepAdapterImageClassificationTrainer.Options { MetricsCallback = r => { if (r.Run == "final") losses.Add(r.Loss); } };
        method.Configure?.Invoke(options);
        var pipeline = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoadImages("Image", "", nameof(ImagePath.Path)))
            .Append(ml.MulticlassClassification.Trainers.RepAdapter(options));
        var clock = Stopwatch.StartNew();
        var model = pipeline.Fit(train);
        double seconds = clock.Elapsed.TotalSeconds;
        var metrics = ml.MulticlassClassification.Evaluate(model.Transform(test));
        var summary = model.LastTransformer.Summary;
        string? search = summary.Search is { } s
            ? $"{s.Trials.Count} runs on {s.ValidationImages} held-out images x {s.Folds}: chose {s.ChosenCandidate}"
              + $" ({s.Reason})"
            : null;
        Console.WriteLine($"  {method.Name}, seed {seed}: {metrics.MicroAccuracy:P1} in {seconds:F0} s; {summary.Recipe}; {search}");
        return new Result(task, method.Name, seed, metrics.MicroAccuracy, model.LastTransformer.TrainableParameterCount, seconds, summary.Recipe?.ToString() ?? "",
            search, [.. losses]);
    }
}
