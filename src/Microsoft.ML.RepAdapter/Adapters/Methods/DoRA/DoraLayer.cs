using Microsoft.ML.RepAdapter.Torch;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Adapters;

/// <summary>
/// DoRA (Liu et al. 2024, NVlabs/DoRA; peft's <c>use_dora</c>): the weight split into a trained magnitude m per output
/// channel and a direction W + s B A that LoRA adapts, y = m / ||W + s B A|| * (W + s B A) z + b in evaluation, the norm
/// taken per output channel and detached from the graph as the paper (section 4.3) and peft do. m starts at ||W||, B at
/// zero, so the layer is unchanged at first. Merges as W' = m / ||W + s B A|| * (W + s B A), b unchanged.
/// </summary>
public sealed class DoraLayer : LowRankUpdate
{
    private readonly Parameter lora_magnitude_vector;

    /// <summary>A rank-<see cref="AdapterConfig.Hidden"/> DoRA adapter for <paramref name="layer"/>, its magnitude read from the layer's weight.</summary>
    public DoraLayer(AdaptableLayer layer, AdapterConfig config) : base(nameof(DoraLayer), layer, config)
    {
        using (no_grad())
            lora_magnitude_vector = new Parameter(ChannelNorms(layer.weight));
        register_parameter(nameof(lora_magnitude_vector), lora_magnitude_vector);
    }

    /// <inheritdoc/>
    /// <remarks>
    /// As peft: W z + b + (m / n - 1) W dropout(z) + (m / n) s B A dropout(z), n the detached norm. Without dropout (in
    /// evaluation) that is m / n (W + s B A) z + b, the merged layer.
    /// </remarks>
    public override Tensor Forward(Tensor input, AdaptableLayer layer)
    {
        using var scope = NewDisposeScope();
        Tensor dropped = Dropped(input);
        Tensor scale = MagnitudeScale(layer.weight.Plus(WeightUpdate(layer)));
        Tensor rescaledBase = layer.OverOutputs(scale.Plus(-1)).mul(layer.ProjectWith(dropped, layer.weight, null));
        Tensor update = layer.OverOutputs(scale).mul(Update(dropped, layer));
        return layer.Project(input).Plus(rescaledBase).Plus(update).MoveToOuterDisposeScope();
    }

    internal override void MergeInto(AdaptableLayer layer)
    {
        Tensor direction = layer.weight.Plus(WeightUpdate(layer));
        layer.Rewrite(ScaleOutputChannels(direction, MagnitudeScale(direction)), null);
    }

    /// <summary>m / ||<paramref name="direction"/>|| per output channel (the direction W + s B A), the norm detached.</summary>
    private Tensor MagnitudeScale(Tensor direction)
    {
        using var scope = NewDisposeScope();
        Tensor norms = ChannelNorms(direction).detach();
        return lora_magnitude_vector.div(norms).MoveToOuterDisposeScope();
    }

    // L2 norm of each output channel's weights (peft: dim 1 for linear, dims 1-3 for Conv2d), as sqrt(sum w^2).
    private static Tensor ChannelNorms(Tensor weight)
    {
        using var scope = NewDisposeScope();
        Tensor rows = weight.flatten(1);
        return rows.mul(rows).sum(1).sqrt().MoveToOuterDisposeScope();
    }
}
