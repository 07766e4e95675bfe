using System.Text.Json;
using Microsoft.ML.RepAdapter.Formats;
using Microsoft.ML.RepAdapter.Torch;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Backbones;

/// <summary>
/// The Vision Transformer family: timm's presets and names, and the checkpoints it reads: timm state dicts, Google's
/// original .npz files (big_vision / vision_transformer) and Hugging Face's ViTModel / ViTForImageClassification.
/// </summary>
public sealed class VisionTransformerFamily : BackboneFamily
{
    /// <summary>The family.</summary>
    public static VisionTransformerFamily Instance { get; } = new();

    private VisionTransformerFamily() { }

    /// <summary>timm's preset names for the ViT variants.</summary>
    public static IReadOnlyDictionary<string, VisionTransformerConfig> PresetConfigs { get; } = new Dictionary<string, VisionTransformerConfig>
    {
        ["vit_tiny_patch16_224"] = new(EmbedDim: 192, NumHeads: 3),
        ["vit_small_patch16_224"] = new(EmbedDim: 384, NumHeads: 6),
        ["vit_base_patch16_224"] = new(),
        ["vit_base_patch32_224"] = new(PatchSize: 32),
        ["vit_large_patch16_224"] = new(EmbedDim: 1024, Depth: 24, NumHeads: 16),
        ["vit_large_patch14_224"] = new(PatchSize: 14, EmbedDim: 1024, Depth: 24, NumHeads: 16),
        ["vit_base_patch16_384"] = new(ImageSize: 384),
        ["vit_large_patch16_384"] = new(ImageSize: 384, EmbedDim: 1024, Depth: 24, NumHeads: 16),
        // Google's ImageNet-21k ViT-B/16 (ViT-B_16.npz, the paper's backbone) with its pre-logits layer.
        ["vit_base_patch16_224_in21k"] = new(RepresentationSize: 768, NumClasses: 21843),
        // DINOv2 (timm's names; the Hub's weights have no head): LayerScale, patch 14 at 518 px, and the reg4 variants' four
        // registers, whose position embeddings cover the patches only.
        ["vit_small_patch14_dinov2"] = Dinov2(384, 6),
        ["vit_base_patch14_dinov2"] = Dinov2(768, 12),
        ["vit_large_patch14_dinov2"] = Dinov2(1024, 16, depth: 24),
        ["vit_small_patch14_reg4_dinov2"] = Dinov2(384, 6, registers: 4),
        ["vit_base_patch14_reg4_dinov2"] = Dinov2(768, 12, registers: 4),
        ["vit_large_patch14_reg4_dinov2"] = Dinov2(1024, 16, depth: 24, registers: 4),
        // DeiT: the plain models are ViTs; the distilled ones add a distillation token and head.
        ["deit_tiny_patch16_224"] = new(EmbedDim: 192, NumHeads: 3),
        ["deit_small_patch16_224"] = new(EmbedDim: 384, NumHeads: 6),
        ["deit_base_patch16_224"] = new(),
        ["deit_tiny_distilled_patch16_224"] = new(EmbedDim: 192, NumHeads: 3, DistillationToken: true),
        ["deit_small_distilled_patch16_224"] = new(EmbedDim: 384, NumHeads: 6, DistillationToken: true),
        ["deit_base_distilled_patch16_224"] = new(DistillationToken: true),
    };

    private static VisionTransformerConfig Dinov2(int width, int heads, int depth = 12, int registers = 0) =>
        new(ImageSize: 518, PatchSize: 14, EmbedDim: width, Depth: depth, NumHeads: heads, NumClasses: 0, LayerScaleInit: 1e-5,
            RegisterTokens: registers, NoEmbedClass: registers > 0);

    /// <inheritdoc/>
    public override string Name => "VisionTransformer";

    /// <inheritdoc/>
    public override IReadOnlyCollection<string> Presets => [.. PresetConfigs.Keys];

