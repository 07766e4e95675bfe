using Microsoft.ML.RepAdapter.Torch;
using Microsoft.ML.RepAdapter.Adapters;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Backbones;

/// <summary>
/// Configuration of a <see cref="VisionTransformer"/> (timm's VisionTransformer arguments).
/// <paramref name="RepresentationSize"/> adds the old pre-logits layer (fc + tanh) of Google's ImageNet-21k checkpoints.
/// <paramref name="PreNorm"/> (timm's <c>pre_norm</c>, CLIP's <c>ln_pre</c>) normalises the embedded tokens before the
/// blocks and drops the patch embedding's bias; <paramref name="ImageProjection"/> is CLIP's bias-free image projection
/// after the final norm, whose output is then the pooled feature. <paramref name="LayerScaleInit"/> adds LayerScale after
/// each branch (DINOv2, CaiT). <paramref name="RegisterTokens"/> (DINOv2 "reg4") and <paramref name="DistillationToken"/>
/// (DeiT's distilled models) add prefix tokens after the class token; <paramref name="NoEmbedClass"/> (timm's
/// <c>no_embed_class</c>) gives position embeddings to the patches only. A distilled model's pooled feature is the class
/// and distillation tokens side by side, so that its one head is timm's mean of <c>head</c> and <c>head_dist</c>.
/// </summary>
public sealed record VisionTransformerConfig(
    int ImageSize = 224,
    int PatchSize = 16,
    int EmbedDim = 768,
    int Depth = 12,
    int NumHeads = 12,
    double MlpRatio = 4.0,
    bool QkvBias = true,
    int? RepresentationSize = null,
    int NumClasses = 1000,
    double DropPathRate = 0.0,
    double LayerNormEps = 1e-6,
    bool PreNorm = false,
    MlpActivation Activation = MlpActivation.Gelu,
    int? ImageProjection = null,
    double? LayerScaleInit = null,
    int RegisterTokens = 0,
    bool DistillationToken = false,
    bool NoEmbedClass = false)
{
    /// <summary>Patches per side.</summary>
    public int GridSize => ImageSize / PatchSize;

    /// <summary>Patches per image.</summary>
    public int NumPatches => GridSize * GridSize;

    /// <summary>Tokens before the patches: the class token, the distillation token, the registers (timm's <c>num_prefix_tokens</c>).</summary>
    public int PrefixTokens => 1 + (DistillationToken ? 1 : 0) + RegisterTokens;

    /// <summary>Prefix tokens that have a position embedding: none with <see cref="NoEmbedClass"/>, else all of them.</summary>
    public int EmbeddedPrefixTokens => NoEmbedClass ? 0 : PrefixTokens;

    /// <summary>Tokens per image: prefix and patches.</summary>
    public int Tokens => PrefixTokens + NumPatches;

    /// <summary>The pooled tokens' width: the class token's, with the distillation token's beside it in a distilled model.</summary>
    public int PooledDim => DistillationToken ? 2 * EmbedDim : EmbedDim;

    /// <summary>Width of the MLP's hidden layer.</summary>
    public int MlpHidden => (int)(EmbedDim * MlpRatio);

    /// <summary>The blocks' configuration (a method, not a property: the config's saved JSON stays as it was).</summary>
    public PreNormBlockConfig BlockConfig() => new(EmbedDim, NumHeads, MlpHidden, QkvBias, LayerNormEps, Activation, LayerScaleInit);

    /// <summary>
    /// Throws <see cref="ArgumentException"/> unless the image size is a positive multiple of the patch size, the heads
    /// divide the width, the depth is positive, the drop-path rate is in [0, 1), and at most one of a pre-logits layer
    /// and an image projection is asked for.
    /// </summary>
    public void Validate()
    {
        if (ImageSize <= 0 || PatchSize <= 0 || ImageSize % PatchSize != 0)
            throw new ArgumentException($"Image size {ImageSize} must be a positive multiple of patch size {PatchSize}.");
        if (EmbedDim % NumHeads != 0)
            throw new ArgumentException($"Embedding width {EmbedDim} must be divisible by the {NumHeads} heads.");
        if (Depth <= 0) throw new ArgumentException($"Depth must be positive, got {Depth}.");
        if (DropPathRate is < 0 or >= 1) throw new ArgumentException($"Drop-path rate must be in [0, 1), got {DropPathRate}.");
        if (RepresentationSize is not null && ImageProjection is not null) throw new ArgumentException("A ViT has a pre-logits layer or an image projection, not both.");
        if (RegisterTokens < 0) throw new ArgumentException($"Register tokens cannot be negative, got {RegisterTokens}.");
        if (DistillationToken && (RepresentationSize is not null || ImageProjection is not null))
            throw new ArgumentException("A distilled ViT (DeiT) has neither a pre-logits layer nor an image projection.");
    }
}

