// Inference latency of the plain backbone, the adapted model before merging and the merged model, measured
// side by side in one run (round-robin, so machine noise hits all alike). Prints medians and ratios. A second,
// identical instance of the plain model is timed too: its ratio to the first is the noise floor of the machine.
//
//   dotnet run -c Release --project samples/RepAdapter.Benchmarks [-- --warmup 50 --iterations 30 --models vit_base_patch16_224,resnet18 --batches 1,16]
//
// Weights are random: latency does not depend on their values. Adapters get random non-zero values so that the
// unmerged model does real work.
using System.Diagnostics;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using static TorchSharp.torch;

var options = ParseArgs(args);
Console.WriteLine($"RepAdapter inference benchmark: CPU, {get_num_threads()} torch threads, {Environment.ProcessorCount} cores, "
    + $"warm-up {options.Warmup}, timed {options.Iterations} (per batch size 16: warm-up {options.LargeBatchWarmup}, timed {options.LargeBatchIterations})");
Console.WriteLine();
Console.WriteLine($"{"model",-24} {"batch",5} {"plain ms",10} {"unmerged ms",12} {"merged ms",10} {"merged/plain",13} {"unmerged/plain",15} {"plain2/plain",13}");

foreach (var preset in options.Models)
{
    manual_seed(0);
    using var plain = BackbonePresets.Create(preset);
    using var plain2 = BackbonePresets.Create(preset);
    using var unmerged = BackbonePresets.Create(preset);
    unmerged.AttachAdapters(new AdapterConfig());
    using (no_grad())
    {
        foreach (var (_, p) in unmerged.named_parameters().Where(p => BackboneAdapters.IsAdapterParameter(p.name))) p.normal_(0, 0.02);
    }
    using var merged = BackbonePresets.Create(preset);
    merged.AttachAdapters(new AdapterConfig());
    merged.load_state_dict(unmerged.state_dict());
    merged.MergeAdapters();
    if (merged.CountParameters() != plain.CountParameters()) throw new InvalidOperationException("merged model is not the plain architecture");
    Backbone[] models = [plain, unmerged, merged, plain2];
    foreach (var model in models) model.eval();

    foreach (int batch in options.Batches)
    {
        int size = plain.Input.ImageSize;
        using var images = randn(batch, 3, size, size);
        bool large = batch > 1;
        var times = Measure(models, images, large ? options.LargeBatchWarmup : options.Warmup, large ? options.LargeBatchIterations : options.Iterations);
        double p = Median(times[0]), u = Median(times[1]), m = Median(times[2]), p2 = Median(times[3]);
        Console.WriteLine($"{preset,-24} {batch,5} {p,10:F1} {u,12:F1} {m,10:F1} {m / p,13:F3} {u / p,15:F3} {p2 / p,13:F3}");
    }
}
return 0;

static List<double>[] Measure(Backbone[] models, Tensor images, int warmup, int iterations)
{
    var times = models.Select(_ => new List<double>()).ToArray();
    using var inference = inference_mode();
    for (int i = 0; i < warmup + iterations; i++)
    {
        // Rotate the order every pass so that no model always runs right after another one.
        for (int j = 0; j < models.Length; j++)
        {
            int k = (i + j) % models.Length;
            using var scope = NewDisposeScope();
            var clock = Stopwatch.StartNew();
            models[k].forward(images);
            if (i >= warmup) times[k].Add(clock.Elapsed.TotalMilliseconds);
        }
    }
    return times;
}

static double Median(List<double> values)
{
    var sorted = values.Order().ToArray();
    return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
}

static BenchOptions ParseArgs(string[] args)
{
    // The paper's protocol at batch 1: 50 warm-up passes, 30 timed passes.
    var o = new BenchOptions(50, 30, 3, 20, ["vit_base_patch16_224", "resnet18", "swin_tiny_patch4_window7_224", "convnext_tiny", "ViT-B/16"], [1, 16]);
    for (int i = 0; i + 1 < args.Length; i += 2)
    {
        o = args[i] switch
        {
            "--warmup" => o with { Warmup = int.Parse(args[i + 1]) },
            "--iterations" => o with { Iterations = int.Parse(args[i + 1]) },
            "--large-batch-warmup" => o with { LargeBatchWarmup = int.Parse(args[i + 1]) },
            "--large-batch-iterations" => o with { LargeBatchIterations = int.Parse(args[i + 1]) },
            "--models" => o with { Models = args[i + 1].Split(',') },
            "--batches" => o with { Batches = [.. args[i + 1].Split(',').Select(int.Parse)] },
            _ => throw new ArgumentException($"Unknown option {args[i]}"),
        };
    }
    return o;
}

internal sealed record BenchOptions(int Warmup, int Iterations, int LargeBatchWarmup, int LargeBatchIterations, string[] Models, int[] Batches);