    /// <inheritdoc/>
    public override Backbone Create(string preset, PresetOverrides overrides)
    {
        var config = PresetConfigs[preset];
        return new VisionTransformer(config with
        {
            DropPathRate = overrides.DropPathRate,
            NumClasses = overrides.NumClasses ?? config.NumClasses,
            ImageSize = overrides.ImageSize ?? config.ImageSize,
        }, preset);
    }

    /// <inheritdoc/>
    public override Backbone Build(string architecture, ImageInputSpec input, JsonElement config) =>
        new VisionTransformer(config.Deserialize<VisionTransformerConfig>(BackboneDescriptor.Json)!, architecture, input);

    /// <inheritdoc/>
    public override JsonElement WithDropPathRate(JsonElement config, double rate) =>
        JsonSerializer.SerializeToElement(config.Deserialize<VisionTransformerConfig>(BackboneDescriptor.Json)! with { DropPathRate = rate }, BackboneDescriptor.Json);

    /// <inheritdoc/>
    public override Type LoadOptionsType => typeof(VisionTransformerLoadOptions);

    /// <inheritdoc/>
    public override IReadOnlyList<CheckpointLayout> Layouts { get; } =
    [
        // timm's own names; a pre-normed ViT is CLIP's, whose family reads it.
        new OwnNamesLayout("timm ViT", t => t.ContainsKey("patch_embed.proj.weight") && t.ContainsKey("cls_token") && !t.ContainsKey("norm_pre.weight")
            && !t.ContainsKey("head_dist.weight") && !t.ContainsKey("mask_token")),
        new DistilledLayout(),
        new MetaDinov2Layout(),
        new GoogleLayout(),
        new HuggingFaceLayout(),
    ];

    /// <summary>
    /// Embedding width, depth, MLP ratio, patch size, qkv bias, pre-norm, pre-logits, LayerScale, register and
    /// distillation tokens and the checkpoint's image size (from the position embeddings) come from the shapes. The
    /// number of attention heads is not in the shapes: it is <see cref="VisionTransformerLoadOptions.NumHeads"/>, else the preset's, else width / 64 (the rule of ViT-Ti/S/B/L, not ViT-H),
    /// and an error when the width is not a multiple of 64. The name is the preset that matches, if any.
    /// </summary>
    public override Backbone CreateFromWeights(string path, ConvertedCheckpoint converted, string? preset, CheckpointOptions options)
    {
        var w = converted.Weights;
        var known = preset is null ? null : PresetConfigs.TryGetValue(preset, out var config) ? config
            : throw new ArgumentException($"Unknown ViT preset '{preset}'. Known presets: {string.Join(", ", PresetConfigs.Keys)}.", nameof(preset));
        var inferred = InferConfig(path, w, known, options);
        string? matchingPreset = PresetConfigs.FirstOrDefault(p => p.Value with { NumClasses = inferred.NumClasses } == inferred).Key;
        return new VisionTransformer(inferred, preset ?? matchingPreset ?? $"vit_patch{inferred.PatchSize}_dim{inferred.EmbedDim}_depth{inferred.Depth}");
    }

