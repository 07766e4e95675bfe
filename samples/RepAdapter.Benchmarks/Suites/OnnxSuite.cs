using System.Diagnostics;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using TorchSharp;
using static TorchSharp.torch;

namespace RepAdapter.Benchmarks;

/// <summary>
/// Inference latency of one merged model four ways, in one process with the same number of threads: TorchSharp float32
/// and bfloat16 (the transformers' <c>Precision = BFloat16</c>), ONNX Runtime float32 and int8 (its export by
/// <c>Backbone.ExportOnnx</c>, with <c>OnnxQuantization.DynamicInt8</c> for int8), then TorchSharp float32 again (its
/// ratio to the first run is the noise floor), in an order rotated every round; ratios are taken within each round and
/// their medians reported with 95 % bootstrap intervals. All start from the raw pixels (TorchSharp normalises them, as
/// the transformer does; the ONNX graphs have the normalisation in their stem).
/// </summary>
internal static class OnnxSuite
{
    public sealed record Settings(string[] Models, int[] Batches, int Warmup, int Rounds, int LargeBatchWarmup, int LargeBatchRounds)
    {
        public static Settings Default => new(
            ["vit_base_patch16_224", "resnet18", "swin_tiny_patch4_window7_224", "convnext_tiny", "ViT-B/32"], [1, 16], 10, 30, 2, 12);
    }

    /// <param name="Int8Difference">max |int8 - float32| of the ONNX Runtime runs, over the logits' standard deviation.</param>
    /// <param name="Int8Agreement">Share of images whose top class int8 and float32 agree on (random weights: a sanity check, not accuracy).</param>
    public sealed record Row(string Model, int Batch, int Threads, double TorchMs, double BFloat16Ms, double OnnxMs, double Int8Ms,
        double BFloat16Ratio, double OnnxRatio, double OnnxLow, double OnnxHigh, double Int8Ratio, double Int8Low, double Int8High,
        double NoiseRatio, double NoiseLow, double NoiseHigh, double MaxAbsDifference, double Int8Difference, double Int8Agreement,
        long OnnxBytes, long Int8Bytes, int Rounds);

    // The runners, by index: what each round times.
    private const int Torch = 0, BFloat16 = 1, Onnx = 2, Int8 = 3, Torch2 = 4;

