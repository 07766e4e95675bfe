using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Torch;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Backbones;

/// <summary>Configuration of a <see cref="SwinTransformer"/> (timm's SwinTransformer arguments).</summary>
/// <param name="Depths">Blocks per stage.</param>
/// <param name="NumHeads">Attention heads per stage.</param>
/// <param name="EmbedDim">Channels of the first stage; each later stage doubles them.</param>
/// <param name="WindowSize">Side of the attention windows (smaller at stages whose maps are smaller).</param>
/// <param name="PatchSize">Side of the patches of the stem.</param>
/// <param name="ImageSize">Input resolution.</param>
/// <param name="MlpRatio">MLP hidden width over the channels.</param>
/// <param name="QkvBias">Whether qkv has a bias.</param>
/// <param name="NumClasses">Classes of the head (0: none).</param>
/// <param name="DropPathRate">Stochastic depth, linear over all blocks.</param>
public sealed record SwinConfig(int[] Depths, int[] NumHeads, int EmbedDim = 96, int WindowSize = 7, int PatchSize = 4, int ImageSize = 224,
    double MlpRatio = 4, bool QkvBias = true, int NumClasses = 1000, double DropPathRate = 0)
{
    /// <summary>Channels of stage <paramref name="stage"/>.</summary>
    public int Dim(int stage) => EmbedDim << stage;

    /// <summary>Side of stage <paramref name="stage"/>'s token map.</summary>
    public int Resolution(int stage) => ImageSize / PatchSize >> stage;

    /// <summary>Throws when the config cannot be built.</summary>
    public void Validate()
    {
        if (Depths.Length != NumHeads.Length || Depths.Length == 0) throw new ArgumentException("Swin needs as many head counts as stage depths.");
        if (Depths.Any(d => d <= 0) || NumHeads.Any(h => h <= 0)) throw new ArgumentException("Swin depths and head counts must be positive.");
        if (ImageSize % (PatchSize << (Depths.Length - 1)) != 0)
            throw new ArgumentException($"Image size {ImageSize} must be a multiple of the patch size times the last stage's downsampling ({PatchSize << (Depths.Length - 1)}).");
        for (int s = 0; s < Depths.Length; s++)
        {
            if (Dim(s) % NumHeads[s] != 0) throw new ArgumentException($"Stage {s}'s {Dim(s)} channels are not divisible by its {NumHeads[s]} heads.");
            int window = Math.Min(WindowSize, Resolution(s));
            if (Resolution(s) % window != 0)
                throw new ArgumentException($"Stage {s}'s {Resolution(s)}x{Resolution(s)} map is not a whole number of {window}x{window} windows at image size {ImageSize}: "
                    + $"set ImageSize to one that is (timm's Swin presets use {WindowSize * (PatchSize << (Depths.Length - 1))} px for window {WindowSize}).");
        }
        if (DropPathRate is < 0 or >= 1) throw new ArgumentException($"Drop-path rate must be in [0, 1), got {DropPathRate}.");
    }

    /// <summary>Value equality, comparing <see cref="Depths"/> and <see cref="NumHeads"/> element by element.</summary>
    public bool Equals(SwinConfig? other) =>
        other is not null && Depths.SequenceEqual(other.Depths) && NumHeads.SequenceEqual(other.NumHeads) && EmbedDim == other.EmbedDim
        && WindowSize == other.WindowSize && PatchSize == other.PatchSize && ImageSize == other.ImageSize && MlpRatio == other.MlpRatio
        && QkvBias == other.QkvBias && NumClasses == other.NumClasses && DropPathRate == other.DropPathRate;

    /// <inheritdoc/>
    public override int GetHashCode() => HashCode.Combine(Depths.Sum(), NumHeads.Sum(), EmbedDim, WindowSize, ImageSize, NumClasses);
}

/// <summary>
/// Swin Transformer (Liu et al. 2021) as timm's <c>swin_transformer.py</c>: a patch embedding with LayerNorm, stages of
/// window-attention blocks (every second one on windows shifted by half a window, with the attention mask of the
/// cyclic shift) with a learned relative position bias per window, patch merging at the start of every stage after the
/// first, a final LayerNorm, average pooling and <c>head.fc</c>. Tokens stay NHWC. The adapter sites are each block's
/// attention qkv and MLP fc1: an adapter is a per-token map, so it commutes with the window partition and shift.
/// </summary>
public sealed partial class SwinTransformer : Backbone
{
    private readonly PatchEmbed patch_embed;
    private readonly ModuleList<Stage> layers;
    private readonly LayerNorm norm;
    private readonly HeadModule head;
    private readonly ImageInputSpec _input;

