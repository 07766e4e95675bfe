using System.Diagnostics;
using System.Text.Json;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Checkpoints;
using Microsoft.ML.RepAdapter.Classification;
using Microsoft.ML.RepAdapter.MLNet;
using RepAdapter.SampleData;
using static TorchSharp.torch;

namespace RepAdapter.Benchmarks;

/// <summary>
/// What a task costs to ship and to load, per backbone: bytes on disk of the adapters-only task model, the merged model
/// and a full fine-tune; load time of each (a task model reads and fingerprints its backbone unless another task model
/// on it is alive, then it shares its weights); scoring latency of the reloaded task model against the merged one; and
/// the memory of 10 task models against 10 merged models, each set loaded in a process of its own.
/// </summary>
internal static class DeploymentSuite
{
    public sealed record Settings(string[] Models, int Loads, int Rounds, int Copies)
    {
        public static Settings Default => new(["resnet18", "vit_base_patch16_224"], 5, 12, 10);
    }

    public sealed record Row(string Model, long TaskModelBytes, long MergedBytes, long FullFineTuneBytes, double MergedLoadMs, double TaskLoadMs,
        double SharedTaskLoadMs, double MergedScoreMs, double TaskScoreMs, double ScoreRatio, double ScoreLow, double ScoreHigh, double MaxScoreDifference,
        double MergedMemoryMb, double TaskMemoryMb, int Copies);

    public sealed record Memory(double BaselineMb, double PeakMb);

