using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Formats;
using Microsoft.ML.RepAdapter.Torch;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Backbones;

/// <summary>
/// Configuration of a <see cref="VideoVisionTransformer"/> (the arguments of the model class of VideoMAE's fine-tuning
/// code, modeling_finetune.py). A clip of <paramref name="Frames"/> frames of
/// <paramref name="ImageSize"/> px is cut into tubelets of <paramref name="TubeletSize"/> frames x
/// <paramref name="PatchSize"/> x <paramref name="PatchSize"/> px. Mean pooling with <c>fc_norm</c> is the only pooling:
/// every released fine-tuned VideoMAE uses it. <paramref name="FcNormEps"/> is the pooled norm's epsilon, which
/// Hugging Face's port leaves at PyTorch's 1e-5 where the official code has 1e-6.
/// </summary>
public sealed record VideoVisionTransformerConfig(
    int ImageSize = 224,
    int PatchSize = 16,
    int Frames = 16,
    int TubeletSize = 2,
    int EmbedDim = 768,
    int Depth = 12,
    int NumHeads = 12,
    double MlpRatio = 4.0,
    int NumClasses = 400,
    double DropPathRate = 0.0,
    double LayerNormEps = 1e-6,
    double FcNormEps = 1e-6)
{
    /// <summary>Tubelets per clip: (frames / tubelet) x (size / patch)^2, time slowest.</summary>
    public int Tokens => Frames / TubeletSize * (ImageSize / PatchSize) * (ImageSize / PatchSize);

    /// <summary>The blocks' configuration: qkv with a bias, GELU MLP, no LayerScale (a method: not saved with the config).</summary>
    public PreNormBlockConfig BlockConfig() => new(EmbedDim, NumHeads, (int)(EmbedDim * MlpRatio), QkvBias: true, LayerNormEps, MlpActivation.Gelu);

    /// <summary>Throws <see cref="ArgumentException"/> naming the first setting that cannot work.</summary>
    public void Validate()
    {
        if (ImageSize <= 0 || PatchSize <= 0 || ImageSize % PatchSize != 0)
            throw new ArgumentException($"Image size {ImageSize} must be a positive multiple of patch size {PatchSize}.");
        if (Frames <= 0 || TubeletSize <= 0 || Frames % TubeletSize != 0)
            throw new ArgumentException($"Frames {Frames} must be a positive multiple of the tubelet size {TubeletSize}.");
        if (EmbedDim % 2 != 0) throw new ArgumentException($"Embedding width {EmbedDim} must be even (sine and cosine pairs).");
        if (EmbedDim % NumHeads != 0) throw new ArgumentException($"Embedding width {EmbedDim} must be divisible by the {NumHeads} heads.");
        if (Depth <= 0) throw new ArgumentException($"Depth must be positive, got {Depth}.");
        if (DropPathRate is < 0 or >= 1) throw new ArgumentException($"Drop-path rate must be in [0, 1), got {DropPathRate}.");
    }
}

/// <summary>
/// VideoMAE's video ViT (Tong et al. 2022), as its fine-tuning code builds it: a 3-D convolution embeds tubelets, a fixed
/// sinusoid table (not a parameter, not in checkpoints) gives their positions, the image ViT's pre-norm blocks follow,
/// then the mean token through <c>fc_norm</c> and the head. Attention qkv and MLP fc1 are the RepAdapter sites, as for
/// images. Input: normalised clips [B, 3, T, S, S] (VideoMAE's channels-then-time layout).
/// </summary>
/// <remarks>
/// The official attention has a q and a v bias and no k bias (always zero); here they are one qkv bias whose k third
/// loads as zeros. Scoring and adapter training (frozen backbone) compute the same; a full fine-tune could move the k
/// third, which the official model cannot.
/// </remarks>
public sealed partial class VideoVisionTransformer : Backbone
{
    private readonly TubeletEmbed patch_embed;
    private readonly ModuleList<PreNormBlock> blocks;
    private readonly LayerNorm fc_norm;
    private Linear? head;
    // Not a Tensor field: RegisterComponents would make it a buffer, and checkpoints do not hold it.
    private readonly float[] _positions;
    private readonly ImageInputSpec _input;

    /// <summary>Builds the network <paramref name="config"/> describes (random weights; load them separately).</summary>
    public VideoVisionTransformer(VideoVisionTransformerConfig config, string architecture = "videomae", ImageInputSpec? input = null)
        : base(nameof(VideoVisionTransformer))
    {
        config.Validate();
        Config = config;
        Architecture = architecture;
        _input = input ?? ImageInputSpec.ImageNet(config.ImageSize);
        int d = config.EmbedDim;
        patch_embed = new TubeletEmbed(config.TubeletSize, config.PatchSize, d);
        var dropPath = DropPath.LinearRates(config.Depth, config.DropPathRate);
        blocks = new ModuleList<PreNormBlock>([.. Enumerable.Range(0, config.Depth).Select(i => new PreNormBlock(config.BlockConfig(), dropPath[i]))]);
        fc_norm = nn.LayerNorm(d, config.FcNormEps);
        _positions = SinusoidTable(config.Tokens, d);
        RegisterComponents();
        Initialization.TruncatedNormal(this);
        ResetClassifier(config.NumClasses);
    }

    /// <summary>The current configuration (its <see cref="VideoVisionTransformerConfig.NumClasses"/> follows <see cref="ResetClassifier"/>).</summary>
    public VideoVisionTransformerConfig Config { get; private set; }

    /// <inheritdoc/>
    public override string Architecture { get; }

