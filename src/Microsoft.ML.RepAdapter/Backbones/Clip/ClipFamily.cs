using System.Text.Json;
using Microsoft.ML.RepAdapter.Formats;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Backbones;

/// <summary>
/// CLIP's image encoder as a layout of the Vision Transformer, as in timm: a ViT with a pre-norm (<c>ln_pre</c>), an
/// OpenAI QuickGELU (or GELU) MLP, LayerNorm eps 1e-5, and the bias-free image projection <c>proj</c>, whose output is the
/// pooled feature (the CLIP embedding). Reads OpenAI's and open_clip's checkpoints (<c>visual.conv1.weight</c>,
/// <c>visual.transformer.resblocks.N.attn.in_proj_weight</c>, ...; the text tower is left out) and timm's CLIP ViTs.
/// Its models are <see cref="VisionTransformer"/>s, saved and merged as such; adapters go in front of in_proj (qkv) and
/// c_fc (fc1).
/// </summary>
public sealed class ClipFamily : BackboneFamily
{
    /// <summary>The family.</summary>
    public static ClipFamily Instance { get; } = new();

    private ClipFamily() { }

    private static readonly VisionTransformerConfig B32 = new(PatchSize: 32, PreNorm: true, Activation: MlpActivation.QuickGelu,
        ImageProjection: 512, LayerNormEps: 1e-5, NumClasses: 0);

    /// <summary>OpenAI's CLIP image encoders (QuickGELU), under timm's names and OpenAI's, and GELU variants (open_clip's own).</summary>
    public static IReadOnlyDictionary<string, VisionTransformerConfig> PresetConfigs { get; } = new Dictionary<string, VisionTransformerConfig>
    {
        ["vit_base_patch32_clip_quickgelu_224"] = B32,
        ["vit_base_patch16_clip_quickgelu_224"] = B32 with { PatchSize = 16 },
        ["vit_large_patch14_clip_quickgelu_224"] = B32 with { PatchSize = 14, EmbedDim = 1024, Depth = 24, NumHeads = 16, ImageProjection = 768 },
        ["ViT-B/32"] = B32,
        ["ViT-B/16"] = B32 with { PatchSize = 16 },
        ["ViT-L/14"] = B32 with { PatchSize = 14, EmbedDim = 1024, Depth = 24, NumHeads = 16, ImageProjection = 768 },
        ["vit_base_patch32_clip_224"] = B32 with { Activation = MlpActivation.Gelu },
        ["vit_base_patch16_clip_224"] = B32 with { PatchSize = 16, Activation = MlpActivation.Gelu },
        ["vit_large_patch14_clip_224"] = B32 with { PatchSize = 14, EmbedDim = 1024, Depth = 24, NumHeads = 16, ImageProjection = 768, Activation = MlpActivation.Gelu },
    };

    /// <summary>CLIP's normalisation (OpenAI's image mean and std).</summary>
    public static ImageInputSpec ClipInput(int imageSize) =>
        new(imageSize, [0.48145466f, 0.4578275f, 0.40821073f], [0.26862954f, 0.26130258f, 0.27577711f]);

    /// <inheritdoc/>
    public override string Name => "Clip";

    /// <inheritdoc/>
    public override IReadOnlyCollection<string> Presets => [.. PresetConfigs.Keys];

    /// <inheritdoc/>
    public override Backbone Create(string preset, PresetOverrides overrides)
    {
        var config = PresetConfigs[preset];
        config = config with
        {
            DropPathRate = overrides.DropPathRate,
            NumClasses = overrides.NumClasses ?? config.NumClasses,
            ImageSize = overrides.ImageSize ?? config.ImageSize,
        };
        return new VisionTransformer(config, preset, ClipInput(config.ImageSize));
    }

    /// <summary>CLIP models describe themselves as ViTs; this family never sees a description of its own.</summary>
    public override Backbone Build(string architecture, ImageInputSpec input, JsonElement config) =>
        VisionTransformerFamily.Instance.Build(architecture, input, config);