    public static List<Row> Run(Settings settings, Report report)
    {
        int threads = get_num_threads();
        var rows = new List<Row>();
        foreach (string preset in settings.Models)
        {
            var (model, reduced) = Merged(preset);
            using var _ = model;
            using var __ = reduced;
            byte[] onnx = Export(model, OnnxQuantization.None), int8 = Export(model, OnnxQuantization.DynamicInt8);
            using var sessionOptions = new SessionOptions
            {
                IntraOpNumThreads = threads,
                InterOpNumThreads = 1,
                GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL,
            };
            // ONNX Runtime's workers spin for a while after each run by default, taking the cores from the TorchSharp run
            // that follows in the same round (a first run measured torch2/torch up to 1.1 with it): not here.
            sessionOptions.AddSessionConfigEntry("session.intra_op.allow_spinning", "0");
            using var session = new InferenceSession(onnx, sessionOptions);
            using var int8Session = new InferenceSession(int8, sessionOptions);
            foreach (int batch in settings.Batches)
            {
                bool large = batch > 1;
                int size = model.Input.ImageSize;
                using var pixels = randint(0, 256, [batch, 3, size, size], dtype: float32, generator: new Generator(1));
                var values = pixels.data<float>().ToArray();
                using var input = OrtValue.CreateTensorValueFromMemory(values, [batch, 3, size, size]);
                var (times, outputs) = Measure(model, reduced, session, int8Session, pixels, input, large ? settings.LargeBatchWarmup : settings.Warmup,
                    large ? settings.LargeBatchRounds : settings.Rounds);
                List<double> Ratio(int a, int b) => [.. times[a].Zip(times[b], (x, y) => x / y)];
                var (ol, oh) = Stats.MedianInterval(Ratio(Onnx, Torch));
                var (il, ih) = Stats.MedianInterval(Ratio(Int8, Onnx));
                var (nl, nh) = Stats.MedianInterval(Ratio(Torch2, Torch));
                var (difference, int8Difference, agreement) = Compare(outputs, batch);
                var row = new Row(preset, batch, threads, Stats.Median(times[Torch]), Stats.Median(times[BFloat16]), Stats.Median(times[Onnx]), Stats.Median(times[Int8]),
                    Stats.Median(Ratio(BFloat16, Torch)), Stats.Median(Ratio(Onnx, Torch)), ol, oh, Stats.Median(Ratio(Int8, Onnx)), il, ih,
                    Stats.Median(Ratio(Torch2, Torch)), nl, nh, difference, int8Difference, agreement, onnx.Length, int8.Length, times[Torch].Count);
                rows.Add(row);
                Console.WriteLine($"{preset} batch {batch}: TorchSharp {row.TorchMs:F1} ms, bf16 {row.BFloat16Ms:F1}, ONNX Runtime {row.OnnxMs:F1}, int8 {row.Int8Ms:F1}; "
                    + $"onnx/torch {row.OnnxRatio:F3} [{ol:F3}, {oh:F3}], int8/onnx {row.Int8Ratio:F3} [{il:F3}, {ih:F3}], noise {row.NoiseRatio:F3} [{nl:F3}, {nh:F3}], "
                    + $"max |onnx - torch| {difference:G3}, int8: {int8Difference:G3} of the logits' spread, {agreement:P0} top-1 agreement");
            }
        }
        report.Text($"Merged models (random weights and adapters, merged: latency does not depend on the values), CPU, {threads} threads for "
            + "all (ONNX Runtime: intra-op threads = TorchSharp's, all graph optimisations). **fp32** TorchSharp float32, **bf16** TorchSharp "
            + "with bfloat16 weights and inputs, **ORT** ONNX Runtime float32, **int8** ONNX Runtime on the `OnnxQuantization.DynamicInt8` "
            + "export (linear layers int8 per output channel, activations uint8 per tensor at run time, convolutions float32). Medians over "
            + "rounds of per-round ratios, with 95 % bootstrap intervals; `fp32 again/fp32` runs TorchSharp twice per round: its ratio is the "
            + "noise floor. `max |ORT - fp32|` compares ONNX Runtime's float32 output with TorchSharp's on the same pixels (a check that the "
            + "same function is timed); `int8 error` is max |int8 - ORT| over the logits' standard deviation, and `top-1 agree` the share of "
            + "the batch whose top class they agree on (random weights and pixels: a sanity check; accuracy on trained models is in "
            + "docs/deployment.md).");
        report.Table("onnx", ["model", "batch", "fp32 ms", "bf16 ms", "ORT ms", "int8 ms", "bf16/fp32", "ORT/fp32 [95 % CI]", "int8/ORT [95 % CI]",
                "fp32 again/fp32 [95 % CI]", "max |ORT - fp32|", "int8 error", "top-1 agree", "ORT MB", "int8 MB", "rounds"],
            rows.Select(r => new object[] { BenchmarkModels.DisplayName(r.Model), r.Batch, r.TorchMs, r.BFloat16Ms, r.OnnxMs, r.Int8Ms, $"{r.BFloat16Ratio:F3}",
                $"{r.OnnxRatio:F3} [{r.OnnxLow:F3}, {r.OnnxHigh:F3}]", $"{r.Int8Ratio:F3} [{r.Int8Low:F3}, {r.Int8High:F3}]",
                $"{r.NoiseRatio:F3} [{r.NoiseLow:F3}, {r.NoiseHigh:F3}]", r.MaxAbsDifference, $"{r.Int8Difference:F3}", $"{r.Int8Agreement:P0}",
                $"{r.OnnxBytes / 1048576.0:F1}", $"{r.Int8Bytes / 1048576.0:F1}", r.Rounds }));
        report.Data("rows", rows);
        return rows;
    }