    /// <summary>
    /// The config that checkpoint tensors in this family's names describe (see <see cref="CreateFromWeights"/>), or
    /// <paramref name="preset"/> checked against them. Shared with the families whose models are ViTs (CLIP).
    /// </summary>
    public static VisionTransformerConfig InferConfig(string path, IReadOnlyDictionary<string, Tensor> w, VisionTransformerConfig? preset, CheckpointOptions options)
    {
        var vit = Instance.OwnLoadOptions<VisionTransformerLoadOptions>(options.Family) ?? new();
        var cls = KeyTaker.Require(path, w, "cls_token", rank: 3);
        var patch = KeyTaker.Require(path, w, "patch_embed.proj.weight", rank: 4);
        var pos = KeyTaker.Require(path, w, "pos_embed", rank: 3);
        int embedDim = (int)cls.shape[2];
        int patchSize = (int)patch.shape[2];
        if (patch.shape[3] != patchSize) throw new CheckpointException(path, "patch_embed.proj.weight", $"expected square patches, found {Describe.ShapeOf(patch)}.");
        int registers = w.TryGetValue("reg_token", out var reg) ? (int)KeyTaker.Require(path, w, "reg_token", rank: 3).shape[1] : 0;
        bool distilled = w.ContainsKey("dist_token");
        int prefix = 1 + (distilled ? 1 : 0) + registers;
        // Position embeddings cover the grid alone (timm's no_embed_class: DINOv2 reg4), else the prefix tokens and the grid.
        // A square count means the former: with 1 or 2 prefix tokens both cannot be squares, and with registers the
        // models that have them (DINOv2 reg4) are no_embed_class.
        bool IsSquare(long n) => n > 0 && (long)Math.Round(Math.Sqrt(n)) is long r && r * r == n;
        bool noEmbedClass = IsSquare(pos.shape[1]);
        if (!noEmbedClass && !IsSquare(pos.shape[1] - prefix))
            throw new CheckpointException(path, "pos_embed", $"expected {prefix} prefix token(s) + a square grid of positions (or the grid alone), found {Describe.ShapeOf(pos)}.");
        int grid = (int)Math.Round(Math.Sqrt(pos.shape[1] - (noEmbedClass ? 0 : prefix)));
        if (w.ContainsKey("blocks.0.mlp.w12.weight") || w.ContainsKey("blocks.0.mlp.fc1_g.weight"))
            throw new CheckpointException(path, "blocks.0.mlp", "a SwiGLU MLP (DINOv2 giant, EVA) is not supported: the adapted ViTs have a GELU MLP (mlp.fc1, mlp.fc2).");
        bool hasPreLogits = w.ContainsKey("pre_logits.fc.weight");
        if (vit.KeepPreLogits && !hasPreLogits)
            throw new CheckpointException(path, "pre_logits.fc.weight", "KeepPreLogits: expected a pre-logits layer in the checkpoint, found none.");
        int? representation = vit.KeepPreLogits ? (int)KeyTaker.Require(path, w, "pre_logits.fc.weight", rank: 2).shape[0] : null;
        int? projection = w.TryGetValue("proj.weight", out var proj) ? (int)proj.shape[0] : null;
        // A head trained on the pre-logits output is useless without them (LeftOut ignores it then).
        int checkpointClasses = w.TryGetValue("head.weight", out var head) && (vit.KeepPreLogits || !hasPreLogits) ? (int)head.shape[0] : 0;

        VisionTransformerConfig config;
        if (preset is not null)
        {
            config = preset;
            if (vit.NumHeads is int heads) config = config with { NumHeads = heads };
        }
        else
        {
            int depth = 0;
            while (w.ContainsKey($"blocks.{depth}.norm1.weight")) depth++;
            var fc1 = KeyTaker.Require(path, w, "blocks.0.mlp.fc1.weight", rank: 2);
            config = new VisionTransformerConfig(
                ImageSize: grid * patchSize,
                PatchSize: patchSize,
                EmbedDim: embedDim,
                Depth: depth,
                NumHeads: vit.NumHeads ?? DefaultHeads(path, embedDim),
                MlpRatio: (double)fc1.shape[0] / embedDim,
                QkvBias: w.ContainsKey("blocks.0.attn.qkv.bias"),
                PreNorm: w.ContainsKey("norm_pre.weight"),
                ImageProjection: projection,
                // LayerScale (DINOv2, CaiT): the gammas are loaded, so the init value only matters for a new model.
                LayerScaleInit: w.ContainsKey("blocks.0.ls1.gamma") ? 1e-5 : null,
                RegisterTokens: registers,
                DistillationToken: distilled,
                NoEmbedClass: noEmbedClass);
        }
        return config with
        {
            ImageSize = options.ImageSize ?? config.ImageSize,
            RepresentationSize = representation,
            NumClasses = options.NumClasses ?? checkpointClasses,
        };
    }