    /// <summary>Builds the modules of <paramref name="config"/> with timm's initialisation.</summary>
    public SwinTransformer(SwinConfig config, string architecture = "swin", ImageInputSpec? input = null) : base(nameof(SwinTransformer))
    {
        config.Validate();
        Config = config;
        Architecture = architecture;
        _input = input ?? ImageInputSpec.ImageNet(config.ImageSize);
        patch_embed = new PatchEmbed(config.PatchSize, config.EmbedDim);
        var allRates = DropPath.LinearRates(config.Depths.Sum(), config.DropPathRate);
        int index = 0;
        var stages = new List<Stage>();
        for (int s = 0; s < config.Depths.Length; s++)
        {
            var rates = allRates[index..(index + config.Depths[s])];
            stages.Add(new Stage(config, s, rates));
            index += config.Depths[s];
        }
        layers = new ModuleList<Stage>([.. stages]);
        norm = nn.LayerNorm(config.Dim(config.Depths.Length - 1));
        head = new HeadModule();
        RegisterComponents();
        InitWeights();
        ResetClassifier(config.NumClasses);
    }

    /// <summary>The configuration the modules were built from.</summary>
    public SwinConfig Config { get; private set; }

    /// <inheritdoc/>
    public override string Architecture { get; }

    /// <inheritdoc/>
    public override BackboneFamily Family => SwinFamily.Instance;

    /// <inheritdoc/>
    public override ImageInputSpec Input => _input;

    /// <inheritdoc/>
    public override BackboneDescriptor Describe() => BackboneDescriptor.Create(Architecture, Input, Family, Config);

    /// <inheritdoc/>
    public override int FeatureDim => Config.Dim(Config.Depths.Length - 1);

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
    /// <remarks>qkv for <see cref="AdapterPlacement.Attention"/>; qkv and fc1 for <see cref="AdapterPlacement.Block"/>.</remarks>
    public override IReadOnlyDictionary<AdapterPlacement, IReadOnlyList<string>> Placements { get; } = new Dictionary<AdapterPlacement, IReadOnlyList<string>>
    {
        [AdapterPlacement.Block] = ["attn.qkv", "mlp.fc1"],
        [AdapterPlacement.Attention] = ["attn.qkv"],
    };

    /// <inheritdoc/>
    protected override IEnumerable<(string Name, nn.Module Block)> AdaptableBlocks() =>
        layers.SelectMany((stage, s) => stage.Blocks.Select((block, b) => ($"layers.{s}.blocks.{b}", (nn.Module)block)));

    /// <summary>Each stage's output, at strides 4, 8, 16, 32 (for the default patch size).</summary>
    public override IReadOnlyList<FeatureLevel> FeatureLevels =>
        [.. Config.Depths.Select((_, s) => new FeatureLevel($"layers.{s}", Config.Dim(s), Config.PatchSize << s))];

    /// <inheritdoc/>
    public override IReadOnlyList<Tensor> ForwardIntermediates(Tensor images)
    {
        using var scope = NewDisposeScope();
        var maps = Stages(images).Select(x => x.permute(0, 3, 1, 2)).ToList();
        foreach (var map in maps) map.MoveToOuterDisposeScope();
        return maps;
    }

    /// <summary>The final stage, through the final norm, as a [B, C, h, w] map.</summary>
    public override Tensor ForwardFeatureMap(Tensor images)
    {
        using var scope = NewDisposeScope();
        return norm.forward(Stages(images)[^1]).permute(0, 3, 1, 2).MoveToOuterDisposeScope();
    }

    /// <inheritdoc/>
    /// <remarks>The patch embedding, each stage's patch merging and blocks, then the average of the final-norm tokens (timm's ClassifierHead pooling).</remarks>
    public override IReadOnlyList<TrunkStep> Trunk()
    {
        var steps = new List<TrunkStep>
        {
            new("embed", ["patch_embed"], false, images =>
            {
                CheckInput(images);
                return patch_embed.forward(images);
            }),
        };
        for (int s = 0; s < layers.Count; s++)
        {
            if (layers[s].Downsample is { } downsample) steps.Add(new TrunkStep($"layers.{s}.downsample", [$"layers.{s}.downsample"], false, downsample.forward));
            steps.AddRange(layers[s].Blocks.Select((block, b) => new TrunkStep($"layers.{s}.blocks.{b}", [$"layers.{s}.blocks.{b}"], true, block.forward)));
        }
        steps.Add(new TrunkStep("pool", ["norm"], false, x => norm.forward(x).mean([1, 2])));
        return steps;
    }

