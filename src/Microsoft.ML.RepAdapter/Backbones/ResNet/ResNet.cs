using Microsoft.ML.RepAdapter.Torch;
using Microsoft.ML.RepAdapter.Adapters;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Backbones;

/// <summary>Residual block kind: two 3x3 convs (ResNet-18/34) or 1x1-3x3-1x1 bottleneck (ResNet-50+).</summary>
public enum ResNetBlock
{
    /// <summary>Two 3x3 convolutions, expansion 1 (ResNet-18/34).</summary>
    Basic,
    /// <summary>1x1, 3x3, 1x1 convolutions, expansion 4 (ResNet-50 and deeper).</summary>
    Bottleneck,
}

/// <summary>
/// Configuration of a <see cref="ResNet"/> in torchvision's layout. <paramref name="Widths"/> are the stage widths
/// (64, 128, 256, 512 for the ImageNet models); smaller widths build the tiny test networks with the same code.
/// <paramref name="BatchNormFolded"/> builds the deployment form made by <see cref="ResNet.FoldBatchNorm"/>: convs with
/// biases and no BatchNorm layers.
/// <paramref name="HasInputOffset"/> adds a fixed per-pixel input offset (buffer <c>input_offset</c>,
/// [1, 3, ImageSize, ImageSize]) added to the normalised images: ML.NET's ResNet-18 subtracts a mean <i>image</i>, of
/// which <see cref="ImageInputSpec"/> can only express the per-channel averages.
/// </summary>
public sealed record ResNetConfig(
    ResNetBlock Block,
    int[] Layers,
    int[]? Widths = null,
    int NumClasses = 1000,
    int ImageSize = 224,
    bool HasInputOffset = false,
    bool BatchNormFolded = false)
{
    /// <summary>The four stage widths: <see cref="Widths"/>, or torchvision's 64, 128, 256, 512.</summary>
    public int[] StageWidths => Widths ?? [64, 128, 256, 512];
    /// <summary>Output channels of a block per stage width: 1 for <see cref="ResNetBlock.Basic"/>, 4 for <see cref="ResNetBlock.Bottleneck"/>.</summary>
    public int Expansion => Block == ResNetBlock.Basic ? 1 : 4;
    /// <summary>Width of the pooled features: the last stage's width times <see cref="Expansion"/>.</summary>
    public int FeatureDim => StageWidths[^1] * Expansion;

    /// <summary>Throws <see cref="ArgumentException"/> unless there are four stages with positive layer counts and widths.</summary>
    public void Validate()
    {
        if (Layers.Length != 4 || StageWidths.Length != 4) throw new ArgumentException("A ResNet has four stages: give four layer counts and four widths.");
        if (Layers.Any(n => n <= 0) || StageWidths.Any(w => w <= 0)) throw new ArgumentException("ResNet layer counts and widths must be positive.");
    }

    /// <summary>Value equality, comparing the layer counts and stage widths element by element.</summary>
    public bool Equals(ResNetConfig? other) =>
        other is not null && Block == other.Block && Layers.SequenceEqual(other.Layers) && StageWidths.SequenceEqual(other.StageWidths)
        && NumClasses == other.NumClasses && ImageSize == other.ImageSize && HasInputOffset == other.HasInputOffset
        && BatchNormFolded == other.BatchNormFolded;

    /// <inheritdoc/>
    public override int GetHashCode() => HashCode.Combine(Block, Layers.Sum(), StageWidths.Sum(), NumClasses, ImageSize, HasInputOffset, BatchNormFolded);
}