    /// <summary>Widths whose models do not follow width / 64: ViT-H/14 (1280), ViT-g/14 (1408) and ViT-bigG/14 (1664) have 16 heads.</summary>
    private static readonly IReadOnlyDictionary<int, int> HeadsOfWidth = new Dictionary<int, int> { [1280] = 16, [1408] = 16, [1664] = 16 };

    private static int DefaultHeads(string path, int embedDim) =>
        HeadsOfWidth.TryGetValue(embedDim, out int heads) ? heads
        : embedDim % 64 == 0 ? embedDim / 64
            : throw new CheckpointException(path, "cls_token",
                $"attention heads: the shapes do not determine them and the default rule (width / 64) needs a width that is a multiple of 64, found {embedDim}; pass VisionTransformerLoadOptions(NumHeads: n) (the trainer's BackboneLoadOptions) or a preset.");

    /// <summary>The pre-logits layer of an ImageNet-21k checkpoint when the backbone does not keep it, and the head trained on it.</summary>
    public override IReadOnlyDictionary<string, string> LeftOut(IReadOnlyDictionary<string, Tensor> weights, Backbone target)
    {
        var left = new Dictionary<string, string>();
        if (!weights.Keys.Any(IsPreLogits) || target.state_dict().Keys.Any(IsPreLogits)) return left;
        foreach (var key in weights.Keys.Where(IsPreLogits)) left[key] = "the pre-logits layer is not kept (VisionTransformerLoadOptions.KeepPreLogits: false).";
        foreach (var key in weights.Keys.Where(target.IsHeadParameter)) left[key] = "this head was trained on the pre-logits output, which is not kept.";
        return left;
    }

    private static bool IsPreLogits(string key) => key.StartsWith("pre_logits.", StringComparison.Ordinal);

    /// <summary>Position embeddings at another grid are resampled to the backbone's, as timm does.</summary>
    public override (Tensor Value, string Note)? Resize(string path, string key, Tensor source, Backbone target)
    {
        if (key != "pos_embed" || target is not VisionTransformer vit || source.dim() != 3 || source.shape[2] != vit.Config.EmbedDim) return null;
        try
        {
            var resampled = VisionTransformer.ResamplePositionEmbedding(source.to(ScalarType.Float32), vit.Config.GridSize, vit.Config.EmbeddedPrefixTokens);
            return (resampled, $"pos_embed resampled from {Describe.ShapeOf(source)} to {Describe.ShapeOf(resampled)} (bicubic, antialiased, "
                + (vit.Config.EmbeddedPrefixTokens == 0 ? "patch positions only)." : $"{vit.Config.EmbeddedPrefixTokens} prefix position(s) kept)."));
        }
        catch (ArgumentException e)
        {
            throw new CheckpointException(path, "pos_embed", $"cannot resample {Describe.ShapeOf(source)} to a {vit.Config.GridSize}x{vit.Config.GridSize} grid: {e.Message}", e);
        }
    }

    /// <summary>The official code's <c>blocks.{i}.adapter_attn</c> feeds <c>attn.qkv</c>, <c>adapter_mlp</c> feeds <c>mlp.fc1</c>.</summary>
    public override string? OfficialAdapterSite(string officialModule)
    {
        var parts = officialModule.Split('.');
        if (parts.Length != 3 || parts[0] != "blocks" || !int.TryParse(parts[1], out _)) return null;
        return parts[2] switch
        {
            "adapter_attn" => $"blocks.{parts[1]}.attn.qkv",
            "adapter_mlp" => $"blocks.{parts[1]}.mlp.fc1",
            _ => null,
        };
    }

    /// <summary>
    /// timm's DeiT distilled models (<c>VisionTransformerDistilled</c>): predict the mean of <c>head</c> on the class token
    /// and <c>head_dist</c> on the distillation token, which is one linear head on the two tokens side by side (the
    /// backbone's pooled feature): weight [W / 2, W_dist / 2], bias (b + b_dist) / 2.
    /// </summary>
    private sealed class DistilledLayout : CheckpointLayout
    {
        public override string Name => "timm DeiT distilled";