    /// <inheritdoc/>
    public override ImageInputSpec Input => _input;

    /// <inheritdoc/>
    public override BackboneFamily Family => VideoMAEFamily.Instance;

    /// <inheritdoc/>
    public override BackboneDescriptor Describe() => BackboneDescriptor.Create(Architecture, Input, Family, Config);

    /// <inheritdoc/>
    public override int FeatureDim => Config.EmbedDim;

    /// <inheritdoc/>
    public override int NumClasses => Config.NumClasses;

    /// <inheritdoc/>
    /// <remarks>VideoMAE's <c>head</c>.</remarks>
    public override string HeadName => "head";

    /// <summary>The fixed position table [1, tokens, D] the embedded tubelets get (VideoMAE's <c>get_sinusoid_encoding_table</c>).</summary>
    public Tensor PositionTable => tensor(_positions, [1, Config.Tokens, Config.EmbedDim]);

    /// <inheritdoc/>
    public override void ResetClassifier(int numClasses)
    {
        head = ReplaceHead(head, numClasses);
        Config = Config with { NumClasses = numClasses };
    }

    /// <inheritdoc/>
    /// <remarks>qkv and fc1 (<see cref="AdapterPlacement.Block"/>) or qkv alone, as in the image ViT.</remarks>
    public override IReadOnlyDictionary<AdapterPlacement, IReadOnlyList<string>> Placements { get; } = new Dictionary<AdapterPlacement, IReadOnlyList<string>>
    {
        [AdapterPlacement.Block] = ["attn.qkv", "mlp.fc1"],
        [AdapterPlacement.Attention] = ["attn.qkv"],
    };

    /// <inheritdoc/>
    protected override IEnumerable<(string Name, nn.Module Block)> AdaptableBlocks() => blocks.Select((block, i) => ($"blocks.{i}", (nn.Module)block));

    /// <inheritdoc/>
    /// <remarks>The tubelets with their positions, every block, then the mean token through <c>fc_norm</c>.</remarks>
    public override IReadOnlyList<TrunkStep> Trunk() =>
    [
        new("embed", ["patch_embed"], false, Embed),
        .. blocks.Select((block, i) => new TrunkStep($"blocks.{i}", [$"blocks.{i}"], true, block.forward)),
        new("pool", ["fc_norm"], false, tokens => fc_norm.forward(tokens.mean([1]))),
    ];

    /// <inheritdoc/>
    public override Tensor ForwardHead(Tensor features) => head is null ? features.alias() : head.forward(features);

    /// <inheritdoc/>
    /// <remarks>Not for video: dense heads (segmentation) take image backbones.</remarks>
    public override Tensor ForwardFeatureMap(Tensor images) => throw NotForVideo("a feature map");

    /// <inheritdoc/>
    public override IReadOnlyList<FeatureLevel> FeatureLevels => [];

    /// <inheritdoc/>
    public override IReadOnlyList<Tensor> ForwardIntermediates(Tensor images) => throw NotForVideo("multi-level feature maps");

    internal override IReadOnlyList<string> EmitIntermediates(OnnxGraphBuilder graph, string pixels) => throw NotForVideo("multi-level feature maps");

    private NotSupportedException NotForVideo(string what) =>
        new($"{Architecture} is a video backbone: it has no 2-D {what} (segmentation takes image backbones).");

    /// <summary>Tubelet tokens [B, tokens, D] with their positions.</summary>
    private Tensor Embed(Tensor clips)
    {
        var c = Config;
        if (clips.dim() != 5 || clips.shape[1] != 3 || clips.shape[2] != c.Frames || clips.shape[3] != c.ImageSize || clips.shape[4] != c.ImageSize)
            throw new ArgumentException($"{Architecture} expects clips [B, 3, {c.Frames}, {c.ImageSize}, {c.ImageSize}] (channels, then frames), got [{string.Join(", ", clips.shape)}].");
        using var scope = NewDisposeScope();
        var tokens = patch_embed.forward(clips);
        return tokens.Plus(PositionTable.to(tokens.device).to(tokens.dtype)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// VideoMAE's sinusoid table [tokens, D], row-major: dimension 2i is sin(pos / 10000^(2i / D)) and 2i + 1 the cosine at the same
    /// frequency, over one position per token; computed in float64 and rounded to float32, as the official numpy code.
    /// </summary>
    public static float[] SinusoidTable(int tokens, int dim)
    {
        var table = new float[(long)tokens * dim];
        for (int pos = 0; pos < tokens; pos++)
        {
            for (int j = 0; j < dim; j++)
            {
                double angle = pos / Math.Pow(10000, 2.0 * (j / 2) / dim);
                table[(long)pos * dim + j] = (float)(j % 2 == 0 ? Math.Sin(angle) : Math.Cos(angle));
            }
        }
        return table;
    }

    /// <summary>Tubelets to tokens: a 3-D convolution with kernel = stride = tubelet x patch x patch, then [B, tokens, D] (time slowest).</summary>
    internal sealed class TubeletEmbed : nn.Module<Tensor, Tensor>
    {
        private readonly Conv3d proj;

        public TubeletEmbed(int tubeletSize, int patchSize, int embedDim) : base(nameof(TubeletEmbed))
        {
            (long, long, long) kernel = (tubeletSize, patchSize, patchSize);
            proj = nn.Conv3d(3, embedDim, kernel, stride: kernel);
            RegisterComponents();
        }

        public override Tensor forward(Tensor clips)
        {
            using var scope = NewDisposeScope();
            return proj.forward(clips).flatten(2).transpose(1, 2).MoveToOuterDisposeScope();
        }
    }
}
