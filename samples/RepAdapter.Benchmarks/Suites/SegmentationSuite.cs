using System.Diagnostics;
using Microsoft.ML;
using Microsoft.ML.RepAdapter;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.MLNet;
using Microsoft.ML.RepAdapter.Segmentation;
using RepAdapter.SampleData;

namespace RepAdapter.Benchmarks;

/// <summary>
/// Semantic segmentation of the Fashion-MNIST mosaics (samples/data/SegmentationMosaics.cs) with the built-in ML.NET
/// ResNet-18: the bare call (the CPU recipe, its scale and learning rate chosen on held-out training mosaics), a head-only
/// baseline (same head and epochs, its learning rate chosen the same way), several seeds; and the search's candidates as
/// fixed recipes on the first seed, the best of which is the bar the bare call is held to in hindsight.
/// </summary>
internal static class SegmentationSuite
{
    public sealed record Method(string Name, Action<RepAdapterSegmentationTrainer.Options>? Configure, bool Hindsight = false);

    private const string Bare = "bare call";

    private const string HeadOnly = "head only";

    // The CPU preset's search candidates (RepAdapterSegmentationTrainer.Options.Preset), each trained as a fixed recipe.
    public static readonly Method[] AllMethods =
    [
        new(Bare, null),
        new(HeadOnly, o =>
        {
            o.Trainable = TrainableParameters.HeadOnly;
            o.SearchSpace = new RecipeSearchSpace([], [3e-3, 3e-2], []);
        }),
        new("fixed: CPU recipe", o => o.TimeBudget = TimeSpan.Zero, Hindsight: true),
        new("fixed: s = 10", o => { o.TimeBudget = TimeSpan.Zero; o.AdapterScale = 10f; }, Hindsight: true),
        new("fixed: lr 3e-3", o => { o.TimeBudget = TimeSpan.Zero; o.LearningRate = 3e-3; }, Hindsight: true),
    ];

    public sealed record Settings(int[] Seeds, int Train, int Test, string[] Methods)
    {
        public static Settings Default => new([1, 2, 3], 240, 100, [.. AllMethods.Select(m => m.Name)]);
    }

    public sealed record Result(int Seed, string Method, double MeanIoU, double PixelAccuracy, long Trainable, double TrainSeconds, string Recipe,
        string? Search, double[] Losses);

    public sealed class Row
    {
        public string ImagePath { get; set; } = "";
        public string MaskPath { get; set; } = "";
    }

