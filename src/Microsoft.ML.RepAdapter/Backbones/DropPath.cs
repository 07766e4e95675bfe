using Microsoft.ML.RepAdapter.Torch;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Backbones;

/// <summary>Stochastic depth: in training, drops a residual branch for a whole sample with probability p (timm's drop_path).</summary>
internal sealed class DropPath : nn.Module<Tensor, Tensor>
{
    public DropPath(double probability) : base(nameof(DropPath)) => Probability = probability;

    public double Probability { get; }

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
