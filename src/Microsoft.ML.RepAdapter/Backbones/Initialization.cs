using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Torch;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Backbones;

/// <summary>The reference implementations' weight initialisations, for backbones built with random weights.</summary>
internal static class Initialization
{
    /// <summary>
    /// timm's <c>_init_weights</c>: truncated normal (std <paramref name="std"/>) for every linear weight, and every
    /// convolution's too when <paramref name="convolutions"/> (ConvNeXt); zero biases. Norms and other parameters keep theirs.
    /// </summary>
    public static void TruncatedNormal(nn.Module root, double std = 0.02, bool convolutions = false)
    {
        using var _ = no_grad();
        foreach (var (weight, bias) in Layers(root, convolutions))
        {
            Torch.TruncatedNormal.Fill(weight, std: std);
            if (bias is not null) nn.init.zeros_(bias);
        }
    }

    /// <summary>torchvision's ResNet: kaiming-normal (fan-out, ReLU) for every convolution; BatchNorm keeps 1 and 0.</summary>
    public static void KaimingNormalConvolutions(nn.Module root)
    {
        using var _ = no_grad();
        foreach (var (weight, bias) in Layers(root, convolutions: true).Where(l => l.Weight.dim() == 4))
        {
            nn.init.kaiming_normal_(weight, mode: nn.init.FanInOut.FanOut, nonlinearity: nn.init.NonlinearityType.ReLU);
            if (bias is not null) nn.init.zeros_(bias);
        }
    }

    private static IEnumerable<(Tensor Weight, Tensor? Bias)> Layers(nn.Module root, bool convolutions) =>
        root.named_modules().Select(m => m.module switch
        {
            Linear linear => (linear.weight, linear.bias),
            AdaptableLayer adaptable when convolutions || adaptable.weight.dim() == 2 => (adaptable.weight, adaptable.bias),
            Conv2d conv when convolutions => (conv.weight, conv.bias),
            _ => ((Tensor?)null, (Tensor?)null),
        }).Where(l => l.Item1 is not null).Select(l => (l.Item1!, l.Item2));
}
