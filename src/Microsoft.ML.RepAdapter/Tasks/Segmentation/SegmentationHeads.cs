using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Torch;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Segmentation;

/// <summary>The decode head on top of the backbone's features.</summary>
public enum SegmentationHeadKind
{
    /// <summary>
    /// SETR-naive: the last feature level through 1x1 conv, BatchNorm, ReLU and a 1x1 classifier, upsampled bilinearly.
    /// Light; coarse boundaries (stride 16 or 32).
    /// </summary>
    Naive,

    /// <summary>
    /// Every feature level: 1x1 lateral convs, FPN top-down fusion, a 3x3 conv per level, all upsampled to the finest
    /// level, concatenated, fused by a 1x1 conv and classified (UPerNet's FPN part; on a ViT, whose levels share one
    /// stride, SETR-MLA's cumulative fusion).
    /// </summary>
    MultiLevel,
}

/// <summary>Everything needed to rebuild a decode head: its kind, width, classes and the backbone levels it reads.</summary>
/// <param name="Kind">Which head.</param>
/// <param name="Channels">Width of the head's hidden layers.</param>
/// <param name="NumClasses">Classes it predicts.</param>
/// <param name="Levels">The backbone's feature levels (channels and strides) it reads.</param>
public sealed record SegmentationHeadConfig(SegmentationHeadKind Kind, int Channels, int NumClasses, IReadOnlyList<FeatureLevel> Levels)
{
    /// <summary>Builds the head (randomly initialised).</summary>
    public nn.Module<IReadOnlyList<Tensor>, Tensor> Build() => ModuleScopes.Unscoped<nn.Module<IReadOnlyList<Tensor>, Tensor>>(() => Kind switch
    {
        SegmentationHeadKind.Naive => new NaiveHead(this),
        SegmentationHeadKind.MultiLevel => new MultiLevelHead(this),
        _ => throw new ArgumentOutOfRangeException(nameof(Kind), Kind, "Unknown segmentation head."),
    });

    /// <summary>Value equality, comparing <see cref="Levels"/> element by element.</summary>
    public bool Equals(SegmentationHeadConfig? other) =>
        other is not null && Kind == other.Kind && Channels == other.Channels && NumClasses == other.NumClasses && Levels.SequenceEqual(other.Levels);

    /// <inheritdoc/>
    public override int GetHashCode() => HashCode.Combine(Kind, Channels, NumClasses, Levels.Count);

    /// <summary>1x1 conv, BatchNorm, ReLU (mmseg's ConvModule).</summary>
    internal static Sequential ConvBnRelu(int input, int output, int kernel = 1) =>
        nn.Sequential(("conv", nn.Conv2d(input, output, kernel, padding: kernel / 2, bias: false)), ("bn", nn.BatchNorm2d(output)), ("act", nn.ReLU()));

    /// <summary>The per-pixel classifier, initialised as mmseg's conv_seg (normal, std 0.01, zero bias).</summary>
    internal static Conv2d Classifier(int input, int classes)
    {
        var conv = nn.Conv2d(input, classes, 1);
        using (no_grad())
        {
            nn.init.normal_(conv.weight, 0, 0.01);
            nn.init.zeros_(conv.bias!);
        }
        return conv;
    }
}

/// <summary>SETR-naive: the last level, 1x1 conv + BN + ReLU, 1x1 classifier; logits at the level's stride.</summary>
internal sealed partial class NaiveHead : nn.Module<IReadOnlyList<Tensor>, Tensor>
{
    private readonly Sequential conv;
    private readonly Conv2d conv_seg;

    public NaiveHead(SegmentationHeadConfig config) : base(nameof(NaiveHead))
    {
        conv = SegmentationHeadConfig.ConvBnRelu(config.Levels[^1].Channels, config.Channels);
        conv_seg = SegmentationHeadConfig.Classifier(config.Channels, config.NumClasses);
        RegisterComponents();
    }

    public override Tensor forward(IReadOnlyList<Tensor> levels)
    {
        using var scope = NewDisposeScope();
        return conv_seg.forward(conv.forward(levels[^1])).MoveToOuterDisposeScope();
    }
}

/// <summary>FPN over every level, fused at the finest level's stride; logits at that stride.</summary>
internal sealed partial class MultiLevelHead : nn.Module<IReadOnlyList<Tensor>, Tensor>
{
    private readonly ModuleList<Sequential> lateral_convs;
    private readonly ModuleList<Sequential> fpn_convs;
    private readonly Sequential fpn_bottleneck;
    private readonly Conv2d conv_seg;

    public MultiLevelHead(SegmentationHeadConfig config) : base(nameof(MultiLevelHead))
    {
        int c = config.Channels;
        lateral_convs = new ModuleList<Sequential>([.. config.Levels.Select(level => SegmentationHeadConfig.ConvBnRelu(level.Channels, c))]);
        fpn_convs = new ModuleList<Sequential>([.. config.Levels.Select(_ => SegmentationHeadConfig.ConvBnRelu(c, c, kernel: 3))]);
        fpn_bottleneck = SegmentationHeadConfig.ConvBnRelu(c * config.Levels.Count, c);
        conv_seg = SegmentationHeadConfig.Classifier(c, config.NumClasses);
        RegisterComponents();
    }

    public override Tensor forward(IReadOnlyList<Tensor> levels)
    {
        using var scope = NewDisposeScope();
        var laterals = levels.Select((x, i) => lateral_convs[i].forward(x)).ToArray();
        // Top-down: each level adds the coarser level above it, resized to its own size.
        for (int i = laterals.Length - 2; i >= 0; i--)
            laterals[i] = laterals[i].Plus(Resize(laterals[i + 1], laterals[i]));
        var outputs = laterals.Select((x, i) => Resize(fpn_convs[i].forward(x), laterals[0])).ToArray();
        return conv_seg.forward(fpn_bottleneck.forward(cat(outputs, 1))).MoveToOuterDisposeScope();
    }

    private static Tensor Resize(Tensor x, Tensor like) =>
        x.shape[2] == like.shape[2] && x.shape[3] == like.shape[3]
            ? x
            : nn.functional.interpolate(x, [like.shape[2], like.shape[3]], mode: InterpolationMode.Bilinear, align_corners: false);
}
