using Microsoft.ML.RepAdapter.Torch;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Adapters;

/// <summary>
/// SSF (Lian et al. 2022, dongzelian/SSF): the projection's output scaled and shifted per channel, y = gamma * (W z + b) + beta,
/// with the official init (gamma ~ N(1, 0.02), beta ~ N(0, 0.02)). Merges as W' = gamma * W (each output channel), b' =
/// gamma * b + beta. The shift needs the host's bias to fold into: on a bias-free layer (ResNet's unfused convs) SSF scales only.
/// </summary>
public sealed class SsfLayer : ProjectionAdapter
{
    private readonly Parameter ssf_scale;
    private readonly Parameter? ssf_shift;

    /// <summary>A scale (and, where <paramref name="layer"/> has a bias, a shift) per output channel of <paramref name="layer"/>.</summary>
    public SsfLayer(AdaptableLayer layer) : base(nameof(SsfLayer))
    {
        ssf_scale = new Parameter(empty(layer.OutChannels));
        nn.init.normal_(ssf_scale, mean: 1, std: 0.02);
        register_parameter(nameof(ssf_scale), ssf_scale);
        if (layer.bias is null) return;
        ssf_shift = new Parameter(empty(layer.OutChannels));
        nn.init.normal_(ssf_shift, mean: 0, std: 0.02);
        register_parameter(nameof(ssf_shift), ssf_shift);
    }

    /// <inheritdoc/>
    /// <remarks>False: the shift acts on the output, which every layer absorbs exactly.</remarks>
    public override bool HasInputBias => false;

    /// <inheritdoc/>
    public override Tensor Forward(Tensor input, AdaptableLayer layer)
    {
        using var scope = NewDisposeScope();
        Tensor scaled = layer.OverOutputs(ssf_scale).mul(layer.Project(input));
        return (ssf_shift is null ? scaled : scaled.Plus(layer.OverOutputs(ssf_shift))).MoveToOuterDisposeScope();
    }

    internal override void MergeInto(AdaptableLayer layer) =>
        layer.Rewrite(ScaleOutputChannels(layer.weight, ssf_scale), layer.bias is null ? null : layer.bias.mul(ssf_scale).Plus(ssf_shift!));
}
