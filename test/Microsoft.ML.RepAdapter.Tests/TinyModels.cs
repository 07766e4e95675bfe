using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Tests;

/// <summary>Tiny backbones built by the same code as the full-size ones, and random weights that make logits order 1.</summary>
internal static class TinyModels
{
    public static readonly VisionTransformerConfig VitConfig = new(ImageSize: 16, PatchSize: 4, EmbedDim: 32, Depth: 2, NumHeads: 2, NumClasses: 5);
    public static readonly ResNetConfig BasicResNetConfig = new(ResNetBlock.Basic, [1, 1, 1, 1], [8, 16, 32, 64], NumClasses: 5, ImageSize: 32);
    public static readonly ResNetConfig BottleneckResNetConfig = new(ResNetBlock.Bottleneck, [1, 1, 1, 1], [4, 8, 16, 32], NumClasses: 5, ImageSize: 32);
    // The sizes of the timm fixtures' Swin and ConvNeXt (test/fixtures/make_timm_fixtures.py).
    public static readonly SwinConfig SwinConfig = new([2, 2, 2, 2], [2, 2, 4, 4], EmbedDim: 8, WindowSize: 4, ImageSize: 32, NumClasses: 5);
    public static readonly ConvNeXtConfig ConvNeXtConfig = new([1, 1, 2, 1], [8, 16, 32, 64], NumClasses: 5, ImageSize: 32);
    public static readonly VisionTransformerConfig ClipConfig = new(ImageSize: 16, PatchSize: 4, EmbedDim: 32, Depth: 2, NumHeads: 2, NumClasses: 0,
        LayerNormEps: 1e-5, PreNorm: true, Activation: MlpActivation.QuickGelu, ImageProjection: 16);

    /// <summary>Every kind <see cref="Create"/> builds: one per family, and both ResNet block types.</summary>
    public static readonly string[] Kinds = ["vit", "resnet_basic", "resnet_bottleneck", "swin", "convnext", "clip"];

    /// <summary><see cref="Kinds"/> as DynamicData rows.</summary>
    public static IEnumerable<object[]> KindRows => Kinds.Select(kind => new object[] { kind });

    public static Backbone Create(string kind, int seed = 0)
    {
        torch.manual_seed(seed);
        return kind switch
        {
            "vit" => new VisionTransformer(VitConfig, "tiny_vit"),
            "resnet_basic" => new ResNet(BasicResNetConfig, "tiny_resnet_basic"),
            "resnet_bottleneck" => new ResNet(BottleneckResNetConfig, "tiny_resnet_bottleneck"),
            "swin" => new SwinTransformer(SwinConfig, "tiny_swin"),
            "convnext" => new ConvNeXt(ConvNeXtConfig, "tiny_convnext"),
            "clip" => new VisionTransformer(ClipConfig, "tiny_clip", ClipFamily.ClipInput(16)),
            _ => throw new ArgumentException(kind),
        };
    }

    public static Tensor Images(Backbone backbone, int batch = 2, int seed = 1, int? size = null)
    {
        var generator = new Generator((ulong)seed);
        size ??= backbone.Input.ImageSize;
        return randn([batch, 3, size.Value, size.Value], generator: generator);
    }

    /// <summary>
    /// Random, non-trivial values for every parameter and statistic, adapters included (so W_B is non-zero): fan-in
    /// scaled weights, norm scales near 1, noisy biases and BatchNorm statistics.
    /// </summary>
    public static void Randomize(nn.Module module, int seed, double adapterStd = 0.1)
    {
        var generator = new Generator((ulong)seed);
        using var _ = no_grad();
        foreach (var (name, p) in module.named_parameters())
        {
            if (p.dim() == 1 && name.EndsWith(".weight")) p.copy_(1 + 0.1 * randn(p.shape, generator: generator));
            else if (p.dim() <= 1) p.copy_(0.1 * randn(p.shape, generator: generator));
            else if (BackboneAdapters.IsAdapterParameter(name)) p.copy_(adapterStd * randn(p.shape, generator: generator));
            else
            {
                double fanIn = p.numel() / p.shape[0];
                if (name.Contains("pos_embed") || name.Contains("cls_token")) fanIn = 25;
                p.copy_(randn(p.shape, generator: generator) / Math.Sqrt(fanIn));
            }
        }
        foreach (var (name, b) in module.named_buffers())
        {
            if (name.EndsWith("running_mean")) b.copy_(0.1 * randn(b.shape, generator: generator));
            else if (name.EndsWith("running_var")) b.copy_(0.5 + rand(b.shape, generator: generator));
        }
    }

    public static float MaxAbsDiff(Tensor a, Tensor b) => (a - b).abs().max().item<float>();

    public static float MaxAbs(Tensor a) => a.abs().max().item<float>();
}
