using System.Diagnostics;
using System.Runtime.InteropServices;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using TorchSharp;
using static TorchSharp.torch;

namespace RepAdapter.Benchmarks;

/// <summary>
/// Inference latency of the plain backbone, the adapted model before merging and the merged model, and of a second,
/// identical plain model (its ratio to the first is the machine's noise floor), measured in one process. Each round runs
/// every model once in a rotated order; a ratio is taken within each round (neighbours in time share the machine's
/// state), and its median over rounds is reported with a 95 % bootstrap interval, for wall time and for process CPU time.
/// </summary>
internal static class LatencySuite
{
    public sealed record Settings(string[] Models, int[] Batches, int Warmup, int Rounds, int LargeBatchWarmup, int LargeBatchRounds)
    {
        public static Settings Default => new(
            ["vit_base_patch16_224", "resnet18", "mlnet_resnet18", "swin_tiny_patch4_window7_224", "convnext_tiny", "ViT-B/32"], [1, 16], 50, 60, 3, 24);
    }

    public sealed record Row(string Model, int Batch, double PlainMs, double UnmergedMs, double MergedMs,
        double MergedRatio, double MergedLow, double MergedHigh, double UnmergedRatio, double NoiseRatio, double NoiseLow, double NoiseHigh,
        double MergedCpuRatio, double NoiseCpuRatio, double BFloat16Ms, double BFloat16Ratio, int Rounds);

    public static List<Row> Run(Settings settings, Report report)
    {
        var rows = new List<Row>();
        foreach (string preset in settings.Models)
        {
            var models = Build(preset);
            try
            {
                foreach (int batch in settings.Batches)
                {
                    bool large = batch > 1;
                    int size = models[0].Input.ImageSize;
                    using var images = randn(batch, 3, size, size);
                    var (wall, cpu) = Measure(models, images, large ? settings.LargeBatchWarmup : settings.Warmup, large ? settings.LargeBatchRounds : settings.Rounds);
                    List<double> Ratio(List<double>[] t, int a, int b) => [.. t[a].Zip(t[b], (x, y) => x / y)];
                    var merged = Ratio(wall, 2, 0);
                    var noise = Ratio(wall, 3, 0);
                    var (ml, mh) = Stats.MedianInterval(merged);
                    var (nl, nh) = Stats.MedianInterval(noise);
                    var row = new Row(preset, batch, Stats.Median(wall[0]), Stats.Median(wall[1]), Stats.Median(wall[2]),
                        Stats.Median(merged), ml, mh, Stats.Median(Ratio(wall, 1, 0)), Stats.Median(noise), nl, nh,
                        Stats.Median(Ratio(cpu, 2, 0)), Stats.Median(Ratio(cpu, 3, 0)), Stats.Median(wall[4]), Stats.Median(Ratio(wall, 4, 2)), wall[0].Count);
                    rows.Add(row);
                    Console.WriteLine($"{preset} batch {batch}: merged/plain {row.MergedRatio:F4} [{ml:F4}, {mh:F4}], noise {row.NoiseRatio:F4} [{nl:F4}, {nh:F4}]");
                }
            }
            finally
            {
                foreach (var model in models) model.Dispose();
            }
        }
        report.Text("Medians over rounds of per-round ratios, with 95 % bootstrap intervals; `plain2` is a second, identical plain "
            + "model: its ratio is the noise floor. Weights are random (latency does not depend on their values); adapters get "
            + "random non-zero values so that the unmerged model does real work. The merged model is the plain architecture. "
            + "`bf16` is the merged model with bfloat16 weights and inputs (the transformers' `Precision = BFloat16`), `bf16/fp32` its "
            + "per-round ratio to the float32 merged model.");
        report.Table("latency", ["model", "batch", "plain ms", "unmerged ms", "merged ms", "merged/plain [95 % CI]", "unmerged/plain",
            "plain2/plain [95 % CI]", "merged/plain CPU time", "plain2/plain CPU time", "bf16 merged ms", "bf16/fp32", "rounds"],
            rows.Select(r => new object[] { BenchmarkModels.DisplayName(r.Model), r.Batch, r.PlainMs, r.UnmergedMs, r.MergedMs, $"{r.MergedRatio:F3} [{r.MergedLow:F3}, {r.MergedHigh:F3}]",
                r.UnmergedRatio, $"{r.NoiseRatio:F3} [{r.NoiseLow:F3}, {r.NoiseHigh:F3}]", r.MergedCpuRatio, r.NoiseCpuRatio, r.BFloat16Ms, r.BFloat16Ratio, r.Rounds }));
        Plots.Ratios(report.Plot("ratios", "merged/plain and the noise floor, with 95 % intervals"), rows);
        report.Data("rows", rows);
        return rows;
    }