/// <summary>
/// Vision Transformer (Dosovitskiy et al. 2021) as in timm's <c>vision_transformer.py</c>: patch embedding, class
/// token, absolute position embeddings, pre-norm blocks with fused qkv and a GELU MLP, final norm, optional pre-logits,
/// head. Attention qkv and MLP fc1 are <see cref="AdaptableLinear"/>s: the RepAdapter sites.
/// </summary>
public sealed partial class VisionTransformer : Backbone
{
    private readonly PatchEmbed patch_embed;
    private readonly Parameter cls_token;
    private readonly Parameter? dist_token;
    private readonly Parameter? reg_token;
    private readonly Parameter pos_embed;
    private readonly ModuleList<PreNormBlock> blocks;
    private readonly LayerNorm norm;
    private readonly LayerNorm? norm_pre;
    private PreLogits? pre_logits;
    private readonly Linear? proj;
    private Linear? head;
    private readonly ImageInputSpec _input;

    /// <summary>
    /// Builds the network <paramref name="config"/> describes with timm's initialisation (truncated normal 0.02, zero
    /// biases; load weights separately). Throws <see cref="ArgumentException"/> for an invalid config.
    /// </summary>
    /// <param name="config">Size, depth, heads, head and options of the transformer.</param>
    /// <param name="architecture">The name reported as <see cref="Architecture"/>, e.g. <c>vit_base_patch16_224</c>.</param>
    /// <param name="input">Input normalisation; ImageNet's at <see cref="VisionTransformerConfig.ImageSize"/> by default.</param>
    public VisionTransformer(VisionTransformerConfig config, string architecture = "vit", ImageInputSpec? input = null)
        : base(nameof(VisionTransformer))
    {
        config.Validate();
        Config = config;
        Architecture = architecture;
        _input = input ?? ImageInputSpec.ImageNet(config.ImageSize);
        int d = config.EmbedDim;
        patch_embed = new PatchEmbed(config.PatchSize, d, bias: !config.PreNorm);
        cls_token = new Parameter(zeros(1, 1, d));
        if (config.DistillationToken) dist_token = new Parameter(zeros(1, 1, d));
        if (config.RegisterTokens > 0) reg_token = new Parameter(zeros(1, config.RegisterTokens, d));
        pos_embed = new Parameter(zeros(1, config.EmbeddedPrefixTokens + config.NumPatches, d));
        // Stochastic depth grows linearly with depth (timm's rule).
        var dropPath = DropPath.LinearRates(config.Depth, config.DropPathRate);
        blocks = new ModuleList<PreNormBlock>(Enumerable.Range(0, config.Depth).Select(i => new PreNormBlock(config.BlockConfig(), dropPath[i])).ToArray());
        norm = nn.LayerNorm(d, config.LayerNormEps);
        if (config.PreNorm) norm_pre = nn.LayerNorm(d, config.LayerNormEps);
        if (config.RepresentationSize is int representation) pre_logits = new PreLogits(d, representation);
        if (config.ImageProjection is int projection) proj = nn.Linear(d, projection, hasBias: false);
        RegisterComponents();
        InitWeights();
        ResetClassifier(config.NumClasses);
    }

    /// <summary>The current configuration (its <see cref="VisionTransformerConfig.NumClasses"/> follows <see cref="ResetClassifier"/>).</summary>
    public VisionTransformerConfig Config { get; private set; }

    /// <inheritdoc/>
    public override string Architecture { get; }

    /// <inheritdoc/>
    public override ImageInputSpec Input => _input;

    /// <inheritdoc/>
    public override BackboneFamily Family => VisionTransformerFamily.Instance;

    /// <inheritdoc/>
    public override BackboneDescriptor Describe() => BackboneDescriptor.Create(Architecture, Input, Family, Config);

    /// <inheritdoc/>
    /// <remarks>The image projection's width (CLIP), else the pre-logits width, else the pooled tokens' (<see cref="VisionTransformerConfig.PooledDim"/>).</remarks>
    public override int FeatureDim => Config.ImageProjection ?? Config.RepresentationSize ?? Config.PooledDim;

    /// <inheritdoc/>
    public override int NumClasses => Config.NumClasses;

    /// <summary>The transformer blocks, in order (timm's <c>blocks</c>).</summary>
    public IReadOnlyList<PreNormBlock> Blocks => [.. blocks];

    /// <inheritdoc/>
    /// <remarks>timm's <c>head</c>.</remarks>
    public override string HeadName => "head";

    /// <inheritdoc/>
    /// <remarks>A plain nn.Linear with PyTorch's default init, as timm's <c>reset_classifier</c> that the official RepAdapter code calls.</remarks>
    public override void ResetClassifier(int numClasses)
    {
        head = ReplaceHead(head, numClasses);
        Config = Config with { NumClasses = numClasses };
    }

