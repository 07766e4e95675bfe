using System.Diagnostics;
using Microsoft.ML;
using Microsoft.ML.RepAdapter;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Checkpoints;
using Microsoft.ML.RepAdapter.Segmentation;
using RepAdapter.SampleData;

namespace RepAdapter.Benchmarks;

/// <summary>
/// Semantic segmentation of the Fashion-MNIST mosaics (samples/data/SegmentationMosaics.cs) with ML.NET's ResNet-18 and
/// the multi-level head: RepAdapter (adapters, head and biases) against head-only, same head, same epochs, several seeds.
/// </summary>
internal static class SegmentationSuite
{
    public sealed record Settings(int[] Seeds, int Train, int Test, int Epochs, float Scale)
    {
        public static Settings Default => new([42, 1, 2], 240, 100, 8, 0.1f);
    }

    public sealed record Result(int Seed, string Method, double MeanIoU, double PixelAccuracy, long Trainable, double TrainSeconds, double[] Losses);

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
        var results = new List<Result>();
        foreach (int seed in settings.Seeds)
        {
            foreach (var (name, trainable) in new[] { ("RepAdapter", TrainableParameters.AdaptersHeadAndBiases), ("head only", TrainableParameters.HeadOnly) })
            {
                var ml = new MLContext(seed: seed);
                IDataView WithMasks(List<SegmentationMosaics.Mosaic> rows)
                {
                    var view = ml.Data.LoadFromEnumerable(rows.Select(r => new Row { ImagePath = r.ImagePath, MaskPath = r.MaskPath }));
                    return ml.Transforms.LoadImages("Mask", "", nameof(Row.MaskPath)).Append(ml.Transforms.LoadImages("Image", "", nameof(Row.ImagePath)))
                        .Fit(view).Transform(view);
                }
                var losses = new List<double>();
                var options = new RepAdapterSegmentationTrainer.Options
                {
                    Architecture = PretrainedBackbones.MLNetResNet18,
                    ClassNames = classNames,
                    Trainable = trainable,
                    AdapterScale = settings.Scale,
                    Head = SegmentationHeadKind.MultiLevel,
                    HeadChannels = 64,
                    Epochs = settings.Epochs,
                    BatchSize = 8,
                    LearningRate = 1e-2,
                    WarmupEpochs = 0,
                    Seed = seed,
                    MetricsCallback = r => losses.Add(r.Loss),
                };
                var clock = Stopwatch.StartNew();
                var model = ml.MulticlassClassification.Trainers.RepAdapterSegmentation(options).Fit(WithMasks(trainRows));
                double seconds = clock.Elapsed.TotalSeconds;
                var metrics = ml.MulticlassClassification.EvaluateSegmentation(model.Transform(WithMasks(testRows)));
                results.Add(new Result(seed, name, metrics.MeanIoU, metrics.PixelAccuracy, model.TrainableParameterCount, seconds, [.. losses]));
                Console.WriteLine($"  seed {seed} {name}: mIoU {metrics.MeanIoU:P1} in {seconds:F0} s");
                model.Dispose();
            }
        }
        report.Text($"{settings.Train} training and {settings.Test} test mosaics (112 px, 11 classes), ML.NET's ResNet-18, multi-level head "
            + $"(64 channels), {settings.Epochs} epochs, batch 8, lr 1e-2, s = {settings.Scale}; RepAdapter trains adapters, head and biases "
            + "(the paper's segmentation setting), head-only the same head alone. Mean IoU over every labelled test pixel.");
        report.Table("segmentation", ["seed", "method", "mean IoU", "pixel accuracy", "trainable", "training time s"],
            results.Select(r => new object[] { r.Seed, r.Method, $"{100 * r.MeanIoU:F1} %", $"{100 * r.PixelAccuracy:F1} %", r.Trainable, r.TrainSeconds }));
        var gains = settings.Seeds.Select(s => results.First(r => r.Seed == s && r.Method == "RepAdapter").MeanIoU - results.First(r => r.Seed == s && r.Method == "head only").MeanIoU).ToList();
        double Spread(string method) => results.Where(r => r.Method == method).Max(r => r.MeanIoU) - results.Where(r => r.Method == method).Min(r => r.MeanIoU);
        report.Text($"Gain of RepAdapter over head-only per seed: {string.Join(", ", gains.Select(g => $"{100 * g:+0.0;-0.0}"))} points (mean "
            + $"{100 * gains.Average():+0.0;-0.0}); run-to-run spread (max - min over seeds): RepAdapter {100 * Spread("RepAdapter"):F1}, head-only {100 * Spread("head only"):F1} points.");
        Plots.GroupedBars(report.Plot("miou", "mean IoU per seed"), "Mean IoU per seed", "mean IoU", [.. settings.Seeds.Select(s => $"seed {s}")],
            [.. new[] { "RepAdapter", "head only" }.Select(m => (m, settings.Seeds.Select(s => results.First(r => r.Seed == s && r.Method == m).MeanIoU).ToArray()))]);
        Plots.Curves(report.Plot("training-curves", "training loss per epoch"), "Training loss per epoch",
            [.. results.Select(r => ($"seed {r.Seed} {r.Method}", r.Losses))], "mean per-pixel loss");
        report.Data("results", results);
        return results;
    }
}