    public static List<Row> Run(Settings settings, Report report)
    {
        string work = Directory.CreateTempSubdirectory("repadapter-deployment-").FullName;
        var rows = new List<Row>();
        try
        {
            var task = StructuredTasks.Orientation(train: 80, test: 16);
            var (trainRows, testRows) = task.WriteFiles(Path.Combine(work, "images"));
            foreach (string model in settings.Models)
            {
                string? checkpoint = model == "resnet18" ? null : RandomCheckpoint(model, work);
                string merged = Path.Combine(work, $"{model}.zip"), taskModel = Path.Combine(work, $"{model}.task.zip"), full = Path.Combine(work, $"{model}.full.zip");
                Train(model, checkpoint, trainRows, TrainableParameters.AdaptersAndHead, merged, taskModel);
                Train(model, checkpoint, trainRows, TrainableParameters.All, full, null);

                var ml = new MLContext(seed: 1);
                double Load(string path) => Timed(() => Dispose(ml.Model.Load(path, out _)));
                double mergedLoad = Stats.Median([.. Enumerable.Range(0, settings.Loads).Select(_ => Load(merged))]);
                double taskLoad = Stats.Median([.. Enumerable.Range(0, settings.Loads).Select(_ => Load(taskModel))]);
                var held = ml.Model.Load(taskModel, out _);
                double sharedLoad = Stats.Median([.. Enumerable.Range(0, settings.Loads).Select(_ => Load(taskModel))]);
                Dispose(held);

                var (mergedMs, taskMs, ratio, low, high, difference) = Latency(ml, merged, taskModel, testRows, settings.Rounds);
                var mergedMemory = Child(merged, testRows[0].Path, settings.Copies);
                var taskMemory = Child(taskModel, testRows[0].Path, settings.Copies);
                var row = new Row(model, new FileInfo(taskModel).Length, new FileInfo(merged).Length, new FileInfo(full).Length, mergedLoad, taskLoad, sharedLoad,
                    mergedMs, taskMs, ratio, low, high, difference, mergedMemory.PeakMb - mergedMemory.BaselineMb, taskMemory.PeakMb - taskMemory.BaselineMb, settings.Copies);
                rows.Add(row);
                Console.WriteLine($"{model}: task model {row.TaskModelBytes / 1024.0:F0} KB, merged {row.MergedBytes / 1048576.0:F1} MB, full {row.FullFineTuneBytes / 1048576.0:F1} MB; "
                    + $"load {mergedLoad:F0} / {taskLoad:F0} / {sharedLoad:F0} ms; score {mergedMs:F1} / {taskMs:F1} ms ({ratio:F3} [{low:F3}, {high:F3}]), max |diff| {difference:G3}; "
                    + $"{settings.Copies} merged +{row.MergedMemoryMb:F0} MB, {settings.Copies} task models +{row.TaskMemoryMb:F0} MB");
            }
        }
        finally
        {
            Directory.Delete(work, recursive: true);
        }
        report.Text("One task per backbone (the shape-orientation images, 80 for training, 2 epochs: what is measured does not depend on how well "
            + "it learned): RepAdapter in the last 3 blocks, CPU recipe otherwise, no search. ResNet-18 is ML.NET's built-in; ViT-B/16 is a "
            + "checkpoint file of random weights (timm's names, 224 px) that the task model names as its source. **task model**: "
            + "`Storage = ModelStorage.AdaptersOnly` (adapters before merging, head, configuration, the backbone's source and fingerprint); "
            + "**merged**: the default save; **full fine-tune**: `Trainable = TrainableParameters.All`, saved. Load: median of "
            + "`mlContext.Model.Load` over repeated loads; a task model reads, fingerprints and merges its backbone (`task model`), or, while "
            + "another task model on the same backbone is alive, takes its weights from it (`task model, backbone shared`). Scoring: "
            + "`Score` on 16 test images, the reloaded task model and the merged model alternating per round, median of per-round ratios "
            + "with a 95 % bootstrap interval; `max |diff|` their largest probability difference. Memory: peak resident memory above the "
            + "process's before loading, with each model scoring one image, for that many copies loaded in one process (a process per row).");
        report.Table("deployment", ["model", "task model KB", "merged MB", "full fine-tune MB", "load merged ms", "load task model ms",
                "load task model, backbone shared ms", "score merged ms", "score task model ms", "task/merged [95 % CI]", "max |diff|",
                $"{settings.Copies} merged MB", $"{settings.Copies} task models MB"],
            rows.Select(r => new object[] { BenchmarkModels.DisplayName(r.Model), $"{r.TaskModelBytes / 1024.0:F0}", $"{r.MergedBytes / 1048576.0:F1}",
                $"{r.FullFineTuneBytes / 1048576.0:F1}", r.MergedLoadMs, r.TaskLoadMs, r.SharedTaskLoadMs, r.MergedScoreMs, r.TaskScoreMs,
                $"{r.ScoreRatio:F3} [{r.ScoreLow:F3}, {r.ScoreHigh:F3}]", r.MaxScoreDifference, $"{r.MergedMemoryMb:F0}", $"{r.TaskMemoryMb:F0}" }));
        report.Data("rows", rows);
        return rows;
    }

    /// <summary>A checkpoint file of the preset with random weights, as a user's downloaded file would be.</summary>
    private static string RandomCheckpoint(string model, string work)
    {
        manual_seed(0);
        using var backbone = BenchmarkModels.Create(model);
        string path = Path.Combine(work, $"{model}.safetensors");
        CheckpointExport.SaveMergedSafeTensors(backbone, path);
        return path;
    }