    /// <inheritdoc/>
    public override Tensor ForwardHead(Tensor features) => head.Fc is null ? features.alias() : head.Fc.forward(features);

    /// <summary>The stages' NHWC outputs (in the caller's dispose scope).</summary>
    private List<Tensor> Stages(Tensor images)
    {
        CheckInput(images);
        Tensor x = patch_embed.forward(images);
        var outputs = new List<Tensor>();
        foreach (var stage in layers)
        {
            x = stage.forward(x);
            outputs.Add(x);
        }
        return outputs;
    }

    private void CheckInput(Tensor images)
    {
        if (images.dim() != 4 || images.shape[1] != 3 || images.shape[2] != Config.ImageSize || images.shape[3] != Config.ImageSize)
            throw new ArgumentException($"{Architecture} expects images [B, 3, {Config.ImageSize}, {Config.ImageSize}], got [{string.Join(", ", images.shape)}].");
    }

    private void InitWeights()
    {
        // timm's init: truncated normal 0.02 for linears and the relative position bias tables, zero biases.
        using (no_grad())
        {
            foreach (var (name, parameter) in named_parameters())
            {
                if (name.EndsWith("relative_position_bias_table", StringComparison.Ordinal)) TruncatedNormal.Fill(parameter, std: 0.02);
            }
        }
        Initialization.TruncatedNormal(this);
    }

    /// <summary>Non-overlapping patches through a conv, then LayerNorm; NHWC tokens.</summary>
    internal sealed class PatchEmbed : nn.Module<Tensor, Tensor>
    {
        private readonly Conv2d proj;
        private readonly LayerNorm norm;

        /// <summary>Patches of <paramref name="patchSize"/> to <paramref name="dim"/> channels.</summary>
        public PatchEmbed(int patchSize, int dim) : base(nameof(PatchEmbed))
        {
            proj = nn.Conv2d(3, dim, patchSize, stride: patchSize);
            norm = nn.LayerNorm(dim);
            RegisterComponents();
        }

        /// <inheritdoc/>
        public override Tensor forward(Tensor images)
        {
            using var scope = NewDisposeScope();
            return norm.forward(proj.forward(images).permute(0, 2, 3, 1)).MoveToOuterDisposeScope();
        }
    }

    /// <summary>2x2 neighbourhoods concatenated (timm's channel order), LayerNorm, bias-free linear reduction.</summary>
    internal sealed class PatchMerging : nn.Module<Tensor, Tensor>
    {
        private readonly LayerNorm norm;
        private readonly Linear reduction;

        /// <summary>From <paramref name="dim"/> to <paramref name="output"/> channels.</summary>
        public PatchMerging(int dim, int output) : base(nameof(PatchMerging))
        {
            norm = nn.LayerNorm(4 * dim);
            reduction = nn.Linear(4 * dim, output, hasBias: false);
            RegisterComponents();
        }

        /// <inheritdoc/>
        public override Tensor forward(Tensor x)
        {
            using var scope = NewDisposeScope();
            long b = x.shape[0], h = x.shape[1], w = x.shape[2], c = x.shape[3];
            x = x.reshape(b, h / 2, 2, w / 2, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3);
            return reduction.forward(norm.forward(x)).MoveToOuterDisposeScope();
        }
    }

    /// <summary>Multi-head self-attention within windows, with a learned relative position bias.</summary>
    internal sealed partial class WindowAttention : nn.Module<Tensor, Tensor?, Tensor>
    {
        private readonly Parameter relative_position_bias_table;
        private readonly AdaptableLinear qkv;
        private readonly Linear proj;
        // Derived from the window size, not part of the state dict (timm registers it non-persistent); held outside a
        // Tensor field, which TorchSharp would register as a buffer.
        private readonly DerivedTensor _relativePositionIndex;
        private readonly int _heads;
        private readonly int _window;

        /// <summary>Attention over <paramref name="window"/> x <paramref name="window"/> windows of <paramref name="dim"/> channels.</summary>
        public WindowAttention(int dim, int heads, int window, bool qkvBias) : base(nameof(WindowAttention))
        {
            _heads = heads;
            _window = window;
            relative_position_bias_table = new Parameter(zeros((2 * window - 1) * (2 * window - 1), heads));
            qkv = new AdaptableLinear(dim, 3 * dim, qkvBias);
            proj = nn.Linear(dim, dim);
            _relativePositionIndex = new DerivedTensor(RelativePositionIndex(window), [window * window * window * window]);
            RegisterComponents();
        }

