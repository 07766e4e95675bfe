using System.Diagnostics;
using System.Text.Json;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Checkpoints;
using Microsoft.ML.RepAdapter.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace RepAdapter.Benchmarks;

/// <summary>
/// One training step (forward, backward, AdamW) per method, side by side: full fine-tuning, every adaptation method
/// (RepAdapter, LoRA, DoRA, SSF, RLRR) in every block, head-only, and RepAdapter in the last blocks with the frozen prefix cached. Each (model, method) runs in its own process, so that
/// its peak memory is its own; the processes run twice, in opposite orders, and the medians of both are kept.
/// </summary>
internal static class TrainingStepSuite
{
    public sealed record Settings((string Model, int Batch)[] Models, string[] Methods, int Warmup, int Steps)
    {
        public static Settings Default => new([("vit_base_patch16_224", 8), ("mlnet_resnet18", 16)],
            ["full fine-tune", .. Enum.GetNames<AdaptationMethod>(), "head only", "RepAdapter last 3 blocks, cached prefix"], 2, 5);
    }

    public sealed record Measurement(string Model, int Batch, string Method, long Trainable, double StepMs, double PeakMb, double ModelMb);

    public static List<Measurement> Run(Settings settings, Report report)
    {
        var runs = new List<Measurement>();
        var notApplicable = new SortedSet<string>();
        foreach (var (model, batch) in settings.Models)
        {
            for (int round = 0; round < 2; round++)
            {
                var order = round == 0 ? settings.Methods : settings.Methods.Reverse().ToArray();
                foreach (string method in order)
                {
                    if (Child(model, batch, method, settings) is { } run) runs.Add(run);
                    else notApplicable.Add($"{method} on {model}");
                }
            }
        }
        var rows = runs.GroupBy(r => (r.Model, r.Batch, r.Method)).Select(g => g.First() with
        {
            StepMs = Stats.Median([.. g.Select(r => r.StepMs)]),
            PeakMb = Stats.Median([.. g.Select(r => r.PeakMb)]),
        }).ToList();
        report.Text("Median step time (forward, backward, AdamW step) and the peak resident memory the steps add to the process "
            + "once the model is built (activations kept for the backward pass, gradients, optimiser state, kernels' workspace); "
            + $"{settings.Warmup} warm-up steps, then {settings.Steps} timed, random images and labels, each (model, method) in its "
            + "own process, twice, in opposite orders. Ratios are to full fine-tuning of the same model. The cached-prefix row times "
            + "the trainable part only: its prefix is computed once per image, before training (not counted here).");
        foreach (string skipped in notApplicable) report.Text($"{skipped}: not applicable (the child's message is in the console log), so no row.");
        report.Table("steps", ["model", "batch", "method", "trainable", "step ms", "step / full", "peak MB", "peak / full"],
            rows.Select(r =>
            {
                var full = rows.First(f => f.Model == r.Model && f.Method == "full fine-tune");
                return new object[] { r.Model, r.Batch, r.Method, r.Trainable, r.StepMs, r.StepMs / full.StepMs, r.PeakMb, r.PeakMb / full.PeakMb };
            }));
        var models = rows.Select(r => $"{r.Model} b{r.Batch}").Distinct().ToList();
        Plots.GroupedBars(report.Plot("step-time", "training step time per method"), "Training step time relative to full fine-tuning", "step / full",
            models, [.. settings.Methods.Select(m => (m, models.Select(g => Ratio(rows, g, m, r => r.StepMs)).ToArray()))]);
        Plots.GroupedBars(report.Plot("step-memory", "peak memory per method"), "Peak training memory relative to full fine-tuning", "peak / full",
            models, [.. settings.Methods.Select(m => (m, models.Select(g => Ratio(rows, g, m, r => r.PeakMb)).ToArray()))]);
        report.Data("runs", runs);
        return rows;
    }

    private static double Ratio(List<Measurement> rows, string group, string method, Func<Measurement, double> value)
    {
        var row = rows.FirstOrDefault(r => $"{r.Model} b{r.Batch}" == group && r.Method == method);
        if (row is null) return double.NaN; // not applicable: no bar
        return value(row) / value(rows.First(r => $"{r.Model} b{r.Batch}" == group && r.Method == "full fine-tune"));
    }