    /// <inheritdoc/>
    /// <remarks>CLIP's image encoders are ViTs: the ViT's load options.</remarks>
    public override Type LoadOptionsType => typeof(VisionTransformerLoadOptions);

    /// <inheritdoc/>
    public override IReadOnlyList<CheckpointLayout> Layouts { get; } = [new OpenAILayout(), new TimmClipLayout()];

    /// <summary>
    /// The ViT config from the shapes (width, depth, patch size, image size from the position embeddings, projection
    /// size), with CLIP's LayerNorm eps; heads are width / 64 (16 for ViT-H/g/bigG) unless given. The activation is not in
    /// the shapes: it is the preset's; else QuickGELU for the OpenAI / open_clip layout (OpenAI's models; choose a
    /// <c>*_clip_224</c> preset for GELU ones such as open_clip's LAION models) and GELU for timm's layout (timm's CLIP
    /// models), with a note in the load report. A timm CLIP ViT fine-tuned into a classifier keeps its head and has no
    /// projection.
    /// </summary>
    public override Backbone CreateFromWeights(string path, ConvertedCheckpoint converted, string? preset, CheckpointOptions options)
    {
        var config = ConfigFor(path, converted, preset, options);
        string? matchingPreset = PresetConfigs.FirstOrDefault(p => p.Value with { NumClasses = config.NumClasses } == config).Key;
        return new VisionTransformer(config, preset ?? matchingPreset ?? $"vit_patch{config.PatchSize}_dim{config.EmbedDim}_clip", ClipInput(config.ImageSize));
    }

    /// <summary>The ViT config of <see cref="CreateFromWeights"/>.</summary>
    internal static VisionTransformerConfig ConfigFor(string path, ConvertedCheckpoint converted, string? preset, CheckpointOptions options)
    {
        var w = converted.Weights;
        var known = preset is null ? null : PresetConfigs.TryGetValue(preset, out var config) ? config
            : throw new ArgumentException($"Unknown CLIP preset '{preset}'. Known presets: {string.Join(", ", PresetConfigs.Keys)}.", nameof(preset));
        var vit = VisionTransformerFamily.Instance.OwnLoadOptions<VisionTransformerLoadOptions>(options.Family);
        var inferred = VisionTransformerFamily.InferConfig(path, w, known, options with { Family = (vit ?? new()) with { KeepPreLogits = false } });
        if (known is null) inferred = inferred with { LayerNormEps = 1e-5, Activation = ActivationOf(converted.Layout) };
        // A classifier fine-tuned from a CLIP preset (timm's *.openai_ft_in1k) has a head in place of the projection.
        else if (!w.ContainsKey("proj.weight") && w.ContainsKey("head.weight")) inferred = inferred with { ImageProjection = null };
        if (inferred.ImageProjection is null && !w.ContainsKey("head.weight"))
            throw new CheckpointException(path, "proj.weight", "a CLIP image encoder needs its image projection (or a classifier head); found neither.");
        return inferred;
    }

    private const string OpenAILayoutName = "OpenAI / open_clip CLIP";

    private static MlpActivation ActivationOf(string layout) => layout == OpenAILayoutName ? MlpActivation.QuickGelu : MlpActivation.Gelu;

    /// <summary>
    /// OpenAI's CLIP (<c>clip.load(...).state_dict()</c>) and open_clip's: the image encoder under <c>visual.</c> (or a bare
    /// image encoder), the text tower beside it, which is left out.
    /// </summary>
    private sealed class OpenAILayout : CheckpointLayout
    {
        public override string Name => OpenAILayoutName;

        public override bool Matches(IReadOnlyDictionary<string, Tensor> tensors) =>
            tensors.ContainsKey("visual.conv1.weight") || tensors.ContainsKey("conv1.weight") && tensors.ContainsKey("class_embedding");

