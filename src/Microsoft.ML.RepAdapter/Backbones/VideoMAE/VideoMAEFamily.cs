using System.Text.Json;
using Microsoft.ML.RepAdapter.Formats;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Backbones;

/// <summary>
/// What a VideoMAE checkpoint can be told beyond its shapes. Give them through the loader's <c>loadOptions</c>.
/// </summary>
/// <param name="NumHeads">Attention heads (not in the shapes): null takes the preset's, else width / 64 (ViT-S/B/L).</param>
/// <param name="Frames">Frames per clip (not in the weights: the position table is computed): null takes the preset's, else 16.</param>
public sealed record VideoMAELoadOptions(int? NumHeads = null, int? Frames = null) : FamilyLoadOptions
{
    /// <inheritdoc/>
    public override void Validate()
    {
        if (NumHeads is <= 0) throw new ArgumentOutOfRangeException(nameof(NumHeads), NumHeads, "must be positive (or null)");
        if (Frames is <= 0) throw new ArgumentOutOfRangeException(nameof(Frames), Frames, "must be positive (or null)");
    }
}

/// <summary>
/// VideoMAE's video ViTs (<see cref="VideoVisionTransformer"/>): the fine-tuned checkpoints as the official code releases
/// them (a <c>module</c> or <c>model</c> entry, names as modeling_finetune.py) and Hugging Face's
/// VideoMAEForVideoClassification.
/// </summary>
public sealed class VideoMAEFamily : BackboneFamily
{
    /// <summary>The family.</summary>
    public static VideoMAEFamily Instance { get; } = new();

    private VideoMAEFamily() { }

    /// <summary>The official presets (16 frames, tubelets of 2, 224 px; Kinetics-400's 400 classes).</summary>
    public static IReadOnlyDictionary<string, VideoVisionTransformerConfig> PresetConfigs { get; } = new Dictionary<string, VideoVisionTransformerConfig>
    {
        ["videomae_small_patch16_224"] = new(EmbedDim: 384, NumHeads: 6),
        ["videomae_base_patch16_224"] = new(),
    };

    private const string HuggingFace = "Hugging Face VideoMAE";

    /// <inheritdoc/>
    public override string Name => "VideoMAE";

    /// <inheritdoc/>
    public override IReadOnlyCollection<string> Presets => [.. PresetConfigs.Keys];

    /// <inheritdoc/>
    public override Backbone Create(string preset, PresetOverrides overrides)
    {
        var config = PresetConfigs[preset];
        return new VideoVisionTransformer(config with
        {
            DropPathRate = overrides.DropPathRate,
            NumClasses = overrides.NumClasses ?? config.NumClasses,
            ImageSize = overrides.ImageSize ?? config.ImageSize,
        }, preset);
    }

    /// <inheritdoc/>
    public override Backbone Build(string architecture, ImageInputSpec input, JsonElement config) =>
        new VideoVisionTransformer(config.Deserialize<VideoVisionTransformerConfig>(BackboneDescriptor.Json)!, architecture, input);

    /// <inheritdoc/>
    public override JsonElement WithDropPathRate(JsonElement config, double rate) =>
        JsonSerializer.SerializeToElement(config.Deserialize<VideoVisionTransformerConfig>(BackboneDescriptor.Json)! with { DropPathRate = rate }, BackboneDescriptor.Json);

    /// <inheritdoc/>
    public override Type LoadOptionsType => typeof(VideoMAELoadOptions);

    /// <inheritdoc/>
    public override IReadOnlyList<CheckpointLayout> Layouts { get; } = [new OfficialLayout(), new HuggingFaceLayout()];

