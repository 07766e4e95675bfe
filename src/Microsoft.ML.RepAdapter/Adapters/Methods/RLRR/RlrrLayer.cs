using Microsoft.ML.RepAdapter.Torch;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Adapters;

/// <summary>
/// RLRR (Dong et al. 2024, zstarN70/RLRR): the frozen weight plus a residual rescaling of it by a row and a column
/// scale, W' = W + W * (scale_line scale_col), b' = b + shift_bias, in the official names and shapes: scale_col [1, in k],
/// scale_line [out k, 1], shift_bias [1, out]. On a k x k convolution the official code views W as [out k, in k]
/// (kernel rows beside output channels, kernel columns beside input channels), so weight [o, i, a, b] is rescaled by
/// scale_line [o k + a] scale_col [i k + b]. Both scales start kaiming-uniform as the official code (so the layer
/// starts perturbed), the shift at zero, and only with the host's bias (as the official RLRRConv). Forward and merge
/// compute the same W', so the merge is exact.
/// </summary>
public sealed class RlrrLayer : ProjectionAdapter
{
    private readonly Parameter scale_col;
    private readonly Parameter scale_line;
    private readonly Parameter? shift_bias;
    private readonly long _kernel;

    /// <summary>RLRR's scales (and shift, where <paramref name="layer"/> has a bias) for <paramref name="layer"/>.</summary>
    public RlrrLayer(AdaptableLayer layer) : base(nameof(RlrrLayer))
    {
        _kernel = layer is AdaptableConv2d conv ? conv.KernelSize : 1;
        scale_col = new Parameter(empty(1, layer.InChannels * _kernel));
        scale_line = new Parameter(empty(layer.OutChannels * _kernel, 1));
        nn.init.kaiming_uniform_(scale_col);
        nn.init.kaiming_uniform_(scale_line);
        register_parameter(nameof(scale_col), scale_col);
        register_parameter(nameof(scale_line), scale_line);
        if (layer.bias is null) return;
        shift_bias = new Parameter(zeros(1, layer.OutChannels));
        register_parameter(nameof(shift_bias), shift_bias);
    }

    /// <inheritdoc/>
    /// <remarks>False: RLRR rewrites the weight itself.</remarks>
    public override bool HasInputBias => false;

    /// <inheritdoc/>
    public override Tensor Forward(Tensor input, AdaptableLayer layer)
    {
        using var scope = NewDisposeScope();
        var (weight, bias) = Rescaled(layer);
        return layer.ProjectWith(input, weight, bias).MoveToOuterDisposeScope();
    }

    internal override void MergeInto(AdaptableLayer layer)
    {
        var (weight, bias) = Rescaled(layer);
        layer.Rewrite(weight, bias);
    }

    /// <summary>W + W * (scale_line scale_col) and b + shift_bias, differentiable in the scales.</summary>
    private (Tensor Weight, Tensor? Bias) Rescaled(AdaptableLayer layer)
    {
        Tensor factors = _kernel == 1
            ? scale_line.view(layer.OutChannels, 1).mul(scale_col.view(1, layer.InChannels)).view(layer.weight.shape)
            : scale_line.view(layer.OutChannels, 1, _kernel, 1).mul(scale_col.view(1, layer.InChannels, 1, _kernel));
        Tensor weight = layer.weight.Plus(layer.weight.mul(factors));
        return (weight, layer.bias is null ? null : layer.bias.Plus(shift_bias!.view(-1)));
    }
}