/// <summary>
/// ResNet (He et al. 2016) with torchvision's parameter names (torchvision v1.5: the stride sits on the 3x3 conv).
/// Adapter sites: the first conv of every residual block, fed by the block input (the shortcut keeps the raw input,
/// as in ViT). For a 3x3 zero-padded conv only a bias-free linear map folds exactly (the padding would not see the
/// bias), so ResNet adapters are bias-free; torchvision's convs have no bias to absorb one anyway.
/// </summary>
public sealed partial class ResNet : Backbone
{
    private readonly Conv2d conv1;
    private nn.Module<Tensor, Tensor> bn1;
    private readonly ReLU relu;
    private readonly MaxPool2d maxpool;
    private readonly Sequential layer1, layer2, layer3, layer4;
    private Linear? fc;
    private readonly Tensor? input_offset;
    private readonly ImageInputSpec _input;

    /// <summary>
    /// Builds the network <paramref name="config"/> describes with torchvision's initialisation (load weights separately).
    /// Throws <see cref="ArgumentException"/> for an invalid config.
    /// </summary>
    /// <param name="config">Block kind, layer counts, widths, head and input size.</param>
    /// <param name="architecture">The name reported as <see cref="Architecture"/>, e.g. <c>resnet50</c>.</param>
    /// <param name="input">Input normalisation; ImageNet's at <see cref="ResNetConfig.ImageSize"/> by default.</param>
    public ResNet(ResNetConfig config, string architecture = "resnet", ImageInputSpec? input = null) : base(nameof(ResNet))
    {
        config.Validate();
        Config = config;
        Architecture = architecture;
        _input = input ?? ImageInputSpec.ImageNet(config.ImageSize);
        int[] widths = config.StageWidths;
        int inplanes = widths[0];
        bool folded = config.BatchNormFolded;
        conv1 = nn.Conv2d(3, inplanes, 7, stride: 2, padding: 3, bias: folded);
        bn1 = Norm(inplanes, folded);
        relu = nn.ReLU();
        maxpool = nn.MaxPool2d(3, stride: 2, padding: 1);
        var stages = new Sequential[4];
        for (int s = 0; s < 4; s++)
        {
            var stageBlocks = new List<(string, nn.Module<Tensor, Tensor>)>();
            for (int i = 0; i < config.Layers[s]; i++)
            {
                int stride = s > 0 && i == 0 ? 2 : 1;
                ResidualBlock block = config.Block == ResNetBlock.Basic
                    ? new BasicBlock(inplanes, widths[s], stride, folded)
                    : new Bottleneck(inplanes, widths[s], stride, folded);
                inplanes = widths[s] * config.Expansion;
                stageBlocks.Add((i.ToString(), block));
            }
            stages[s] = nn.Sequential(stageBlocks);
        }
        (layer1, layer2, layer3, layer4) = (stages[0], stages[1], stages[2], stages[3]);
        if (config.HasInputOffset) input_offset = zeros(1, 3, config.ImageSize, config.ImageSize);
        RegisterComponents();
        Initialization.KaimingNormalConvolutions(this);
        ResetClassifier(config.NumClasses);
    }

    /// <summary>The current configuration (it follows <see cref="ResetClassifier"/> and <see cref="FoldBatchNorm"/>).</summary>
    public ResNetConfig Config { get; private set; }

    /// <inheritdoc/>
    public override string Architecture { get; }

    /// <inheritdoc/>
    public override ImageInputSpec Input => _input;

    /// <inheritdoc/>
    public override BackboneFamily Family => ResNetFamily.Instance;

    /// <inheritdoc/>
    public override BackboneDescriptor Describe() => BackboneDescriptor.Create(Architecture, Input, Family, Config);

    /// <inheritdoc/>
    public override int FeatureDim => Config.FeatureDim;

    /// <inheritdoc/>
    public override int NumClasses => Config.NumClasses;

    /// <inheritdoc/>
    /// <remarks>torchvision's <c>fc</c>.</remarks>
    public override string HeadName => "fc";

    /// <inheritdoc/>
    public override void ResetClassifier(int numClasses)
    {
        fc = ReplaceHead(fc, numClasses);
        Config = Config with { NumClasses = numClasses };
    }