    /// <summary>
    /// Width, patch and tubelet sizes, depth, MLP ratio and classes come from the shapes; heads and frames from
    /// <see cref="VideoMAELoadOptions"/>, else the preset's, else width / 64 and 16; the image size from the loader's
    /// <c>imageSize</c>, else the preset's, else 224. Norm epsilons follow the layout's code: 1e-6 everywhere in the
    /// official model; Hugging Face's config default 1e-12 in the blocks and PyTorch's 1e-5 in <c>fc_norm</c>.
    /// </summary>
    public override Backbone CreateFromWeights(string path, ConvertedCheckpoint converted, string? preset, CheckpointOptions options)
    {
        var w = converted.Weights;
        var known = preset is null ? null : PresetConfigs.TryGetValue(preset, out var config) ? config
            : throw new ArgumentException($"Unknown VideoMAE preset '{preset}'. Known presets: {string.Join(", ", PresetConfigs.Keys)}.", nameof(preset));
        var own = OwnLoadOptions<VideoMAELoadOptions>(options.Family) ?? new();
        var patch = KeyTaker.Require(path, w, "patch_embed.proj.weight", rank: 5);
        int embedDim = (int)patch.shape[0], tubelet = (int)patch.shape[2], patchSize = (int)patch.shape[3];
        if (patch.shape[1] != 3 || patch.shape[4] != patchSize)
            throw new CheckpointException(path, "patch_embed.proj.weight", $"expected [D, 3, tubelet, p, p], found {Describe.ShapeOf(patch)}.");
        int depth = 0;
        while (w.ContainsKey($"blocks.{depth}.attn.qkv.weight")) depth++;
        if (depth == 0) throw new CheckpointException(path, "blocks.0.attn.qkv.weight", "missing: expected at least one block.");
        var fc1 = KeyTaker.Require(path, w, "blocks.0.mlp.fc1.weight", rank: 2);
        int heads = own.NumHeads ?? known?.NumHeads ?? (embedDim % 64 == 0 ? embedDim / 64
            : throw new CheckpointException(path, "patch_embed.proj.weight", $"width {embedDim} is not a multiple of 64: give the heads (VideoMAELoadOptions.NumHeads)."));
        int classes = options.NumClasses ?? (w.TryGetValue("head.weight", out var head) ? (int)head.shape[0] : 0);
        bool hf = converted.Layout == HuggingFace;
        var inferred = new VideoVisionTransformerConfig(
            ImageSize: options.ImageSize ?? known?.ImageSize ?? 224, PatchSize: patchSize, Frames: own.Frames ?? known?.Frames ?? 16,
            TubeletSize: tubelet, EmbedDim: embedDim, Depth: depth, NumHeads: heads, MlpRatio: (double)fc1.shape[0] / embedDim, NumClasses: classes,
            LayerNormEps: hf ? 1e-12 : 1e-6, FcNormEps: hf ? 1e-5 : 1e-6);
        string? matching = PresetConfigs.FirstOrDefault(p => p.Value with { NumClasses = classes, LayerNormEps = inferred.LayerNormEps, FcNormEps = inferred.FcNormEps } == inferred).Key;
        return new VideoVisionTransformer(inferred, preset ?? matching ?? $"videomae_patch{patchSize}_dim{embedDim}_depth{depth}");
    }

    /// <summary>The official fine-tuned names (modeling_finetune.py), with the q and v biases made one qkv bias.</summary>
    private sealed class OfficialLayout : CheckpointLayout
    {
        public override string Name => "VideoMAE (official)";

        public override bool Matches(IReadOnlyDictionary<string, Tensor> tensors) =>
            tensors.TryGetValue("patch_embed.proj.weight", out var patch) && patch.dim() == 5 && tensors.ContainsKey("blocks.0.attn.qkv.weight");