    private static byte[] Export(Backbone model, OnnxQuantization quantization)
    {
        using var stream = new MemoryStream();
        model.ExportOnnx(stream, new OnnxExportOptions { Quantization = quantization });
        return stream.ToArray();
    }

    /// <summary>The preset with random non-zero adapters merged in (the plain architecture), and a bfloat16 copy, both in eval mode.</summary>
    private static (Backbone Merged, Backbone BFloat16) Merged(string preset)
    {
        manual_seed(0);
        var model = BenchmarkModels.Create(preset);
        model.AttachAdapters(new AdapterConfig());
        BenchmarkModels.RandomizeAdapters(model);
        model.eval();
        model.MergeAdapters();
        // As the transformer's ScoringPrecision.BFloat16 scores: a bfloat16 copy of the merged model.
        var reduced = BenchmarkModels.Create(preset);
        reduced.load_state_dict(model.state_dict());
        reduced.to(ScalarType.BFloat16);
        reduced.eval();
        return (model, reduced);
    }

    /// <summary>Wall times per round of each runner (see the indices above), and each one's output in the first measured round.</summary>
    private static (List<double>[] Times, float[][] Outputs) Measure(Backbone model, Backbone reduced, InferenceSession session, InferenceSession int8,
        Tensor pixels, OrtValue input, int warmup, int rounds)
    {
        const int runners = 5;
        var times = Enumerable.Range(0, runners).Select(_ => new List<double>()).ToArray();
        var outputs = new float[runners][];
        string inputName = session.InputNames[0];
        using var inference = inference_mode();
        using var runOptions = new RunOptions();
        for (int i = 0; i < warmup + rounds; i++)
        {
            // Rotate the order every round so that no runner always runs right after another.
            for (int j = 0; j < runners; j++)
            {
                int k = (i + j) % runners;
                using var scope = NewDisposeScope();
                var clock = Stopwatch.StartNew();
                bool keep = i == warmup;
                switch (k)
                {
                    case Onnx or Int8:
                        var run = k == Onnx ? session : int8;
                        using (var results = run.Run(runOptions, [inputName], [input], run.OutputNames))
                        {
                            clock.Stop();
                            if (keep) outputs[k] = results[0].GetTensorDataAsSpan<float>().ToArray();
                        }
                        break;
                    case BFloat16:
                        var low = reduced.forward(model.Input.Normalize(pixels).to(ScalarType.BFloat16));
                        clock.Stop();
                        if (keep) outputs[k] = low.to(float32).data<float>().ToArray();
                        break;
                    default:
                        var logits = model.forward(model.Input.Normalize(pixels));
                        clock.Stop();
                        if (keep) outputs[k] = logits.data<float>().ToArray();
                        break;
                }
                if (i >= warmup) times[k].Add(clock.Elapsed.TotalMilliseconds);
            }
        }
        return (times, outputs);
    }

    /// <summary>max |ORT - TorchSharp|; max |int8 - ORT| over the ORT logits' standard deviation; the share of rows whose top class the two agree on.</summary>
    private static (double Difference, double Int8Difference, double Agreement) Compare(float[][] outputs, int batch)
    {
        using var scope = NewDisposeScope();
        var torch = tensor(outputs[Torch]).view(batch, -1);
        var onnx = tensor(outputs[Onnx]).view(batch, -1);
        var int8 = tensor(outputs[Int8]).view(batch, -1);
        double difference = (onnx - torch).abs().max().item<float>();
        double int8Difference = (int8 - onnx).abs().max().item<float>() / onnx.std().item<float>();
        double agreement = int8.argmax(1).eq(onnx.argmax(1)).to(float32).mean().item<float>();
        return (difference, int8Difference, agreement);
    }
}
