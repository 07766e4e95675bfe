using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Torch;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Training;

/// <summary>
/// Less work per step when the first blocks of the trunk are frozen (adapters in the last blocks only, or a head-only
/// linear probe): the frozen prefix's output is computed once per image and cached, and each step runs only the rest
/// of the network. Exact, since a frozen prefix is a fixed function of the image, with one difference from running it
/// every step: the prefix runs as in evaluation, without stochastic depth in its frozen blocks.
/// </summary>
public static class FrozenPrefix
{
    /// <summary>
    /// How many trunk steps of <paramref name="backbone"/> come before the first one with a trainable parameter: the
    /// prefix that can be cached (0: none, e.g. full fine-tuning or adapters from the first block on).
    /// </summary>
    public static int Steps(Backbone backbone) =>
        backbone.FirstStepHolding(backbone.named_parameters().Where(p => p.parameter.requires_grad).Select(p => p.name));

    /// <summary>
    /// The prefix's outputs for every example of <paramref name="images"/> (in order, with their targets and rows), computed
    /// in eval mode without gradients, <paramref name="batchSize"/> at a time, kept in memory on the CPU in float32. With
    /// <paramref name="reduced"/> (a copy of the frozen weights in another number format, see <see cref="ReducedCopy"/>),
    /// the prefix runs in that copy instead.
    /// </summary>
    public static LabeledImages Compute(Backbone backbone, int steps, Func<Tensor, Tensor> toInput, TrainingImages images, Device device, int batchSize,
        Backbone? reduced = null)
    {
        bool wasTraining = backbone.training;
        backbone.eval();
        Tensor? outputs = null, targets = null;
        try
        {
            long at = 0;
            using (no_grad())
            {
                foreach (var batch in images.InOrder(batchSize))
                {
                    using (batch)
                    using (var scope = NewDisposeScope())
                    {
                        var hidden = Run(backbone, reduced, steps, toInput(batch.Pixels.to(device))).cpu();
                        // Allocated at the first batch, when the prefix's output shape is known.
                        outputs ??= empty([images.Count, .. hidden.shape[1..]], hidden.dtype).DetachFromDisposeScope();
                        targets ??= empty([images.Count, .. batch.Targets.shape[1..]], batch.Targets.dtype).DetachFromDisposeScope();
                        outputs.narrow(0, at, batch.Count).copy_(hidden);
                        targets.narrow(0, at, batch.Count).copy_(batch.Targets);
                        at += batch.Count;
                    }
                }
            }
            return new LabeledImages(outputs ?? throw new ArgumentException("No images to compute the prefix of.", nameof(images)), targets!, [.. images.Rows]);
        }
        catch
        {
            outputs?.Dispose();
            targets?.Dispose();
            throw;
        }
        finally
        {
            backbone.train(wasTraining);
        }
    }

    /// <summary>
    /// A copy of <paramref name="source"/>'s weights (no adapters: the prefix has none) in <paramref name="dtype"/>, in eval
    /// mode on <paramref name="device"/>, built by <paramref name="build"/>; float32 master weights stay where they are.
    /// </summary>
    public static Backbone ReducedCopy(Func<Backbone> build, Backbone source, ScalarType dtype, Device device)
    {
        // Building runs the layers' random initialisation: the generator is put back, so that the run's own randomness
        // (adapter initialisation, dropout, shuffling) does not depend on the prefix's precision.
        using var generator = random.get_rng_state();
        var copy = build();
        random.set_rng_state(generator);
        try
        {
            copy.load_state_dict(source.state_dict(), strict: true);
            copy.to(dtype).to(device).eval();
            return copy;
        }
        catch
        {
            copy.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Times the prefix of one batch in float32 (<paramref name="backbone"/>) and in <paramref name="reduced"/>'s format:
    /// milliseconds of each (<see cref="PrecisionTrial"/>) and their outputs' difference, root mean square over float32's.
    /// </summary>
    public static (double Float32Milliseconds, double ReducedMilliseconds, double RelativeDifference) Trial(Backbone backbone, Backbone reduced, int steps,
        Func<Tensor, Tensor> toInput, TrainingImages images, Device device, int batchSize)
    {
        bool wasTraining = backbone.training;
        backbone.eval();
        try
        {
            using var scope = NewDisposeScope();
            using var _ = no_grad();
            using var batch = images.InOrder(batchSize).First();
            var input = toInput(batch.Pixels.to(device));
            Tensor Full() => Run(backbone, null, steps, input);
            Tensor Half() => Run(backbone, reduced, steps, input);
            double full = PrecisionTrial.Milliseconds(Full), half = PrecisionTrial.Milliseconds(Half);
            var exact = Full();
            var error = Half().sub(exact);
            double difference = error.mul(error).mean().sqrt().div(exact.mul(exact).mean().sqrt()).item<float>();
            return (full, half, difference);
        }
        finally
        {
            backbone.train(wasTraining);
        }
    }

    private static Tensor Run(Backbone backbone, Backbone? reduced, int steps, Tensor input) =>
        reduced is null ? backbone.ForwardPrefix(input, steps) : reduced.ForwardPrefix(input.to(reduced.parameters().First().dtype), steps).to(float32);

    /// <summary>Bytes the cached outputs of <paramref name="count"/> examples take (from one example's prefix output).</summary>
    public static long CacheBytes(Backbone backbone, int steps, int count)
    {
        int size = backbone.Input.ImageSize;
        bool wasTraining = backbone.training;
        backbone.eval();
        try
        {
            using var scope = NewDisposeScope();
            using var _ = no_grad();
            var device = backbone.parameters().First().device;
            var one = backbone.ForwardPrefix(zeros(1, 3, size, size, device: device), steps);
            return one.numel() * one.ElementSize * count;
        }
        finally
        {
            backbone.train(wasTraining);
        }
    }
}

/// <summary>The rest of a backbone after a cached prefix of its trunk: prefix outputs in, logits out.</summary>
/// <remarks>Holds the backbone as its submodule <c>backbone</c>, so training it trains the backbone's own parameters.</remarks>
public sealed class SuffixNetwork : nn.Module<Tensor, Tensor>
{
    private readonly Backbone backbone;
    private readonly int _steps;

    /// <summary>The part of <paramref name="backbone"/> after its first <paramref name="steps"/> trunk steps, and its head.</summary>
    public SuffixNetwork(Backbone backbone, int steps) : base(nameof(SuffixNetwork))
    {
        this.backbone = backbone;
        _steps = steps;
        RegisterComponents();
    }

    /// <inheritdoc/>
    public override Tensor forward(Tensor hidden)
    {
        using var scope = NewDisposeScope();
        return backbone.ForwardHead(backbone.ForwardFeaturesFrom(hidden, _steps)).MoveToOuterDisposeScope();
    }

    /// <summary>Leaves the backbone to its owner.</summary>
    protected override void Dispose(bool disposing)
    {
        // The backbone outlives this view of it: dispose only this module's own handle.
        register_module(nameof(backbone), null!);
        base.Dispose(disposing);
    }
}