        public override bool Matches(IReadOnlyDictionary<string, Tensor> tensors) =>
            tensors.ContainsKey("dist_token") && tensors.ContainsKey("head_dist.weight");

        public override ConvertedCheckpoint Convert(TensorCheckpoint checkpoint, IReadOnlyDictionary<string, Tensor> tensors)
        {
            var keys = new KeyTaker(checkpoint.Path, tensors);
            var w = new OrderedDictionary<string, Tensor>();
            foreach (var key in tensors.Keys.Where(k => !k.StartsWith("head.", StringComparison.Ordinal) && !k.StartsWith("head_dist.", StringComparison.Ordinal)))
                w[key] = keys.Take(key);
            var head = keys.Take("head.weight", rank: 2);
            var headDist = keys.Take("head_dist.weight", rank: 2);
            if (!head.shape.SequenceEqual(headDist.shape))
                throw new CheckpointException(checkpoint.Path, "head_dist.weight", $"expected the shape of head.weight {Describe.ShapeOf(head)}, found {Describe.ShapeOf(headDist)}.");
            w["head.weight"] = cat([head, headDist], 1).Times(0.5);
            w["head.bias"] = keys.Take("head.bias", rank: 1).Plus(keys.Take("head_dist.bias", rank: 1)).Times(0.5);
            keys.ThrowIfAnyUnused(Name);
            return new ConvertedCheckpoint(Name, w, new Dictionary<string, string>(),
                ["head and head_dist folded into one head over the class and distillation tokens (the mean of the two, as timm predicts)."]);
        }
    }

    /// <summary>
    /// Meta's DINOv2 checkpoints (facebookresearch/dinov2, torch.hub): timm's names plus the masked-image-modeling
    /// <c>mask_token</c> (unused here); with registers (<c>register_tokens</c>) the class token's position embedding is
    /// the first row of <c>pos_embed</c>, which timm adds to the class token to get its no_embed_class model (the
    /// conversion of timm's <c>_convert_dinov2</c>).
    /// </summary>
    private sealed class MetaDinov2Layout : CheckpointLayout
    {
        public override string Name => "Meta DINOv2";

        public override bool Matches(IReadOnlyDictionary<string, Tensor> tensors) =>
            tensors.ContainsKey("mask_token") && tensors.ContainsKey("patch_embed.proj.weight") && tensors.ContainsKey("cls_token");

        public override ConvertedCheckpoint Convert(TensorCheckpoint checkpoint, IReadOnlyDictionary<string, Tensor> tensors)
        {
            var keys = new KeyTaker(checkpoint.Path, tensors);
            var w = new OrderedDictionary<string, Tensor>();
            keys.Take("mask_token");
            bool registers = keys.Has("register_tokens");
            foreach (var key in tensors.Keys.Where(k => k is not ("mask_token" or "register_tokens" or "cls_token" or "pos_embed")))
                w[key] = keys.Take(key);
            var cls = keys.Take("cls_token", rank: 3);
            var pos = keys.Take("pos_embed", rank: 3);
            if (registers)
            {
                w["cls_token"] = cls.Plus(pos.narrow(1, 0, 1));
                w["reg_token"] = keys.Take("register_tokens", rank: 3);
                w["pos_embed"] = pos.narrow(1, 1, pos.shape[1] - 1).contiguous();
            }
            else
            {
                w["cls_token"] = cls;
                w["pos_embed"] = pos;
            }
            keys.ThrowIfAnyUnused(Name);
            return new ConvertedCheckpoint(Name, w, new Dictionary<string, string> { ["mask_token"] = "DINOv2's masked-image-modeling token: used in pretraining only." },
                registers ? ["the class token's position embedding added to the class token, the registers' none (timm's no_embed_class DINOv2)."] : null);
        }
    }

