using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Torch;

/// <summary>An eval-mode BatchNorm2d after a convolution, as the convolution's own weight and bias.</summary>
internal static class BatchNormFolding
{
    /// <summary>
    /// W g / s and (b - mean) g / s + beta, s = sqrt(running_var + eps): new tensors (in the caller's dispose scope);
    /// neither the convolution's tensors nor <paramref name="bn"/> are changed.
    /// </summary>
    public static (Tensor Weight, Tensor Bias) Fold(Tensor weight, Tensor? bias, BatchNorm2d bn)
    {
        using var _ = no_grad();
        var scale = bn.weight!.detach() / bn.running_var!.detach().Plus(bn.eps).sqrt();
        var foldedBias = (((bias?.detach() ?? zeros_like(scale)) - bn.running_mean!.detach()) * scale).Plus(bn.bias!.detach());
        return (weight.detach() * scale.view(-1, 1, 1, 1), foldedBias);
    }
}