        public override ConvertedCheckpoint Convert(TensorCheckpoint checkpoint, IReadOnlyDictionary<string, Tensor> tensors)
        {
            string p = tensors.ContainsKey("visual.conv1.weight") ? "visual." : "";
            var ignored = new Dictionary<string, string>();
            var visual = new Dictionary<string, Tensor>();
            foreach (var (key, tensor) in tensors)
            {
                if (key.StartsWith(p, StringComparison.Ordinal)) visual[key] = tensor;
                else ignored[key] = "CLIP's text tower: not part of the image encoder.";
            }
            var keys = new KeyTaker(checkpoint.Path, visual);
            var w = new OrderedDictionary<string, Tensor>();
            w["patch_embed.proj.weight"] = keys.Take(p + "conv1.weight", rank: 4);
            w["cls_token"] = keys.Take(p + "class_embedding", rank: 1).view(1, 1, -1);
            w["pos_embed"] = keys.Take(p + "positional_embedding", rank: 2).unsqueeze(0);
            w["norm_pre.weight"] = keys.Take(p + "ln_pre.weight");
            w["norm_pre.bias"] = keys.Take(p + "ln_pre.bias");
            int depth = keys.CountBlocks(i => $"{p}transformer.resblocks.{i}.ln_1.weight");
            (string Ours, string Clip)[] names =
            [
                ("norm1", "ln_1"), ("attn.proj", "attn.out_proj"), ("norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"),
            ];
            for (int i = 0; i < depth; i++)
            {
                string c = $"{p}transformer.resblocks.{i}.", t = $"blocks.{i}.";
                w[t + "attn.qkv.weight"] = keys.Take(c + "attn.in_proj_weight", rank: 2);
                w[t + "attn.qkv.bias"] = keys.Take(c + "attn.in_proj_bias", rank: 1);
                foreach (var (ours, clip) in names)
                {
                    w[$"{t}{ours}.weight"] = keys.Take($"{c}{clip}.weight");
                    w[$"{t}{ours}.bias"] = keys.Take($"{c}{clip}.bias");
                }
            }
            w["norm.weight"] = keys.Take(p + "ln_post.weight");
            w["norm.bias"] = keys.Take(p + "ln_post.bias");
            w["proj.weight"] = keys.Take(p + "proj", rank: 2).t().contiguous();    // x @ proj [D, P] is Linear(D, P) with weight [P, D]
            keys.ThrowIfAnyUnused(Name);
            return new ConvertedCheckpoint(Name, w, ignored, Assumptions:
                ["activation: QuickGELU assumed (OpenAI's CLIP); the weights do not tell it: choose a *_clip_224 preset for a GELU model (e.g. open_clip's LAION ones)."]);
        }
    }

    /// <summary>
    /// timm's CLIP ViTs: its ViT names with <c>norm_pre</c>; a head with a zero bias is the CLIP projection (timm's
    /// conversion puts it there), any other head is a classifier and stays one.
    /// </summary>
    private sealed class TimmClipLayout : CheckpointLayout
    {
        public override string Name => "timm CLIP ViT";

        public override bool Matches(IReadOnlyDictionary<string, Tensor> tensors) =>
            tensors.ContainsKey("norm_pre.weight") && tensors.ContainsKey("patch_embed.proj.weight") && tensors.ContainsKey("cls_token");

        public override ConvertedCheckpoint Convert(TensorCheckpoint checkpoint, IReadOnlyDictionary<string, Tensor> tensors)
        {
            var w = new OrderedDictionary<string, Tensor>();
            var ignored = new Dictionary<string, string>();
            bool projection = tensors.TryGetValue("head.bias", out var bias) && bias.count_nonzero().item<long>() == 0 && !tensors.ContainsKey("proj.weight");
            foreach (var (key, tensor) in tensors)
            {
                if (projection && key == "head.weight") w["proj.weight"] = tensor;
                else if (projection && key == "head.bias") ignored[key] = "the zero bias timm gives CLIP's bias-free image projection.";
                else w[key] = tensor;
            }
            return new ConvertedCheckpoint(Name, w, ignored, Assumptions:
                ["activation: GELU assumed (timm's CLIP ViTs); the weights do not tell it: choose a *_clip_quickgelu_224 preset for OpenAI's weights."]);
        }
    }
}