    /// <inheritdoc/>
    /// <remarks>qkv for <see cref="AdapterPlacement.Attention"/>; qkv and fc1 for <see cref="AdapterPlacement.Block"/> (the paper's two).</remarks>
    public override IReadOnlyDictionary<AdapterPlacement, IReadOnlyList<string>> Placements { get; } = new Dictionary<AdapterPlacement, IReadOnlyList<string>>
    {
        [AdapterPlacement.Block] = ["attn.qkv", "mlp.fc1"],
        [AdapterPlacement.Attention] = ["attn.qkv"],
    };

    /// <inheritdoc/>
    protected override IEnumerable<(string Name, nn.Module Block)> AdaptableBlocks() => blocks.Select((block, i) => ($"blocks.{i}", (nn.Module)block));

    /// <summary>Token sequence after the final norm, [B, prefix + patches, D].</summary>
    public Tensor ForwardTokens(Tensor images)
    {
        using var scope = NewDisposeScope();
        CheckInput(images);
        Tensor x = Embed(images);
        foreach (var block in blocks) x = block.forward(x);
        return norm.forward(x).MoveToOuterDisposeScope();
    }

    /// <inheritdoc/>
    /// <remarks>
    /// The embedding (patches, prefix tokens, position embeddings), every block, then the class token after the final norm
    /// (with the distillation token beside it in a distilled model), through the pre-logits layer or image projection when
    /// there is one.
    /// </remarks>
    public override IReadOnlyList<TrunkStep> Trunk() =>
    [
        new("embed", ["patch_embed", "cls_token", "dist_token", "reg_token", "pos_embed", "norm_pre"], false, images =>
        {
            CheckInput(images);
            return Embed(images);
        }),
        .. blocks.Select((block, i) => new TrunkStep($"blocks.{i}", [$"blocks.{i}"], true, block.forward)),
        new("pool", ["norm", "pre_logits", "proj"], false, tokens =>
        {
            using var scope = NewDisposeScope();
            Tensor normed = norm.forward(tokens);
            Tensor cls = dist_token is null ? normed.select(1, 0) : normed.narrow(1, 0, 2).flatten(1);
            if (pre_logits is not null) cls = pre_logits.forward(cls);
            if (proj is not null) cls = proj.forward(cls);
            return cls.MoveToOuterDisposeScope();
        }),
    ];

