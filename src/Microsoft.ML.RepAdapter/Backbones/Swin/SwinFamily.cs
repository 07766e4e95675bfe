using System.Text.Json;
using Microsoft.ML.RepAdapter.Formats;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Backbones;

/// <summary>The Swin Transformer family: timm's presets and names (window 7 at 224 px), read from timm state dicts.</summary>
public sealed class SwinFamily : BackboneFamily
{
    /// <summary>The family.</summary>
    public static SwinFamily Instance { get; } = new();

    private SwinFamily() { }

    /// <summary>timm's Swin presets.</summary>
    public static IReadOnlyDictionary<string, SwinConfig> PresetConfigs { get; } = new Dictionary<string, SwinConfig>
    {
        ["swin_tiny_patch4_window7_224"] = new([2, 2, 6, 2], [3, 6, 12, 24]),
        ["swin_small_patch4_window7_224"] = new([2, 2, 18, 2], [3, 6, 12, 24]),
        ["swin_base_patch4_window7_224"] = new([2, 2, 18, 2], [4, 8, 16, 32], EmbedDim: 128),
    };

    /// <inheritdoc/>
    public override string Name => "Swin";

    /// <inheritdoc/>
    public override IReadOnlyCollection<string> Presets => [.. PresetConfigs.Keys];

    /// <inheritdoc/>
    public override Backbone Create(string preset, PresetOverrides overrides)
    {
        var config = PresetConfigs[preset];
        return new SwinTransformer(config with
        {
            NumClasses = overrides.NumClasses ?? config.NumClasses,
            ImageSize = overrides.ImageSize ?? config.ImageSize,
            DropPathRate = overrides.DropPathRate,
        }, preset);
    }

    /// <inheritdoc/>
    public override Backbone Build(string architecture, ImageInputSpec input, JsonElement config) =>
        new SwinTransformer(config.Deserialize<SwinConfig>(BackboneDescriptor.Json)!, architecture, input);

    /// <inheritdoc/>
    public override JsonElement WithDropPathRate(JsonElement config, double rate) =>
        JsonSerializer.SerializeToElement(config.Deserialize<SwinConfig>(BackboneDescriptor.Json)! with { DropPathRate = rate }, BackboneDescriptor.Json);

    /// <inheritdoc/>
    public override IReadOnlyList<CheckpointLayout> Layouts { get; } =
    [
        new SwinLayout("timm Swin", original: false),
        new SwinLayout("original Swin (Microsoft, timm < 0.9)", original: true),
    ];

    /// <summary>
    /// Stage depths, heads (from the bias tables), width, patch size, window (from the bias table's size), MLP ratio and qkv
    /// bias come from the shapes. The image size is the options', else the one a saved attention mask was made for (timm
    /// before 0.9.6 saved them), else that of timm's presets for the window (the last stage is one window: 224 px for
    /// window 7, 384 for 12). The name is the preset that matches, if any.
    /// </summary>
    public override Backbone CreateFromWeights(string path, ConvertedCheckpoint converted, string? preset, CheckpointOptions options)
    {
        var w = converted.Weights;
        int checkpointClasses = w.TryGetValue("head.fc.weight", out var fc) ? (int)fc.shape[0] : 0;
        SwinConfig config;
        if (preset is not null)
        {
            config = PresetConfigs.TryGetValue(preset, out var known) ? known
                : throw new ArgumentException($"Unknown Swin preset '{preset}'. Known presets: {string.Join(", ", PresetConfigs.Keys)}.", nameof(preset));
        }
        else
        {
            var patch = KeyTaker.Require(path, w, "patch_embed.proj.weight", rank: 4);
            var depths = new List<int>();
            var heads = new List<int>();
            for (int s = 0; w.ContainsKey($"layers.{s}.blocks.0.norm1.weight"); s++)
            {
                int depth = 0;
                while (w.ContainsKey($"layers.{s}.blocks.{depth}.norm1.weight")) depth++;
                depths.Add(depth);
                heads.Add((int)KeyTaker.Require(path, w, $"layers.{s}.blocks.0.attn.relative_position_bias_table", rank: 2).shape[1]);
            }
            // The first stage's table has (2 w - 1)^2 rows for window w (later stages may have a smaller window).
            long rows = w["layers.0.blocks.0.attn.relative_position_bias_table"].shape[0];
            int window = ((int)Math.Round(Math.Sqrt(rows)) + 1) / 2;
            if ((2 * window - 1) * (2 * window - 1) != rows)
                throw new CheckpointException(path, "layers.0.blocks.0.attn.relative_position_bias_table", $"expected (2 w - 1)^2 rows for a window w, found {rows}.");
            var fc1 = KeyTaker.Require(path, w, "layers.0.blocks.0.mlp.fc1.weight", rank: 2);
            int patchSize = (int)patch.shape[2];
            int imageSize = converted.ImageSize ?? window * (patchSize << (depths.Count - 1));
            config = new SwinConfig([.. depths], [.. heads], EmbedDim: (int)patch.shape[0], WindowSize: window, PatchSize: patchSize, ImageSize: imageSize,
                MlpRatio: (double)fc1.shape[0] / patch.shape[0], QkvBias: w.ContainsKey("layers.0.blocks.0.attn.qkv.bias"));
        }
        config = config with { NumClasses = options.NumClasses ?? checkpointClasses, ImageSize = options.ImageSize ?? config.ImageSize };
        string? matchingPreset = PresetConfigs.FirstOrDefault(p => p.Value with { NumClasses = config.NumClasses } == config).Key;
        return new SwinTransformer(config, preset ?? matchingPreset ?? $"swin_{string.Join("-", config.Depths)}_dim{config.EmbedDim}_window{config.WindowSize}");
    }