    /// <inheritdoc/>
    /// <remarks>The first conv of every residual block (<c>layerN.i.conv1</c>); ResNet has no attention.</remarks>
    public override IReadOnlyDictionary<AdapterPlacement, IReadOnlyList<string>> Placements { get; } =
        new Dictionary<AdapterPlacement, IReadOnlyList<string>> { [AdapterPlacement.Block] = ["conv1"] };

    /// <inheritdoc/>
    protected override IEnumerable<(string Name, nn.Module Block)> AdaptableBlocks() =>
        Stages().SelectMany(stage => stage.Stage.named_children().Select(block => ($"{stage.Name}.{block.name}", block.module)));

    /// <summary>
    /// Sets training or eval mode; in training mode with <see cref="Backbone.FreezeNormStatistics"/> the BatchNorm layers
    /// stay in eval mode, so their running statistics are not updated.
    /// </summary>
    public override void train(bool train = true)
    {
        base.train(train);
        // A frozen backbone keeps its pretrained BatchNorm statistics.
        if (train && FreezeNormStatistics)
        {
            foreach (var module in modules().OfType<BatchNorm2d>()) module.eval();
        }
    }

    /// <summary>
    /// Folds every eval-mode BatchNorm into the conv before it (W' = W g / s, b' = (b - mean) g / s + beta, with
    /// s = sqrt(running_var + eps)) and removes it: the deployment form, one conv per conv+BN pair, same outputs in eval
    /// mode. Adapters merge into the folded convs as before. Use it on a trained, frozen model: without BatchNorm the
    /// network no longer normalises batches in training.
    /// </summary>
    public void FoldBatchNorm()
    {
        if (Config.BatchNormFolded) return;
        bn1 = FoldInto(this, "bn1", bn1, conv1);
        foreach (var stage in new[] { layer1, layer2, layer3, layer4 })
        {
            foreach (var (_, block) in stage.named_children()) ((ResidualBlock)block).FoldBatchNorm();
        }
        Config = Config with { BatchNormFolded = true };
    }

    private static nn.Module<Tensor, Tensor> Norm(int channels, bool folded) => folded ? nn.Identity() : nn.BatchNorm2d(channels);

    /// <summary>
    /// Folds <paramref name="norm"/>, registered as <paramref name="name"/> on <paramref name="owner"/>, into
    /// <paramref name="conv"/> and registers an identity in its place, which it returns.
    /// </summary>
    private static nn.Module<Tensor, Tensor> FoldInto(nn.Module owner, string name, nn.Module<Tensor, Tensor> norm, nn.Module conv)
    {
        if (norm is not BatchNorm2d bn) return norm;
        FoldIntoConv(bn, conv);
        var identity = ModuleScopes.Unscoped(() => nn.Identity());
        owner.register_module(name, null!);
        owner.register_module(name, identity);
        return identity;
    }

    private static void FoldIntoConv(BatchNorm2d bn, nn.Module conv)
    {
        (Parameter weight, Parameter? bias, Action<Tensor> addBias) = conv switch
        {
            Conv2d c => (c.weight, c.bias, (Action<Tensor>)(b => c.bias = ModuleScopes.Unscoped(() => new Parameter(b.clone(), c.weight.requires_grad)))),
            AdaptableConv2d a => (a.weight, a.bias, a.AddBias),
            _ => throw new InvalidOperationException($"Cannot fold a BatchNorm into a {conv.GetType().Name}."),
        };
        using (var scope = NewDisposeScope())
        using (no_grad())
        {
            var (foldedWeight, foldedBias) = BatchNormFolding.Fold(weight, bias, bn);
            weight.copy_(foldedWeight);
            if (bias is null) addBias(foldedBias);
            else bias.copy_(foldedBias);
        }
        bn.Dispose();
    }

    /// <inheritdoc/>
    /// <remarks>The last stage's output, at stride 32.</remarks>
    public override Tensor ForwardFeatureMap(Tensor images)
    {
        using var scope = NewDisposeScope();
        return ForwardIntermediates(images)[^1].MoveToOuterDisposeScope();
    }