    private static void Train(string model, string? checkpoint, List<(string Path, string Label)> rows, TrainableParameters trainable, string mergedPath, string? taskModelPath)
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(rows.Select(r => new AccuracySuite.ImagePath { Path = r.Path, Label = r.Label }));
        var options = new RepAdapterImageClassificationTrainer.Options
        {
            Architecture = checkpoint is null ? null : model,
            CheckpointPath = checkpoint,
            Trainable = trainable,
            Epochs = 2,
            TimeBudget = TimeSpan.Zero,
        };
        var fitted = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoadImages("Image", "", nameof(AccuracySuite.ImagePath.Path)))
            .Append(ml.MulticlassClassification.Trainers.RepAdapter(options))
            .Fit(data);
        ml.Model.Save(fitted, data.Schema, mergedPath);
        if (taskModelPath is not null)
        {
            fitted.LastTransformer.Storage = ModelStorage.AdaptersOnly;
            ml.Model.Save(fitted, data.Schema, taskModelPath);
        }
        fitted.LastTransformer.Dispose();
    }

    private static (double MergedMs, double TaskMs, double Ratio, double Low, double High, double MaxDifference) Latency(MLContext ml, string merged, string taskModel,
        List<(string Path, string Label)> testRows, int rounds)
    {
        var models = new[] { merged, taskModel }.Select(path => Classifier(ml.Model.Load(path, out _))).ToArray();
        var images = testRows.Select(r => MLImage.CreateFromFile(r.Path)).ToList();
        try
        {
            var times = new[] { new List<double>(), new List<double>() };
            var scores = new float[2][][];
            for (int i = 0; i < rounds + 2; i++)
            {
                for (int j = 0; j < 2; j++)
                {
                    int k = (i + j) % 2;
                    var clock = Stopwatch.StartNew();
                    scores[k] = models[k].Score(images);
                    if (i >= 2) times[k].Add(clock.Elapsed.TotalMilliseconds);
                }
            }
            var ratios = times[1].Zip(times[0], (t, m) => t / m).ToList();
            var (low, high) = Stats.MedianInterval(ratios);
            double difference = scores[0].Zip(scores[1]).SelectMany(p => p.First.Zip(p.Second, (a, b) => (double)Math.Abs(a - b))).Max();
            return (Stats.Median(times[0]), Stats.Median(times[1]), Stats.Median(ratios), low, high, difference);
        }
        finally
        {
            images.ForEach(i => i.Dispose());
            foreach (var model in models) model.Dispose();
        }
    }

    private static RepAdapterImageClassificationTransformer Classifier(ITransformer model) =>
        ((IEnumerable<ITransformer>)model).OfType<RepAdapterImageClassificationTransformer>().Single();

    private static void Dispose(ITransformer model) => Classifier(model).Dispose();

    private static double Timed(Action work)
    {
        var clock = Stopwatch.StartNew();
        work();
        return clock.Elapsed.TotalMilliseconds;
    }

    /// <summary>
    /// The child process: <paramref name="copies"/> copies of the model at <paramref name="path"/> loaded and each scoring
    /// <paramref name="image"/>; prints the resident memory before and the peak after as JSON.
    /// </summary>
    public static int One(string path, string image, int copies)
    {
        var ml = new MLContext(seed: 1);
        using (var warm = zeros(1)) { }
        GC.Collect();
        double baseline = Stats.PeakResidentMb(reset: true);
        var data = ml.Data.LoadFromEnumerable(new[] { new AccuracySuite.ImagePath { Path = image, Label = "" } });
        var loaded = new List<ITransformer>();
        for (int i = 0; i < copies; i++)
        {
            var model = ml.Model.Load(path, out _);
            _ = model.Transform(data).GetColumn<float[]>("Score").Single();
            loaded.Add(model);
        }
        GC.Collect();
        Console.WriteLine(JsonSerializer.Serialize(new Memory(baseline, Stats.PeakResidentMb())));
        GC.KeepAlive(loaded);
        return 0;
    }

    private static Memory Child(string path, string image, int copies)
    {
        string self = typeof(DeploymentSuite).Assembly.Location;
        var start = new ProcessStartInfo("dotnet", [self, "deployment-memory-one", path, image, copies.ToString()]) { RedirectStandardOutput = true };
        using var process = Process.Start(start)!;
        string output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        string? json = output.Split('\n').LastOrDefault(l => l.StartsWith('{'));
        if (process.ExitCode != 0 || json is null) throw new InvalidOperationException($"deployment-memory-one {path} failed:\n{output}");
        return JsonSerializer.Deserialize<Memory>(json)!;
    }
}