    public static List<Result> Run(Settings settings, Report report)
    {
        string data = Path.Combine(Report.RepoRoot(), "samples", "data");
        string items = Path.Combine(data, "fashion-mnist");
        string mosaics = Path.Combine(data, "segmentation-mosaics");
        string[] classNames = SegmentationMosaics.ClassNames(Path.Combine(items, "train"));
        var trainRows = SegmentationMosaics.Write(Path.Combine(items, "train"), Path.Combine(mosaics, $"train-{settings.Train}"), settings.Train, seed: 1);
        var testRows = SegmentationMosaics.Write(Path.Combine(items, "test"), Path.Combine(mosaics, $"test-{settings.Test}"), settings.Test, seed: 2);
        var methods = AllMethods.Where(m => settings.Methods.Contains(m.Name)).ToList();
        var results = new List<Result>();
        foreach (int seed in settings.Seeds)
            foreach (var method in methods.Where(m => !m.Hindsight || seed == settings.Seeds[0]))
                results.Add(Fit(method, seed, classNames, trainRows, testRows));

        report.Text($"{settings.Train} training and {settings.Test} test mosaics (112 px, 11 classes: background and the ten Fashion-MNIST items), "
            + "the built-in ML.NET ResNet-18. The bare call is `RepAdapterSegmentation(classNames: ...)` with nothing else set: the CPU recipe "
            + "(112 px, adapters in every block, s = 1, lr 1e-2, 24 epochs, batch 8, multi-level head of 128 channels; adapters, head and biases "
            + "trained), its scale and learning rate chosen by the recipe search on 20 % of the training mosaics, then a final fit on all of them. "
            + "Head-only trains the same head alone for the same epochs, its learning rate (3e-3, 1e-2, 3e-2) chosen the same way. The fixed rows "
            + $"are the search's candidates trained without a search on seed {settings.Seeds[0]}: the best of them is the hindsight bar. "
            + "The test mosaics are used for the figures below only. Mean IoU over every labelled test pixel.");
        report.Table("segmentation", ["seed", "method", "mean IoU", "pixel accuracy", "trainable", "training time s", "recipe trained", "search"],
            results.Select(r => new object[] { r.Seed, r.Method, $"{100 * r.MeanIoU:F1} %", $"{100 * r.PixelAccuracy:F1} %", r.Trainable, $"{r.TrainSeconds:F0}", r.Recipe, r.Search ?? "" }));

        var perSeed = methods.Where(m => !m.Hindsight).Select(m => m.Name).ToList();
        string Stats(string method)
        {
            var values = results.Where(r => r.Method == method).Select(r => 100 * r.MeanIoU).ToList();
            return $"{values.Average():F1} % (min {values.Min():F1}, max {values.Max():F1}, {values.Count} seeds)";
        }
        report.Table("summary", ["method", "mean IoU, mean over seeds (min, max)", "training time s, mean"],
            perSeed.Select(m => new object[] { m, Stats(m), $"{results.Where(r => r.Method == m).Average(r => r.TrainSeconds):F0}" }));
        if (perSeed.Contains(Bare) && perSeed.Contains(HeadOnly))
        {
            var gains = settings.Seeds.Select(s => 100 * (Of(results, s, Bare).MeanIoU - Of(results, s, HeadOnly).MeanIoU)).ToList();
            report.Text($"Bare call minus head-only, per seed: {string.Join(", ", gains.Select(g => $"{g:+0.0;-0.0}"))} points (mean {gains.Average():+0.0;-0.0}).");
        }
        var hindsight = results.Where(r => r.Seed == settings.Seeds[0] && methods.First(m => m.Name == r.Method).Hindsight).ToList();
        if (hindsight.Count > 0 && perSeed.Contains(Bare))
        {
            var best = hindsight.MaxBy(r => r.MeanIoU)!;
            report.Text($"Seed {settings.Seeds[0]}: the bare call {100 * Of(results, settings.Seeds[0], Bare).MeanIoU:F1} %, the best fixed candidate in hindsight "
                + $"({best.Method}) {100 * best.MeanIoU:F1} %: {100 * (Of(results, settings.Seeds[0], Bare).MeanIoU - best.MeanIoU):+0.0;-0.0} points.");
        }

        Plots.GroupedBars(report.Plot("miou", "mean IoU per seed"), "Mean IoU on the test mosaics, per seed", "mean IoU",
            [.. settings.Seeds.Select(s => $"seed {s}")],
            [.. perSeed.Select(m => (m, settings.Seeds.Select(s => Of(results, s, m).MeanIoU).ToArray()))]);
        Plots.Curves(report.Plot("training-curves", "training loss per epoch of each final run"), "Training loss per epoch (final run)",
            [.. results.Select(r => ($"seed {r.Seed} {r.Method}", r.Losses))], "mean per-pixel loss");
        report.Data("results", results);
        return results;
    }

    private static Result Of(List<Result> results, int seed, string method) => results.First(r => r.Seed == seed && r.Method == method);

    /// <summary>One method with one seed (the MLContext's, which the trainer takes).</summary>
    private static Result Fit(Method method, int seed, string[] classNames, List<SegmentationMosaics.Mosaic> trainRows, List<SegmentationMosaics.Mosaic> testRows)
    {
        var ml = new MLContext(seed: seed);
        IDataView WithMasks(List<SegmentationMosaics.Mosaic> rows)
        {
            var view = ml.Data.LoadFromEnumerable(rows.Select(r => new Row { ImagePath = r.ImagePath, MaskPath = r.MaskPath }));
            return ml.Transforms.LoadImages("Mask", "", nameof(Row.MaskPath)).Append(ml.Transforms.LoadImages("Image", "", nameof(Row.ImagePath)))
                .Fit(view).Transform(view);
        }
        var losses = new List<double>();
        var options = new RepAdapterSegmentationTrainer.Options { ClassNames = classNames, MetricsCallback = r => { if (r.Run == "final") losses.Add(r.Loss); } };
        method.Configure?.Invoke(options);
        var clock = Stopwatch.StartNew();
        var model = ml.MulticlassClassification.Trainers.RepAdapterSegmentation(options).Fit(WithMasks(trainRows));
        double seconds = clock.Elapsed.TotalSeconds;
        var metrics = ml.MulticlassClassification.EvaluateSegmentation(model.Transform(WithMasks(testRows)));
        var summary = model.Summary;
        string? search = summary.Search is { } s
            ? $"{s.Trials.Count} runs on {s.ValidationImages} held-out mosaics x {s.Folds}: chose {s.ChosenCandidate} ({s.Reason})"
            : null;
        Console.WriteLine($"  seed {seed} {method.Name}: mIoU {metrics.MeanIoU:P1} in {seconds:F0} s; {summary.Recipe}; {search}");
        var result = new Result(seed, method.Name, metrics.MeanIoU, metrics.PixelAccuracy, model.TrainableParameterCount, seconds, summary.Recipe?.ToString() ?? "",
            search, [.. losses]);
        model.Dispose();
        return result;
    }
}
