using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Torch;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Backbones;

/// <summary>Configuration of a <see cref="ConvNeXt"/> (timm's ConvNeXt arguments).</summary>
/// <param name="Depths">Blocks per stage.</param>
/// <param name="Dims">Channels per stage.</param>
/// <param name="NumClasses">Classes of the head (0: none).</param>
/// <param name="ImageSize">Input resolution (any multiple of 32 works; this sets the input spec).</param>
/// <param name="DropPathRate">Stochastic depth, linear over all blocks.</param>
/// <param name="LayerScaleInit">Initial value of each block's layer scale <c>gamma</c>.</param>
/// <param name="LayerNormEps">Epsilon of every LayerNorm.</param>
public sealed record ConvNeXtConfig(int[] Depths, int[] Dims, int NumClasses = 1000, int ImageSize = 224, double DropPathRate = 0,
    double LayerScaleInit = 1e-6, double LayerNormEps = 1e-6)
{
    /// <summary>Throws when the config cannot be built.</summary>
    public void Validate()
    {
        if (Depths.Length != Dims.Length || Depths.Length == 0) throw new ArgumentException("ConvNeXt needs as many stage depths as stage widths.");
        if (Depths.Any(d => d <= 0) || Dims.Any(d => d <= 0)) throw new ArgumentException("ConvNeXt depths and widths must be positive.");
        if (DropPathRate is < 0 or >= 1) throw new ArgumentException($"Drop-path rate must be in [0, 1), got {DropPathRate}.");
    }

    /// <summary>Value equality, comparing <see cref="Depths"/> and <see cref="Dims"/> element by element.</summary>
    public bool Equals(ConvNeXtConfig? other) =>
        other is not null && Depths.SequenceEqual(other.Depths) && Dims.SequenceEqual(other.Dims) && NumClasses == other.NumClasses
        && ImageSize == other.ImageSize && DropPathRate == other.DropPathRate && LayerScaleInit == other.LayerScaleInit && LayerNormEps == other.LayerNormEps;

    /// <inheritdoc/>
    public override int GetHashCode() => HashCode.Combine(Depths.Sum(), Dims.Sum(), NumClasses, ImageSize, DropPathRate);
}

/// <summary>
/// ConvNeXt (Liu et al. 2022) as timm's <c>convnext.py</c>: a 4x4 patchify stem, stages of blocks (depthwise 7x7 conv,
/// LayerNorm, MLP on channels-last tokens, layer scale, drop path, residual) joined by LayerNorm + 2x2 strided conv
/// downsampling, global average pooling and a normalised head. The adapter site is the MLP's fc1 (pwconv1), in front of
/// which a channel map folds exactly; the paper's placement in front of the depthwise conv is not offered, since a dense
/// channel map does not fold into a depthwise (per-channel) convolution.
/// </summary>
public sealed partial class ConvNeXt : Backbone
{
    private readonly Sequential stem;
    private readonly ModuleList<Stage> stages;
    private readonly ClassifierHead head;
    private readonly ImageInputSpec _input;

    /// <summary>Builds the modules of <paramref name="config"/> with timm's initialisation.</summary>
    public ConvNeXt(ConvNeXtConfig config, string architecture = "convnext", ImageInputSpec? input = null) : base(nameof(ConvNeXt))
    {
        config.Validate();
        Config = config;
        Architecture = architecture;
        _input = input ?? ImageInputSpec.ImageNet(config.ImageSize);
        stem = nn.Sequential(("0", nn.Conv2d(3, config.Dims[0], 4, stride: 4)), ("1", new LayerNorm2d(config.Dims[0], config.LayerNormEps)));
        var allRates = DropPath.LinearRates(config.Depths.Sum(), config.DropPathRate);
        int index = 0;
        var list = new List<Stage>();
        for (int s = 0; s < config.Depths.Length; s++)
        {
            var rates = allRates[index..(index + config.Depths[s])];
            list.Add(new Stage(s == 0 ? config.Dims[0] : config.Dims[s - 1], config.Dims[s], s > 0, rates, config));
            index += config.Depths[s];
        }
        stages = new ModuleList<Stage>([.. list]);
        head = new ClassifierHead(config.Dims[^1], config.LayerNormEps);
        RegisterComponents();
        InitWeights();
        ResetClassifier(config.NumClasses);
    }

    /// <summary>The configuration the modules were built from.</summary>
    public ConvNeXtConfig Config { get; private set; }

    /// <inheritdoc/>
    public override string Architecture { get; }