    /// <summary>
    /// Google ViT .npz -> timm (the inverse of what timm's _load_weights undoes): kernels are [in, out], q/k/v kernels
    /// [D, heads, head_dim], out/kernel [heads, head_dim, D], embedding/kernel HWIO. "opt/target/" (Flax optimizer
    /// checkpoints) is accepted as a prefix.
    /// </summary>
    private sealed class GoogleLayout : CheckpointLayout
    {
        public override string Name => "Google ViT .npz";

        public override bool Matches(IReadOnlyDictionary<string, Tensor> tensors) =>
            tensors.ContainsKey("embedding/kernel") || tensors.ContainsKey("opt/target/embedding/kernel");

        public override ConvertedCheckpoint Convert(TensorCheckpoint checkpoint, IReadOnlyDictionary<string, Tensor> tensors)
        {
            var keys = new KeyTaker(checkpoint.Path, tensors);
            string p = keys.Has("opt/target/embedding/kernel") ? "opt/target/" : "";
            var w = new OrderedDictionary<string, Tensor>();
            w["patch_embed.proj.weight"] = keys.Take(p + "embedding/kernel", rank: 4).permute(3, 2, 0, 1).contiguous();   // HWIO -> OIHW
            w["patch_embed.proj.bias"] = keys.Take(p + "embedding/bias");
            w["cls_token"] = keys.Take(p + "cls");
            w["pos_embed"] = keys.Take(p + "Transformer/posembed_input/pos_embedding");
            int depth = keys.CountBlocks(i => $"{p}Transformer/encoderblock_{i}/LayerNorm_0/scale");
            for (int i = 0; i < depth; i++)
            {
                string s = $"{p}Transformer/encoderblock_{i}/", t = $"blocks.{i}.", mha = s + "MultiHeadDotProductAttention_1/";
                w[t + "norm1.weight"] = keys.Take(s + "LayerNorm_0/scale");
                w[t + "norm1.bias"] = keys.Take(s + "LayerNorm_0/bias");
                // q/k/v kernel [D, heads, head_dim] -> rows of the fused [3D, D] weight.
                string[] parts = ["query", "key", "value"];
                w[t + "attn.qkv.weight"] = keys.Concat(parts.Select(n => mha + n + "/kernel").ToArray(), k => k.flatten(1).t(), rank: 3);
                w[t + "attn.qkv.bias"] = keys.Concat(parts.Select(n => mha + n + "/bias").ToArray(), b => b.flatten(), rank: 2);
                w[t + "attn.proj.weight"] = keys.Take(mha + "out/kernel", rank: 3).flatten(0, 1).t().contiguous();         // [heads, hd, D] -> [D, heads*hd]
                w[t + "attn.proj.bias"] = keys.Take(mha + "out/bias");
                w[t + "norm2.weight"] = keys.Take(s + "LayerNorm_2/scale");
                w[t + "norm2.bias"] = keys.Take(s + "LayerNorm_2/bias");
                for (int r = 0; r < 2; r++)
                {
                    w[t + $"mlp.fc{r + 1}.weight"] = keys.Take(s + $"MlpBlock_3/Dense_{r}/kernel", rank: 2).t().contiguous();
                    w[t + $"mlp.fc{r + 1}.bias"] = keys.Take(s + $"MlpBlock_3/Dense_{r}/bias");
                }
            }
            w["norm.weight"] = keys.Take(p + "Transformer/encoder_norm/scale");
            w["norm.bias"] = keys.Take(p + "Transformer/encoder_norm/bias");
            if (keys.Has(p + "pre_logits/kernel"))
            {
                w["pre_logits.fc.weight"] = keys.Take(p + "pre_logits/kernel", rank: 2).t().contiguous();
                w["pre_logits.fc.bias"] = keys.Take(p + "pre_logits/bias");
            }
            if (keys.Has(p + "head/kernel"))
            {
                w["head.weight"] = keys.Take(p + "head/kernel", rank: 2).t().contiguous();
                w["head.bias"] = keys.Take(p + "head/bias");
            }
            keys.ThrowIfAnyUnused("Google ViT .npz");
            return new ConvertedCheckpoint(Name, w, new Dictionary<string, string>());
        }
    }