    /// <summary>Exit code of a child whose method does not apply to the model.</summary>
    private const int NotApplicable = 3;

    /// <summary>The (model, method) measured in a child process; null when the method does not apply to the model.</summary>
    private static Measurement? Child(string model, int batch, string method, Settings settings)
    {
        string self = typeof(TrainingStepSuite).Assembly.Location;
        var start = new ProcessStartInfo("dotnet", [self, "training-step-one", model, batch.ToString(), method, settings.Warmup.ToString(), settings.Steps.ToString()])
        {
            RedirectStandardOutput = true,
        };
        using var process = Process.Start(start)!;
        string output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        if (process.ExitCode == NotApplicable)
        {
            Console.WriteLine($"  {model} b{batch} {method}: not applicable: {output.Trim()}");
            return null;
        }
        string? json = output.Split('\n').LastOrDefault(l => l.StartsWith('{'));
        if (process.ExitCode != 0 || json is null) throw new InvalidOperationException($"training-step-one {model} {method} failed:\n{output}");
        var measurement = JsonSerializer.Deserialize<Measurement>(json)!;
        Console.WriteLine($"  {model} b{batch} {method}: {measurement.StepMs:F0} ms/step, peak +{measurement.PeakMb:F0} MB");
        return measurement;
    }

    /// <summary>The child process: one (model, method), prints its measurement as JSON.</summary>
    public static int One(string model, int batch, string method, int warmup, int steps)
    {
        manual_seed(0);
        Backbone backbone = BenchmarkModels.Create(model, numClasses: 10);
        var (trainable, lastBlocks) = method switch
        {
            "full fine-tune" => (TrainableParameters.All, (int?)null),
            "head only" => (TrainableParameters.HeadOnly, null),
            "RepAdapter last 3 blocks, cached prefix" => (TrainableParameters.AdaptersAndHead, 3),
            _ => (TrainableParameters.AdaptersAndHead, null),
        };
        try
        {
            if (trainable == TrainableParameters.AdaptersAndHead)
                backbone.AttachAdapters(new AdapterConfig(Enum.TryParse<AdaptationMethod>(method, out var m) ? m : AdaptationMethod.RepAdapter, LastBlocks: lastBlocks));
        }
        catch (NotSupportedException e)
        {
            Console.WriteLine(e.Message);
            return NotApplicable;
        }
        backbone.SetTrainable(trainable);
        backbone.train();
        int size = backbone.Input.ImageSize;
        var images = randn(batch, 3, size, size);
        var labels = randint(0, 10, batch, dtype: ScalarType.Int64);
        nn.Module<Tensor, Tensor> network = backbone;
        int cut = lastBlocks is null ? 0 : FrozenPrefix.Steps(backbone);
        if (cut > 0)
        {
            // The prefix's output stands for what the cache holds; its computation is not a training step.
            using (no_grad()) images = backbone.ForwardPrefix(images, cut);
            network = new SuffixNetwork(backbone, cut);
        }
        var parameters = backbone.parameters().Where(p => p.requires_grad).ToList();
        using var optimizer = optim.AdamW(parameters, lr: 1e-4, weight_decay: 1e-4);
        GC.Collect();
        double modelMb = Stats.PeakResidentMb(reset: true);
        var times = new List<double>();
        for (int i = 0; i < warmup + steps; i++)
        {
            using var scope = NewDisposeScope();
            var clock = Stopwatch.StartNew();
            optimizer.zero_grad();
            var loss = nn.functional.cross_entropy(network.forward(images), labels);
            loss.backward();
            optimizer.step();
            if (i >= warmup) times.Add(clock.Elapsed.TotalMilliseconds);
        }
        double peak = Stats.PeakResidentMb() - modelMb;
        Console.WriteLine(JsonSerializer.Serialize(new Measurement(model, batch, method, parameters.Sum(p => p.numel()), Stats.Median(times), peak, modelMb)));
        return 0;
    }
}