    /// <summary>The outputs of the four stages, at strides 4, 8, 16 and 32 (torchvision's layer1..layer4).</summary>
    public override IReadOnlyList<FeatureLevel> FeatureLevels =>
        [.. Config.StageWidths.Select((width, s) => new FeatureLevel($"layer{s + 1}", width * Config.Expansion, 4 << s))];

    /// <inheritdoc/>
    public override IReadOnlyList<Tensor> ForwardIntermediates(Tensor images)
    {
        using var scope = NewDisposeScope();
        Tensor x = Stem(images);
        var maps = new List<Tensor>();
        foreach (var (_, stage) in Stages())
        {
            x = stage.forward(x);
            maps.Add(x);
        }
        foreach (var map in maps) map.MoveToOuterDisposeScope();
        return maps;
    }

    /// <inheritdoc/>
    /// <remarks>The stem (conv, BatchNorm, ReLU, max pool), every residual block, then global average pooling.</remarks>
    public override IReadOnlyList<TrunkStep> Trunk() =>
    [
        new("stem", ["conv1", "bn1"], false, Stem),
        .. Stages().SelectMany(stage => stage.Stage.named_children().Select(child =>
            new TrunkStep($"{stage.Name}.{child.name}", [$"{stage.Name}.{child.name}"], true, ((ResidualBlock)child.module).forward))),
        new("pool", [], false, map => map.mean([2, 3])),
    ];

    private IEnumerable<(string Name, Sequential Stage)> Stages() => [("layer1", layer1), ("layer2", layer2), ("layer3", layer3), ("layer4", layer4)];

    private Tensor Stem(Tensor images)
    {
        using var scope = NewDisposeScope();
        CheckInput(images);
        if (input_offset is not null) images = images.Plus(input_offset);
        return maxpool.forward(relu.forward(bn1.forward(conv1.forward(images)))).MoveToOuterDisposeScope();
    }

    /// <inheritdoc/>
    public override Tensor ForwardHead(Tensor features) => fc is null ? features.alias() : fc.forward(features);

    private void CheckInput(Tensor images)
    {
        if (images.dim() != 4 || images.shape[1] != 3)
            throw new ArgumentException($"ResNet expects images [B, 3, H, W], got [{string.Join(", ", images.shape)}].");
        if (input_offset is not null && (images.shape[2] != Config.ImageSize || images.shape[3] != Config.ImageSize))
            throw new ArgumentException(
                $"{Architecture} adds a fixed {Config.ImageSize}x{Config.ImageSize} input offset: expects images [B, 3, {Config.ImageSize}, {Config.ImageSize}], got [{string.Join(", ", images.shape)}].");
    }

    /// <summary>A residual block whose first conv is an adapter site.</summary>
    internal abstract partial class ResidualBlock(string name) : nn.Module<Tensor, Tensor>(name)
    {
        /// <summary>The block's stride (on its 3x3 conv and its downsample).</summary>
        public long Stride { get; protected init; } = 1;

        public abstract AdaptableConv2d FirstConv { get; }

        internal abstract void FoldBatchNorm();

        protected static Sequential? Downsample(int inplanes, int outplanes, int stride, bool folded) =>
            stride == 1 && inplanes == outplanes
                ? null
                : nn.Sequential(("0", nn.Conv2d(inplanes, outplanes, 1, stride: stride, bias: folded)), ("1", Norm(outplanes, folded)));

        /// <summary>The shortcut's conv + BN folded into one conv (rebuilt, since a Sequential's layers are fixed).</summary>
        protected Sequential? FoldDownsample(Sequential? downsample)
        {
            if (downsample is null) return null;
            var layers = downsample.named_children().ToDictionary(c => c.name, c => c.module);
            var conv = (Conv2d)layers["0"];
            if (layers["1"] is not BatchNorm2d bn) return downsample;
            FoldIntoConv(bn, conv);
            var folded = ModuleScopes.Unscoped(() => nn.Sequential(("0", conv), ("1", nn.Identity())));
            register_module("downsample", null!);
            register_module("downsample", folded);
            return folded;
        }
    }

