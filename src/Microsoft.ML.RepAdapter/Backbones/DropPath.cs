using Microsoft.ML.RepAdapter.Torch;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Backbones;

/// <summary>Stochastic depth: in training, drops a residual branch for a whole sample with probability p (timm's drop_path).</summary>
internal sealed class DropPath : nn.Module<Tensor, Tensor>
{
    public DropPath(double probability) : base(nameof(DropPath)) => Probability = probability;

    public double Probability { get; }

    /// <summary>timm's schedule: the rate grows linearly from 0 at the first of <paramref name="blocks"/> blocks to <paramref name="rate"/> at the last.</summary>
    public static double[] LinearRates(int blocks, double rate) =>
        [.. Enumerable.Range(0, blocks).Select(i => blocks == 1 ? 0 : rate * i / (blocks - 1))];

    public override Tensor forward(Tensor x)
    {
        if (!training || Probability == 0) return x.alias();
        using var scope = NewDisposeScope();
        double keep = 1 - Probability;
        long[] shape = [x.shape[0], .. Enumerable.Repeat(1L, (int)x.dim() - 1)];
        Tensor mask = empty(shape, dtype: x.dtype, device: x.device).bernoulli_(keep);
        Scalars.With(keep, s => mask.div_(s));
        return (x * mask).MoveToOuterDisposeScope();
    }
}
