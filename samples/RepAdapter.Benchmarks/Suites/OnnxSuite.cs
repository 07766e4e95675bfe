using System.Diagnostics;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using static TorchSharp.torch;

namespace RepAdapter.Benchmarks;

/// <summary>
/// Inference latency of a merged model run by ONNX Runtime (CPU, its export by <c>Backbone.ExportOnnx</c>) against the
/// same merged model run by TorchSharp, in one process, with the same number of threads. Each round runs TorchSharp,
/// ONNX Runtime and TorchSharp again (the second TorchSharp run's ratio to the first is the noise floor) in a rotated
/// order; ratios are taken within each round and their medians reported with 95 % bootstrap intervals. Both start from
/// the raw pixels (TorchSharp normalises them, as the transformer does; the ONNX graph has the normalisation in its stem).
/// </summary>
internal static class OnnxSuite
{
    public sealed record Settings(string[] Models, int[] Batches, int Warmup, int Rounds, int LargeBatchWarmup, int LargeBatchRounds)
    {
        public static Settings Default => new(
            ["vit_base_patch16_224", "resnet18", "swin_tiny_patch4_window7_224", "convnext_tiny", "ViT-B/32"], [1, 16], 20, 40, 3, 16);
    }

    public sealed record Row(string Model, int Batch, int Threads, double TorchMs, double OnnxMs, double OnnxRatio, double OnnxLow, double OnnxHigh,
        double NoiseRatio, double NoiseLow, double NoiseHigh, double MaxAbsDifference, int Rounds);

    public static List<Row> Run(Settings settings, Report report)
    {
        int threads = get_num_threads();
        var rows = new List<Row>();
        foreach (string preset in settings.Models)
        {
            using var model = Merged(preset);
            using var stream = new MemoryStream();
            model.ExportOnnx(stream);
            using var sessionOptions = new SessionOptions
            {
                IntraOpNumThreads = threads,
                InterOpNumThreads = 1,
                GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL,
            };
            // ONNX Runtime's workers spin for a while after each run by default, taking the cores from the TorchSharp run
            // that follows in the same round (a first run measured torch2/torch up to 1.1 with it): not here.
            sessionOptions.AddSessionConfigEntry("session.intra_op.allow_spinning", "0");
            using var session = new InferenceSession(stream.ToArray(), sessionOptions);
            foreach (int batch in settings.Batches)
            {
                bool large = batch > 1;
                int size = model.Input.ImageSize;
                using var pixels = randint(0, 256, [batch, 3, size, size], dtype: float32, generator: new Generator(1));
                var values = pixels.data<float>().ToArray();
                using var input = OrtValue.CreateTensorValueFromMemory(values, [batch, 3, size, size]);
                var (times, difference) = Measure(model, session, pixels, input, large ? settings.LargeBatchWarmup : settings.Warmup,
                    large ? settings.LargeBatchRounds : settings.Rounds);
                List<double> Ratio(int a, int b) => [.. times[a].Zip(times[b], (x, y) => x / y)];
                var onnx = Ratio(1, 0);
                var noise = Ratio(2, 0);
                var (ol, oh) = Stats.MedianInterval(onnx);
                var (nl, nh) = Stats.MedianInterval(noise);
                var row = new Row(preset, batch, threads, Stats.Median(times[0]), Stats.Median(times[1]), Stats.Median(onnx), ol, oh,
                    Stats.Median(noise), nl, nh, difference, times[0].Count);
                rows.Add(row);
                Console.WriteLine($"{preset} batch {batch}: TorchSharp {row.TorchMs:F1} ms, ONNX Runtime {row.OnnxMs:F1} ms, onnx/torch {row.OnnxRatio:F3} [{ol:F3}, {oh:F3}], noise {row.NoiseRatio:F3} [{nl:F3}, {nh:F3}], max |difference| {difference:G3}");
            }
        }
        report.Text($"Merged models (random weights and adapters, merged: latency does not depend on the values), float32, CPU, {threads} threads for "
            + "both (ONNX Runtime: intra-op threads = TorchSharp's, all graph optimisations). Medians over rounds of per-round ratios, with 95 % "
            + "bootstrap intervals; `torch2/torch` runs TorchSharp twice per round: its ratio is the noise floor. `max |diff|` compares the two "
            + "outputs on the same pixels (a check that the same function is timed).");
        report.Table("onnx", ["model", "batch", "TorchSharp ms", "ONNX Runtime ms", "onnx/torch [95 % CI]", "torch2/torch [95 % CI]", "max |diff|", "rounds"],
            rows.Select(r => new object[] { BenchmarkModels.DisplayName(r.Model), r.Batch, r.TorchMs, r.OnnxMs, $"{r.OnnxRatio:F3} [{r.OnnxLow:F3}, {r.OnnxHigh:F3}]",
                $"{r.NoiseRatio:F3} [{r.NoiseLow:F3}, {r.NoiseHigh:F3}]", r.MaxAbsDifference, r.Rounds }));
        report.Data("rows", rows);
        return rows;
    }

    /// <summary>The preset with random non-zero adapters merged in (the plain architecture), in eval mode.</summary>
    private static Backbone Merged(string preset)
    {
        manual_seed(0);
        var model = BenchmarkModels.Create(preset);
        model.AttachAdapters(new AdapterConfig());
        BenchmarkModels.RandomizeAdapters(model);
        model.eval();
        model.MergeAdapters();
        return model;
    }

    /// <summary>Wall times per round of TorchSharp, ONNX Runtime and TorchSharp again; and the largest output difference (first measured round).</summary>
    private static (List<double>[] Times, double MaxAbsDifference) Measure(Backbone model, InferenceSession session, Tensor pixels, OrtValue input,
        int warmup, int rounds)
    {
        var times = new[] { new List<double>(), new List<double>(), new List<double>() };
        string inputName = session.InputNames[0];
        float[] torchOutput = [], onnxOutput = [];
        using var inference = inference_mode();
        using var runOptions = new RunOptions();
        for (int i = 0; i < warmup + rounds; i++)
        {
            bool keep = i == warmup;
            // Rotate the order every round so that neither runtime always runs right after the other.
            for (int j = 0; j < 3; j++)
            {
                int k = (i + j) % 3;
                using var scope = NewDisposeScope();
                var clock = Stopwatch.StartNew();
                if (k == 1)
                {
                    using var results = session.Run(runOptions, [inputName], [input], session.OutputNames);
                    clock.Stop();
                    if (keep) onnxOutput = results[0].GetTensorDataAsSpan<float>().ToArray();
                }
                else
                {
                    var logits = model.forward(model.Input.Normalize(pixels));
                    clock.Stop();
                    if (keep && k == 0) torchOutput = logits.data<float>().ToArray();
                }
                if (i >= warmup) times[k].Add(clock.Elapsed.TotalMilliseconds);
            }
        }
        return (times, torchOutput.Zip(onnxOutput, (a, b) => (double)Math.Abs(a - b)).DefaultIfEmpty().Max());
    }
}