    /// <summary>torchvision's BasicBlock: conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU.</summary>
    internal sealed partial class BasicBlock : ResidualBlock
    {
        private readonly AdaptableConv2d conv1;
        private nn.Module<Tensor, Tensor> bn1;
        private readonly Conv2d conv2;
        private nn.Module<Tensor, Tensor> bn2;
        private readonly ReLU relu;
        private Sequential? downsample;

        public BasicBlock(int inplanes, int planes, int stride, bool folded = false) : base(nameof(BasicBlock))
        {
            Stride = stride;
            conv1 = new AdaptableConv2d(inplanes, planes, 3, stride, padding: 1, hasBias: folded);
            bn1 = Norm(planes, folded);
            conv2 = nn.Conv2d(planes, planes, 3, padding: 1, bias: folded);
            bn2 = Norm(planes, folded);
            relu = nn.ReLU();
            downsample = Downsample(inplanes, planes, stride, folded);
            RegisterComponents();
        }

        public override AdaptableConv2d FirstConv => conv1;

        internal override void FoldBatchNorm()
        {
            bn1 = FoldInto(this, "bn1", bn1, conv1);
            bn2 = FoldInto(this, "bn2", bn2, conv2);
            downsample = FoldDownsample(downsample);
        }

        public override Tensor forward(Tensor x)
        {
            using var scope = NewDisposeScope();
            Tensor y = relu.forward(bn1.forward(conv1.forward(x)));
            y = bn2.forward(conv2.forward(y));
            Tensor shortcut = downsample is null ? x : downsample.forward(x);
            return relu.forward(y.Plus(shortcut)).MoveToOuterDisposeScope();
        }
    }

    /// <summary>torchvision's Bottleneck (v1.5): conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1-BN plus the shortcut, then ReLU.</summary>
    internal sealed partial class Bottleneck : ResidualBlock
    {
        private readonly AdaptableConv2d conv1;
        private nn.Module<Tensor, Tensor> bn1;
        private readonly Conv2d conv2;
        private nn.Module<Tensor, Tensor> bn2;
        private readonly Conv2d conv3;
        private nn.Module<Tensor, Tensor> bn3;
        private readonly ReLU relu;
        private Sequential? downsample;

        public Bottleneck(int inplanes, int planes, int stride, bool folded = false) : base(nameof(Bottleneck))
        {
            Stride = stride;
            conv1 = new AdaptableConv2d(inplanes, planes, 1, hasBias: folded);
            bn1 = Norm(planes, folded);
            conv2 = nn.Conv2d(planes, planes, 3, stride: stride, padding: 1, bias: folded);
            bn2 = Norm(planes, folded);
            conv3 = nn.Conv2d(planes, planes * 4, 1, bias: folded);
            bn3 = Norm(planes * 4, folded);
            relu = nn.ReLU();
            downsample = Downsample(inplanes, planes * 4, stride, folded);
            RegisterComponents();
        }

        public override AdaptableConv2d FirstConv => conv1;

        internal override void FoldBatchNorm()
        {
            bn1 = FoldInto(this, "bn1", bn1, conv1);
            bn2 = FoldInto(this, "bn2", bn2, conv2);
            bn3 = FoldInto(this, "bn3", bn3, conv3);
            downsample = FoldDownsample(downsample);
        }

        public override Tensor forward(Tensor x)
        {
            using var scope = NewDisposeScope();
            Tensor y = relu.forward(bn1.forward(conv1.forward(x)));
            y = relu.forward(bn2.forward(conv2.forward(y)));
            y = bn3.forward(conv3.forward(y));
            Tensor shortcut = downsample is null ? x : downsample.forward(x);
            return relu.forward(y.Plus(shortcut)).MoveToOuterDisposeScope();
        }
    }
}