    /// <summary>Hugging Face ViT -> timm: q/k/v are fused as rows [0:D], [D:2D], [2D:3D]; ViTModel has no "vit." prefix.</summary>
    private sealed class HuggingFaceLayout : CheckpointLayout
    {
        public override string Name => "Hugging Face ViT";

        public override bool Matches(IReadOnlyDictionary<string, Tensor> tensors) =>
            tensors.ContainsKey("vit.embeddings.patch_embeddings.projection.weight") || tensors.ContainsKey("embeddings.patch_embeddings.projection.weight");

        public override ConvertedCheckpoint Convert(TensorCheckpoint checkpoint, IReadOnlyDictionary<string, Tensor> tensors)
        {
            var keys = new KeyTaker(checkpoint.Path, tensors);
            string p = keys.Has("vit.embeddings.patch_embeddings.projection.weight") ? "vit." : "";
            if (tensors.Keys.FirstOrDefault(k => k.EndsWith("embeddings.mask_token", StringComparison.Ordinal) || k.EndsWith(".layer_scale1.lambda1", StringComparison.Ordinal)) is string dinov2)
                throw new CheckpointException(checkpoint.Path, dinov2,
                    "Hugging Face's Dinov2Model layout is not supported: load timm's DINOv2 weights (the Hub's timm/vit_*_dinov2.lvd142m) or Meta's torch.hub .pth.");
            var w = new OrderedDictionary<string, Tensor>();
            var ignored = new Dictionary<string, string>();
            w["patch_embed.proj.weight"] = keys.Take(p + "embeddings.patch_embeddings.projection.weight");
            w["patch_embed.proj.bias"] = keys.Take(p + "embeddings.patch_embeddings.projection.bias");
            w["cls_token"] = keys.Take(p + "embeddings.cls_token");
            w["pos_embed"] = keys.Take(p + "embeddings.position_embeddings");
            int depth = keys.CountBlocks(i => $"{p}encoder.layer.{i}.layernorm_before.weight");
            (string Timm, string Hf)[] linears =
            [
                ("norm1", "layernorm_before"), ("attn.proj", "attention.output.dense"), ("norm2", "layernorm_after"),
                ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense"),
            ];
            for (int i = 0; i < depth; i++)
            {
                string h = $"{p}encoder.layer.{i}.", t = $"blocks.{i}.";
                string[] parts = ["query", "key", "value"];
                w[t + "attn.qkv.weight"] = keys.Concat(parts.Select(n => $"{h}attention.attention.{n}.weight").ToArray(), x => x, rank: 2);
                if (keys.Has($"{h}attention.attention.query.bias"))
                    w[t + "attn.qkv.bias"] = keys.Concat(parts.Select(n => $"{h}attention.attention.{n}.bias").ToArray(), x => x, rank: 1);
                foreach (var (timm, hf) in linears)
                {
                    w[$"{t}{timm}.weight"] = keys.Take($"{h}{hf}.weight");
                    w[$"{t}{timm}.bias"] = keys.Take($"{h}{hf}.bias");
                }
            }
            w["norm.weight"] = keys.Take(p + "layernorm.weight");
            w["norm.bias"] = keys.Take(p + "layernorm.bias");
            if (keys.Has("classifier.weight"))
            {
                w["head.weight"] = keys.Take("classifier.weight");
                w["head.bias"] = keys.Take("classifier.bias");
            }
            foreach (string pooler in new[] { p + "pooler.dense.weight", p + "pooler.dense.bias" })
            {
                if (!keys.Has(pooler)) continue;
                keys.Take(pooler);
                ignored[pooler] = "ViTModel's pooler (dense + tanh over the class token) is not part of timm's ViT; classification uses the final-norm class token.";
            }
            keys.ThrowIfAnyUnused("Hugging Face ViT");
            return new ConvertedCheckpoint(Name, w, ignored);
        }
    }
}
