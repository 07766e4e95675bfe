using Microsoft.ML.RepAdapter.Torch;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Adapters;

/// <summary>
/// LoRA (Hu et al. 2021): W z + b + s B A dropout(z), in parallel to a linear layer or a convolution
/// (<see cref="LowRankUpdate"/>). Merges as W' = W + s B A.
/// </summary>
public sealed class LoraLayer : LowRankUpdate
{
    /// <summary>A rank-<see cref="AdapterConfig.Hidden"/> update for <paramref name="layer"/>; the layer is unchanged at first.</summary>
    public LoraLayer(AdaptableLayer layer, AdapterConfig config) : base(nameof(LoraLayer), layer, config) { }

    /// <inheritdoc/>
    public override Tensor Forward(Tensor input, AdaptableLayer layer)
    {
        using var scope = NewDisposeScope();
        return layer.Project(input).Plus(Update(Dropped(input), layer)).MoveToOuterDisposeScope();
    }

    internal override void MergeInto(AdaptableLayer layer) => layer.Rewrite(layer.weight.Plus(WeightUpdate(layer)), null);
}