    /// <summary>Draws the latency plot again from a run's <c>latency.json</c> (its measured rows), without measuring.</summary>
    public static void Replot()
    {
        string json = Path.Combine(Report.OutputFolder, "latency.json");
        using var document = System.Text.Json.JsonDocument.Parse(File.ReadAllText(json));
        var rows = System.Text.Json.JsonSerializer.Deserialize<List<Row>>(document.RootElement.GetProperty("rows"))
            ?? throw new InvalidDataException($"{json} has no measured rows.");
        Plots.Ratios(Path.Combine(Report.OutputFolder, "latency-ratios.png"), rows);
        Plots.RenderPending();
    }

    /// <summary>plain, unmerged (random non-zero adapters), merged, a second plain model and the merged one in bfloat16, in eval mode.</summary>
    private static Backbone[] Build(string preset)
    {
        manual_seed(0);
        Backbone Create() => BenchmarkModels.Create(preset);
        var plain = Create();
        var plain2 = Create();
        var unmerged = Create();
        unmerged.AttachAdapters(new AdapterConfig());
        BenchmarkModels.RandomizeAdapters(unmerged);
        var merged = Create();
        merged.AttachAdapters(new AdapterConfig());
        merged.load_state_dict(unmerged.state_dict());
        merged.MergeAdapters();
        if (merged.CountParameters() != plain.CountParameters()) throw new InvalidOperationException("merged model is not the plain architecture");
        // The merged model in bfloat16 (the transformer's ScoringPrecision.BFloat16 scores with such a copy).
        var reduced = Create();
        reduced.load_state_dict(merged.state_dict());
        reduced.to(ScalarType.BFloat16);
        Backbone[] models = [plain, unmerged, merged, plain2, reduced];
        foreach (var model in models) model.eval();
        return models;
    }

    private static (List<double>[] Wall, List<double>[] Cpu) Measure(Backbone[] models, Tensor images, int warmup, int rounds)
    {
        var wall = models.Select(_ => new List<double>()).ToArray();
        var cpu = models.Select(_ => new List<double>()).ToArray();
        using var inference = inference_mode();
        var inputs = models.Select(m => images.to(m.parameters().First().dtype)).ToArray();
        for (int i = 0; i < warmup + rounds; i++)
        {
            // Rotate the order every round so that no model always runs right after another one.
            for (int j = 0; j < models.Length; j++)
            {
                int k = (i + j) % models.Length;
                using var scope = NewDisposeScope();
                double cpuStart = ProcessCpuSeconds();
                var clock = Stopwatch.StartNew();
                models[k].forward(inputs[k]);
                double elapsed = clock.Elapsed.TotalMilliseconds, cpuUsed = (ProcessCpuSeconds() - cpuStart) * 1000;
                if (i < warmup) continue;
                wall[k].Add(elapsed);
                cpu[k].Add(cpuUsed);
            }
        }
        return (wall, cpu);
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct TimeSpec
    {
        public long Seconds;
        public long Nanoseconds;
    }

    [DllImport("libc", EntryPoint = "clock_gettime")]
    private static extern int ClockGetTime(int clock, out TimeSpec time);

    /// <summary>CPU time of every thread of this process (CLOCK_PROCESS_CPUTIME_ID), in seconds, to the nanosecond.</summary>
    private static double ProcessCpuSeconds() =>
        ClockGetTime(2, out var t) == 0 ? t.Seconds + t.Nanoseconds / 1e9 : Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds;
}