    /// <inheritdoc/>
    public override BackboneFamily Family => ConvNeXtFamily.Instance;

    /// <inheritdoc/>
    public override ImageInputSpec Input => _input;

    /// <inheritdoc/>
    public override BackboneDescriptor Describe() => BackboneDescriptor.Create(Architecture, Input, Family, Config);

    /// <inheritdoc/>
    public override int FeatureDim => Config.Dims[^1];

    /// <inheritdoc/>
    public override int NumClasses => Config.NumClasses;

    /// <inheritdoc/>
    public override string HeadName => "head.fc";

    /// <inheritdoc/>
    public override void ResetClassifier(int numClasses)
    {
        head.Fc = ReplaceHead(head.Fc, numClasses, head);
        Config = Config with { NumClasses = numClasses };
    }

    /// <inheritdoc/>
    /// <remarks>In front of every block's MLP (pwconv1); ConvNeXt has no attention.</remarks>
    public override IReadOnlyDictionary<AdapterPlacement, IReadOnlyList<string>> Placements { get; } =
        new Dictionary<AdapterPlacement, IReadOnlyList<string>> { [AdapterPlacement.Block] = ["mlp.fc1"] };

    /// <inheritdoc/>
    protected override IEnumerable<(string Name, nn.Module Block)> AdaptableBlocks() =>
        stages.SelectMany((stage, s) => stage.Blocks.Select((block, b) => ($"stages.{s}.blocks.{b}", (nn.Module)block)));

    /// <summary>Each stage's output, at strides 4, 8, 16, 32.</summary>
    public override IReadOnlyList<FeatureLevel> FeatureLevels =>
        [.. Config.Dims.Select((dim, s) => new FeatureLevel($"stages.{s}", dim, 4 << s))];

    /// <inheritdoc/>
    public override IReadOnlyList<Tensor> ForwardIntermediates(Tensor images)
    {
        using var scope = NewDisposeScope();
        CheckInput(images);
        Tensor x = stem.forward(images);
        var maps = new List<Tensor>();
        foreach (var stage in stages)
        {
            x = stage.forward(x);
            maps.Add(x);
        }
        foreach (var map in maps) map.MoveToOuterDisposeScope();
        return maps;
    }

    /// <inheritdoc/>
    public override Tensor ForwardFeatureMap(Tensor images)
    {
        using var scope = NewDisposeScope();
        return ForwardIntermediates(images)[^1].MoveToOuterDisposeScope();
    }

    /// <inheritdoc/>
    /// <remarks>The stem, each stage's downsampling and blocks, then global average pooling and the head's LayerNorm (timm's NormMlpClassifierHead without its fc).</remarks>
    public override IReadOnlyList<TrunkStep> Trunk()
    {
        var steps = new List<TrunkStep>
        {
            new("stem", ["stem"], false, images =>
            {
                CheckInput(images);
                return stem.forward(images);
            }),
        };
        for (int s = 0; s < stages.Count; s++)
        {
            if (stages[s].Downsample is { } downsample) steps.Add(new TrunkStep($"stages.{s}.downsample", [$"stages.{s}.downsample"], false, downsample.forward));
            steps.AddRange(stages[s].Blocks.Select((block, b) => new TrunkStep($"stages.{s}.blocks.{b}", [$"stages.{s}.blocks.{b}"], true, block.forward)));
        }
        steps.Add(new TrunkStep("pool", ["head.norm"], false, map =>
        {
            using var scope = NewDisposeScope();
            return head.Norm(map.mean([2, 3])).MoveToOuterDisposeScope();
        }));
        return steps;
    }

    /// <inheritdoc/>
    public override Tensor ForwardHead(Tensor features) => head.Fc is null ? features.alias() : head.Fc.forward(features);

    private void CheckInput(Tensor images)
    {
        if (images.dim() != 4 || images.shape[1] != 3 || images.shape[2] % 32 != 0 || images.shape[3] % 32 != 0)
            throw new ArgumentException($"{Architecture} expects images [B, 3, H, W] with H and W multiples of 32, got [{string.Join(", ", images.shape)}].");
    }

    // timm's _init_weights: truncated normal 0.02 for convs and linears, zero biases (layer scale and norms keep theirs).
    private void InitWeights() => Initialization.TruncatedNormal(this, convolutions: true);

    /// <summary>LayerNorm over the channels of an NCHW map (timm's LayerNorm2d), with nn.LayerNorm's parameter names.</summary>
    internal sealed class LayerNorm2d : nn.Module<Tensor, Tensor>
    {
        private readonly Parameter weight;
        private readonly Parameter bias;
        private readonly double _eps;