    /// <summary>
    /// timm's Swin names (<paramref name="original"/> false), or Microsoft's original checkpoints and timm's before 0.9
    /// (true): patch merging at the end of a stage rather than the start of the next and <c>head</c> rather than
    /// <c>head.fc</c>, the conversion of timm's checkpoint_filter_fn. Both may hold the derived buffers
    /// relative_position_index and attn_mask (timm 0.9.0-0.9.5 saved them in its own layout): they are left out, the model
    /// derives them, and the first stage's mask tells the resolution the file was made for.
    /// </summary>
    private sealed class SwinLayout(string name, bool original) : CheckpointLayout
    {
        public override string Name => name;

        /// <summary>Merging at the end of stage 0, or a head without <c>fc</c>: the original layout.</summary>
        private static bool IsOriginal(IReadOnlyDictionary<string, Tensor> tensors) =>
            tensors.ContainsKey("layers.0.downsample.reduction.weight") || tensors.ContainsKey("head.weight");

        public override bool Matches(IReadOnlyDictionary<string, Tensor> tensors) =>
            tensors.ContainsKey("layers.0.blocks.0.attn.relative_position_bias_table") && IsOriginal(tensors) == original;

        public override ConvertedCheckpoint Convert(TensorCheckpoint checkpoint, IReadOnlyDictionary<string, Tensor> tensors)
        {
            var w = new OrderedDictionary<string, Tensor>();
            var ignored = new Dictionary<string, string>();
            foreach (var (key, tensor) in tensors)
            {
                if (key.EndsWith(".relative_position_index", StringComparison.Ordinal) || key.EndsWith(".attn_mask", StringComparison.Ordinal))
                {
                    ignored[key] = "derived from the window size and shift; the model computes it.";
                    continue;
                }
                var parts = key.Split('.');
                if (original && parts.Length > 3 && parts[0] == "layers" && parts[2] == "downsample" && int.TryParse(parts[1], out int stage))
                    w[$"layers.{stage + 1}.downsample.{string.Join('.', parts[3..])}"] = tensor;
                else if (original && key.StartsWith("head.", StringComparison.Ordinal) && !key.StartsWith("head.fc.", StringComparison.Ordinal))
                    w["head.fc." + key["head.".Length..]] = tensor;
                else
                    w[key] = tensor;
            }
            return new ConvertedCheckpoint(Name, w, ignored, ImageSize: SavedImageSize(tensors));
        }

        /// <summary>
        /// The input resolution of a saved first-stage mask [windows, w*w, w*w]: sqrt(windows) windows of w patches per
        /// side; null when none is saved.
        /// </summary>
        private static int? SavedImageSize(IReadOnlyDictionary<string, Tensor> tensors)
        {
            if (!tensors.TryGetValue("layers.0.blocks.1.attn_mask", out var mask) || mask.dim() != 3
                || !tensors.TryGetValue("patch_embed.proj.weight", out var patch) || patch.dim() != 4) return null;
            long windows = (long)Math.Round(Math.Sqrt(mask.shape[0]));
            long window = (long)Math.Round(Math.Sqrt(mask.shape[1]));
            if (windows * windows != mask.shape[0] || window * window != mask.shape[1]) return null;
            return (int)(windows * window * patch.shape[2]);
        }
    }
}