        /// <summary>The fused qkv projection, an adapter site.</summary>
        public AdaptableLinear Qkv => qkv;

        /// <summary>For each pair of positions in a window, its row of the bias table (timm's get_relative_position_index).</summary>
        private static long[] RelativePositionIndex(int window)
        {
            var index = new long[window * window * window * window];
            for (int i = 0; i < window * window; i++)
            {
                for (int j = 0; j < window * window; j++)
                {
                    int dy = i / window - j / window + window - 1, dx = i % window - j % window + window - 1;
                    index[i * window * window + j] = dy * (2 * window - 1) + dx;
                }
            }
            return index;
        }

        /// <summary>Attention for windows [B * nW, N, C]; <paramref name="mask"/> [nW, N, N] blocks pairs across a shift's seams.</summary>
        public override Tensor forward(Tensor x, Tensor? mask)
        {
            using var scope = NewDisposeScope();
            long b = x.shape[0], n = x.shape[1], c = x.shape[2];
            var parts = qkv.forward(x).reshape(b, n, 3, _heads, c / _heads).permute(2, 0, 3, 1, 4).unbind(0);
            var attn = parts[0].Times(Math.Pow(c / _heads, -0.5)).matmul(parts[1].transpose(-2, -1));
            var bias = relative_position_bias_table.index_select(0, _relativePositionIndex.On(x.device)).view(n, n, _heads).permute(2, 0, 1);
            attn = attn.Plus(bias.unsqueeze(0));
            if (mask is not null)
            {
                long windows = mask.shape[0];
                attn = attn.view(-1, windows, _heads, n, n).Plus(mask.unsqueeze(1).unsqueeze(0)).view(-1, _heads, n, n);
            }
            var y = attn.softmax(-1).matmul(parts[2]).transpose(1, 2).reshape(b, n, c);
            return proj.forward(y).MoveToOuterDisposeScope();
        }
    }

    /// <summary>Window attention (shifted in every second block) and an MLP, each pre-normed, behind drop path.</summary>
    internal sealed partial class Block : nn.Module<Tensor, Tensor>
    {
        private readonly LayerNorm norm1;
        private readonly WindowAttention attn;
        private readonly DropPath drop_path1;
        private readonly LayerNorm norm2;
        private readonly Mlp mlp;
        private readonly DropPath drop_path2;
        private readonly int _window;
        private readonly int _shift;
        // The shift's attention mask [nW, N, N]: derived, and held outside a Tensor field so that it is no buffer.
        private readonly DerivedTensor? _mask;

        /// <summary>A block at a <paramref name="resolution"/> x <paramref name="resolution"/> map.</summary>
        public Block(int dim, int heads, int resolution, int window, bool shifted, double dropPath, SwinConfig config) : base(nameof(Block))
        {
            // timm's rule: a map no larger than the window is one window, never shifted.
            _window = Math.Min(window, resolution);
            _shift = shifted && resolution > window ? window / 2 : 0;
            norm1 = nn.LayerNorm(dim);
            attn = new WindowAttention(dim, heads, _window, config.QkvBias);
            drop_path1 = new DropPath(dropPath);
            norm2 = nn.LayerNorm(dim);
            mlp = new Mlp(dim, (int)(dim * config.MlpRatio));
            drop_path2 = new DropPath(dropPath);
            if (_shift > 0)
            {
                var (mask, windows) = ShiftMask(resolution, _window, _shift);
                _mask = new DerivedTensor(mask, [windows, _window * _window, _window * _window]);
            }
            RegisterComponents();
        }

        /// <summary>The attention, whose qkv is an adapter site.</summary>
        public WindowAttention Attn => attn;

        /// <summary>The MLP, whose fc1 is an adapter site.</summary>
        public Mlp Mlp => mlp;

        /// <summary>
        /// timm's attention mask for a cyclic shift: the map splits into 3 x 3 regions (before the last window, the last
        /// window's unshifted part, the shifted-in part); pairs of positions from different regions get -100.
        /// </summary>
        private static (float[] Mask, long Windows) ShiftMask(int resolution, int window, int shift)
        {
            var region = new float[resolution * resolution];
            int Band(int i) => i < resolution - window ? 0 : i < resolution - shift ? 1 : 2;
            for (int y = 0; y < resolution; y++)
                for (int x = 0; x < resolution; x++) region[y * resolution + x] = Band(y) * 3 + Band(x);
            using var scope = NewDisposeScope();
            var windows = Partition(tensor(region).view(1, resolution, resolution, 1), window).view(-1, window * window);
            var differs = windows.unsqueeze(1) - windows.unsqueeze(2);
            return (Scalars.With(0, differs.ne).to(float32).Times(-100).data<float>().ToArray(), windows.shape[0]);
        }