    /// <inheritdoc/>
    /// <remarks>The patch tokens after the final norm as a [B, EmbedDim, grid, grid] map (prefix tokens dropped).</remarks>
    public override Tensor ForwardFeatureMap(Tensor images)
    {
        using var scope = NewDisposeScope();
        return ToMap(ForwardTokens(images), images.shape[0]).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Four evenly spaced blocks (for depth 24: blocks 5, 11, 17, 23, as SETR's multi-level heads take), or every block
    /// of a shallower model; each at the patch stride.
    /// </summary>
    public override IReadOnlyList<FeatureLevel> FeatureLevels =>
        [.. IntermediateBlocks.Select(i => new FeatureLevel($"blocks.{i}", Config.EmbedDim, Config.PatchSize))];

    private IEnumerable<int> IntermediateBlocks =>
        Enumerable.Range(1, 4).Select(j => Math.Max(0, j * Config.Depth / 4 - 1)).Distinct();

    /// <summary>The outputs of <see cref="FeatureLevels"/>' blocks, through the final norm, as [B, D, grid, grid] maps.</summary>
    public override IReadOnlyList<Tensor> ForwardIntermediates(Tensor images)
    {
        using var scope = NewDisposeScope();
        CheckInput(images);
        var wanted = IntermediateBlocks.ToHashSet();
        var maps = new List<Tensor>();
        Tensor x = Embed(images);
        for (int i = 0; i < blocks.Count && maps.Count < wanted.Count; i++)
        {
            x = blocks[i].forward(x);
            if (wanted.Contains(i)) maps.Add(ToMap(norm.forward(x), images.shape[0]));
        }
        foreach (var map in maps) map.MoveToOuterDisposeScope();
        return maps;
    }

    /// <summary>
    /// Prefix tokens and patch tokens with position embeddings, [B, prefix + patches, D] (pre-normed when configured), as
    /// timm's <c>_pos_embed</c>: with <see cref="VisionTransformerConfig.NoEmbedClass"/> the patches get theirs before
    /// the prefix is put in front, else all tokens get one.
    /// </summary>
    private Tensor Embed(Tensor images)
    {
        using var scope = NewDisposeScope();
        Tensor x = patch_embed.forward(images);
        long batch = x.shape[0];
        var prefix = new List<Tensor> { cls_token.expand(batch, -1, -1) };
        if (dist_token is not null) prefix.Add(dist_token.expand(batch, -1, -1));
        if (reg_token is not null) prefix.Add(reg_token.expand(batch, -1, -1));
        x = Config.NoEmbedClass ? cat([.. prefix, x.Plus(pos_embed)], 1) : cat([.. prefix, x], 1).Plus(pos_embed);
        if (norm_pre is not null) x = norm_pre.forward(x);
        return x.MoveToOuterDisposeScope();
    }

    /// <summary>Patch tokens [B, prefix + g*g, D] (prefix tokens dropped) as a [B, D, g, g] map.</summary>
    private Tensor ToMap(Tensor tokens, long batch)
    {
        int g = Config.GridSize;
        return tokens.narrow(1, Config.PrefixTokens, Config.NumPatches).transpose(1, 2).reshape(batch, Config.EmbedDim, g, g);
    }

    /// <inheritdoc/>
    public override Tensor ForwardHead(Tensor features) => head is null ? features.alias() : head.forward(features);

    /// <summary>
    /// Resamples position embeddings [1, prefix + h*w, D] to a new grid as timm's <c>resample_abs_pos_embed</c> does by
    /// default (bicubic, antialiased, align_corners false); the <paramref name="prefixTokens"/> positions of prefix tokens
    /// (the class token's; none with timm's no_embed_class) are kept as they are. Older timm
    /// (<c>resize_pos_embed</c>) did not antialias: pass <paramref name="antialias"/> false to reproduce it.
    /// </summary>
    public static Tensor ResamplePositionEmbedding(Tensor posEmbed, int newGrid, int prefixTokens = 1, bool antialias = true)
    {
        using var scope = NewDisposeScope();
        long total = posEmbed.shape[1] - prefixTokens;
        int oldGrid = (int)Math.Round(Math.Sqrt(total));
        if (oldGrid * oldGrid != total)
            throw new ArgumentException($"Position embedding with {total} patch positions is not a square grid.");
        if (oldGrid == newGrid) return posEmbed.clone().MoveToOuterDisposeScope();
        long d = posEmbed.shape[2];
        Tensor prefix = posEmbed.narrow(1, 0, prefixTokens);
        Tensor grid = posEmbed.narrow(1, prefixTokens, total).reshape(1, oldGrid, oldGrid, d).permute(0, 3, 1, 2);
        grid = nn.functional.interpolate(grid.to(float32), [newGrid, newGrid], mode: InterpolationMode.Bicubic, align_corners: false, antialias: antialias);
        grid = grid.permute(0, 2, 3, 1).reshape(1, newGrid * newGrid, d).to(posEmbed.dtype);
        return cat([prefix, grid], 1).MoveToOuterDisposeScope();
    }

    private void CheckInput(Tensor images)
    {
        if (images.dim() != 4 || images.shape[1] != 3 || images.shape[2] != Config.ImageSize || images.shape[3] != Config.ImageSize)
            throw new ArgumentException(
                $"{Architecture} expects images [B, 3, {Config.ImageSize}, {Config.ImageSize}], got [{string.Join(", ", images.shape)}].");
    }

    private void InitWeights()
    {
        // timm's default ("jax"-free) init: truncated normal 0.02 for embeddings and linears, zero biases.
        using (no_grad())
        {
            TruncatedNormal.Fill(pos_embed, std: 0.02);
            nn.init.normal_(cls_token, std: 1e-6);
            if (dist_token is not null) TruncatedNormal.Fill(dist_token, std: 0.02);
            if (reg_token is not null) nn.init.normal_(reg_token, std: 1e-6);
        }
        Initialization.TruncatedNormal(this);
    }

    /// <summary>Non-overlapping patches to tokens: conv with kernel = stride = patch, then [B, patches, D].</summary>
    internal sealed class PatchEmbed : nn.Module<Tensor, Tensor>
    {
        private readonly Conv2d proj;

        public PatchEmbed(int patchSize, int embedDim, bool bias = true) : base(nameof(PatchEmbed))
        {
            proj = nn.Conv2d(3, embedDim, patchSize, stride: patchSize, bias: bias);
            RegisterComponents();
        }

        public override Tensor forward(Tensor images)
        {
            using var scope = NewDisposeScope();
            return proj.forward(images).flatten(2).transpose(1, 2).MoveToOuterDisposeScope();
        }
    }

    /// <summary>Old timm / Google in21k pre-logits: tanh(fc(x)). Frozen with the backbone.</summary>
    internal sealed class PreLogits : nn.Module<Tensor, Tensor>
    {
        private readonly Linear fc;

        public PreLogits(int dim, int representation) : base(nameof(PreLogits))
        {
            fc = nn.Linear(dim, representation);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x)
        {
            using var scope = NewDisposeScope();
            return fc.forward(x).tanh().MoveToOuterDisposeScope();
        }
    }
}