        /// <summary>A LayerNorm over <paramref name="channels"/>.</summary>
        public LayerNorm2d(int channels, double eps) : base(nameof(LayerNorm2d))
        {
            weight = new Parameter(ones(channels));
            bias = new Parameter(zeros(channels));
            _eps = eps;
            RegisterComponents();
        }

        /// <inheritdoc/>
        public override Tensor forward(Tensor x)
        {
            using var scope = NewDisposeScope();
            var normed = nn.functional.layer_norm(x.permute(0, 2, 3, 1), [x.shape[1]], weight, bias, _eps);
            return normed.permute(0, 3, 1, 2).MoveToOuterDisposeScope();
        }
    }

    /// <summary>Depthwise 7x7 conv, LayerNorm, MLP (channels last), layer scale, drop path, residual.</summary>
    internal sealed class Block : nn.Module<Tensor, Tensor>
    {
        private readonly Conv2d conv_dw;
        private readonly LayerNorm norm;
        private readonly Mlp mlp;
        private readonly Parameter gamma;
        private readonly DropPath drop_path;

        /// <summary>A block of <paramref name="dim"/> channels.</summary>
        public Block(int dim, double dropPath, ConvNeXtConfig config) : base(nameof(Block))
        {
            conv_dw = nn.Conv2d(dim, dim, 7, padding: 3, groups: dim);
            norm = nn.LayerNorm(dim, config.LayerNormEps);
            mlp = new Mlp(dim, 4 * dim);
            gamma = new Parameter(Scalars.With(config.LayerScaleInit, value => full(dim, value)));
            drop_path = new DropPath(dropPath);
            RegisterComponents();
        }

        /// <summary>The MLP, whose fc1 is the adapter site.</summary>
        public Mlp Mlp => mlp;

        /// <inheritdoc/>
        public override Tensor forward(Tensor x)
        {
            using var scope = NewDisposeScope();
            Tensor y = norm.forward(conv_dw.forward(x).permute(0, 2, 3, 1));
            y = (mlp.forward(y) * gamma).permute(0, 3, 1, 2);
            return x.Plus(drop_path.forward(y)).MoveToOuterDisposeScope();
        }
    }

    /// <summary>Downsampling (LayerNorm + 2x2 stride-2 conv) when the width or stride changes, then the blocks.</summary>
    internal sealed class Stage : nn.Module<Tensor, Tensor>
    {
        private readonly Sequential? downsample;
        private readonly Sequential blocks;

        /// <summary>A stage from <paramref name="input"/> to <paramref name="output"/> channels.</summary>
        public Stage(int input, int output, bool strided, double[] dropPaths, ConvNeXtConfig config) : base(nameof(Stage))
        {
            if (strided || input != output)
                downsample = nn.Sequential(("0", new LayerNorm2d(input, config.LayerNormEps)), ("1", nn.Conv2d(input, output, 2, stride: 2)));
            Blocks = [.. dropPaths.Select(rate => new Block(output, rate, config))];
            blocks = nn.Sequential(Blocks.Select((b, i) => (i.ToString(), (nn.Module<Tensor, Tensor>)b)));
            RegisterComponents();
        }

        /// <summary>The stage's blocks.</summary>
        public IReadOnlyList<Block> Blocks { get; }

        /// <summary>The downsampling in front of the blocks (none when neither width nor stride changes).</summary>
        public Sequential? Downsample => downsample;

        /// <inheritdoc/>
        public override Tensor forward(Tensor x)
        {
            using var scope = NewDisposeScope();
            if (downsample is not null) x = downsample.forward(x);
            return blocks.forward(x).MoveToOuterDisposeScope();
        }
    }

    /// <summary>timm's NormMlpClassifierHead without a hidden layer: a LayerNorm on the pooled features, then <c>fc</c>.</summary>
    internal sealed class ClassifierHead : nn.Module
    {
        private readonly LayerNorm norm;

        /// <summary>A head over <paramref name="features"/> channels.</summary>
        public ClassifierHead(int features, double eps) : base(nameof(ClassifierHead))
        {
            norm = nn.LayerNorm(features, eps);
            RegisterComponents();
        }

        /// <summary>The classifier (registered as <c>fc</c> by <see cref="Backbone"/>), or null.</summary>
        public Linear? Fc { get; set; }

        /// <summary>The head's LayerNorm over pooled features.</summary>
        public Tensor Norm(Tensor pooled) => norm.forward(pooled);
    }
}