        /// <summary>[B, H, W, C] to windows [B * nW, w, w, C] (timm's window_partition).</summary>
        internal static Tensor Partition(Tensor x, int window)
        {
            long b = x.shape[0], h = x.shape[1], w = x.shape[2], c = x.shape[3];
            return x.view(b, h / window, window, w / window, window, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c);
        }

        private static Tensor Reverse(Tensor windows, int window, long h, long w)
        {
            long c = windows.shape[^1];
            return windows.view(-1, h / window, w / window, window, window, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c);
        }

        /// <inheritdoc/>
        public override Tensor forward(Tensor x)
        {
            using var scope = NewDisposeScope();
            long b = x.shape[0], h = x.shape[1], w = x.shape[2], c = x.shape[3];
            Tensor y = norm1.forward(x);
            if (_shift > 0) y = roll(y, [-_shift, -_shift], [1, 2]);
            var windows = Partition(y, _window).view(-1, _window * _window, c);
            y = Reverse(attn.forward(windows, _mask?.On(x.device, x.dtype)).view(-1, _window, _window, c), _window, h, w);
            if (_shift > 0) y = roll(y, [_shift, _shift], [1, 2]);
            x = x.Plus(drop_path1.forward(y));
            x = x.Plus(drop_path2.forward(mlp.forward(norm2.forward(x))));
            return x.MoveToOuterDisposeScope();
        }
    }

    /// <summary>Patch merging (after the first stage), then the stage's blocks.</summary>
    internal sealed class Stage : nn.Module<Tensor, Tensor>
    {
        private readonly PatchMerging? downsample;
        private readonly Sequential blocks;

        /// <summary>Stage <paramref name="stage"/> of <paramref name="config"/>.</summary>
        public Stage(SwinConfig config, int stage, double[] dropPaths) : base(nameof(Stage))
        {
            if (stage > 0) downsample = new PatchMerging(config.Dim(stage - 1), config.Dim(stage));
            Blocks = [.. dropPaths.Select((rate, i) => new Block(config.Dim(stage), config.NumHeads[stage], config.Resolution(stage),
                config.WindowSize, shifted: i % 2 == 1, rate, config))];
            blocks = nn.Sequential(Blocks.Select((block, i) => (i.ToString(), (nn.Module<Tensor, Tensor>)block)));
            RegisterComponents();
        }

        /// <summary>The stage's blocks.</summary>
        public IReadOnlyList<Block> Blocks { get; }

        /// <summary>The patch merging in front of the blocks (none in the first stage).</summary>
        public PatchMerging? Downsample => downsample;

        /// <inheritdoc/>
        public override Tensor forward(Tensor x)
        {
            using var scope = NewDisposeScope();
            if (downsample is not null) x = downsample.forward(x);
            return blocks.forward(x).MoveToOuterDisposeScope();
        }
    }

    /// <summary>timm's ClassifierHead: holds <c>fc</c> (pooling happens in <see cref="Backbone.ForwardFeatures"/>).</summary>
    internal sealed class HeadModule : nn.Module
    {
        /// <summary>An empty head.</summary>
        public HeadModule() : base("ClassifierHead") => RegisterComponents();

        /// <summary>The classifier (registered as <c>fc</c> by <see cref="Backbone"/>), or null.</summary>
        public Linear? Fc { get; set; }
    }

    /// <summary>
    /// A constant tensor derived from the config (an index, a mask), kept per device so that a forward pass does not copy
    /// it again; not a module buffer, so not in the state dict (as timm's non-persistent buffers).
    /// </summary>
    private sealed class DerivedTensor(Array values, long[] shape)
    {
        private readonly Dictionary<string, Tensor> _onDevice = [];

        /// <summary>The values on <paramref name="device"/>; floating-point values in <paramref name="dtype"/> when given (e.g. bf16 scoring).</summary>
        public Tensor On(Device device, ScalarType? dtype = null)
        {
            lock (_onDevice)
            {
                string key = $"{device} {dtype}";
                if (!_onDevice.TryGetValue(key, out var value))
                {
                    value = ModuleScopes.Unscoped(() => (values switch
                    {
                        long[] longs => tensor(longs, device: device),
                        float[] floats => tensor(floats, device: device, dtype: dtype ?? ScalarType.Float32),
                        _ => throw new NotSupportedException(values.GetType().Name),
                    }).view(shape));
                    _onDevice[key] = value;
                }
                return value;
            }
        }
    }
}