        public override ConvertedCheckpoint Convert(TensorCheckpoint checkpoint, IReadOnlyDictionary<string, Tensor> tensors)
        {
            var keys = new KeyTaker(checkpoint.Path, tensors);
            if (keys.Has("norm.weight"))
                throw new CheckpointException(checkpoint.Path, "norm.weight",
                    "a VideoMAE without mean pooling (use_mean_pooling=False: the first token after a final norm) is not supported; the released fine-tuned models pool the mean through fc_norm.");
            if (tensors.Keys.FirstOrDefault(k => k.Contains(".gamma_", StringComparison.Ordinal)) is string gamma)
                throw new CheckpointException(checkpoint.Path, gamma, "layer scale (init_values > 0) is not supported: the released VideoMAE models have none.");
            var w = new OrderedDictionary<string, Tensor>
            {
                ["patch_embed.proj.weight"] = keys.Take("patch_embed.proj.weight", rank: 5),
                ["patch_embed.proj.bias"] = keys.Take("patch_embed.proj.bias", rank: 1),
            };
            int depth = keys.CountBlocks(i => $"blocks.{i}.attn.qkv.weight");
            for (int i = 0; i < depth; i++)
            {
                string b = $"blocks.{i}.";
                foreach (string name in new[] { "norm1", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2" })
                {
                    w[$"{b}{name}.weight"] = keys.Take($"{b}{name}.weight");
                    w[$"{b}{name}.bias"] = keys.Take($"{b}{name}.bias");
                }
                w[$"{b}attn.qkv.weight"] = keys.Take($"{b}attn.qkv.weight", rank: 2);
                w[$"{b}attn.qkv.bias"] = QkvBias(keys, $"{b}attn.q_bias", $"{b}attn.v_bias");
            }
            return PooledAndHead(Name, keys, w, head: "head");
        }
    }

    /// <summary>Hugging Face's VideoMAEForVideoClassification (query, key and value apart; q and v biases).</summary>
    private sealed class HuggingFaceLayout : CheckpointLayout
    {
        public override string Name => HuggingFace;

        public override bool Matches(IReadOnlyDictionary<string, Tensor> tensors) => tensors.ContainsKey("videomae.embeddings.patch_embeddings.projection.weight");

        public override ConvertedCheckpoint Convert(TensorCheckpoint checkpoint, IReadOnlyDictionary<string, Tensor> tensors)
        {
            var keys = new KeyTaker(checkpoint.Path, tensors);
            if (keys.Has("videomae.layernorm.weight"))
                throw new CheckpointException(checkpoint.Path, "videomae.layernorm.weight",
                    "a VideoMAE without mean pooling (use_mean_pooling=False) is not supported; the released fine-tuned models pool the mean through fc_norm.");
            var w = new OrderedDictionary<string, Tensor>
            {
                ["patch_embed.proj.weight"] = keys.Take("videomae.embeddings.patch_embeddings.projection.weight", rank: 5),
                ["patch_embed.proj.bias"] = keys.Take("videomae.embeddings.patch_embeddings.projection.bias", rank: 1),
            };
            int depth = keys.CountBlocks(i => $"videomae.encoder.layer.{i}.layernorm_before.weight");
            (string Official, string Hf)[] renamed =
            [
                ("norm1", "layernorm_before"), ("attn.proj", "attention.output.dense"), ("norm2", "layernorm_after"),
                ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense"),
            ];
            for (int i = 0; i < depth; i++)
            {
                string h = $"videomae.encoder.layer.{i}.", b = $"blocks.{i}.";
                foreach (var (official, hf) in renamed)
                {
                    w[$"{b}{official}.weight"] = keys.Take($"{h}{hf}.weight");
                    w[$"{b}{official}.bias"] = keys.Take($"{h}{hf}.bias");
                }
                w[$"{b}attn.qkv.weight"] = keys.Concat([.. new[] { "query", "key", "value" }.Select(n => $"{h}attention.attention.{n}.weight")], x => x, rank: 2);
                w[$"{b}attn.qkv.bias"] = QkvBias(keys, $"{h}attention.attention.q_bias", $"{h}attention.attention.v_bias");
            }
            return PooledAndHead(Name, keys, w, head: "classifier");
        }
    }

    /// <summary><c>fc_norm</c> and the head (called <paramref name="head"/> in the file, when it has one); every key of the file must then be used.</summary>
    private static ConvertedCheckpoint PooledAndHead(string layout, KeyTaker keys, OrderedDictionary<string, Tensor> w, string head)
    {
        w["fc_norm.weight"] = keys.Take("fc_norm.weight", rank: 1);
        w["fc_norm.bias"] = keys.Take("fc_norm.bias", rank: 1);
        if (keys.Has($"{head}.weight"))
        {
            w["head.weight"] = keys.Take($"{head}.weight", rank: 2);
            w["head.bias"] = keys.Take($"{head}.bias", rank: 1);
        }
        keys.ThrowIfAnyUnused(layout);
        return new ConvertedCheckpoint(layout, w, new Dictionary<string, string>());
    }

    /// <summary>VideoMAE's attention bias: [q_bias, 0, v_bias] (its key has none), in float32 (DeepSpeed's files may be float16).</summary>
    private static Tensor QkvBias(KeyTaker keys, string q, string v)
    {
        var qBias = keys.Take(q, rank: 1).to(float32);
        var vBias = keys.Take(v, rank: 1).to(float32);
        if (!vBias.shape.SequenceEqual(qBias.shape))
            throw new CheckpointException(keys.Path, v, $"shape: expected {Describe.ShapeOf(qBias)} like '{q}', found {Describe.ShapeOf(vBias)}.");
        return cat([qBias, zeros_like(qBias), vBias], 0);
    }
}
