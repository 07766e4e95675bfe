using Microsoft.ML.RepAdapter.Torch;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Backbones;

/// <summary>
/// timm's LayerScale: each channel (the last dimension) times a learned <c>gamma</c>, after a residual branch (DINOv2's and
/// CaiT's ViT blocks, <c>blocks.N.ls1.gamma</c>). It follows the attention and MLP outputs, so adapters in front of qkv
/// and fc1 merge into those weights as without it; LayerScale stays as it is.
/// </summary>
public sealed class LayerScale : nn.Module<Tensor, Tensor>
{
    private readonly Parameter gamma;

    /// <summary>A LayerScale over <paramref name="dim"/> channels, each gamma starting at <paramref name="init"/> (timm's init_values).</summary>
    public LayerScale(int dim, double init) : base(nameof(LayerScale))
    {
        gamma = new Parameter(Scalars.With(init, value => full(dim, value)));
        RegisterComponents();
    }

    /// <summary>The per-channel scale [dim].</summary>
    public Tensor Gamma => gamma;

    /// <summary>[..., dim] times gamma.</summary>
    public override Tensor forward(Tensor x) => x * gamma;
}
