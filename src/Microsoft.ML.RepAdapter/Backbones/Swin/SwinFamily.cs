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
        new OwnNamesLayout("timm Swin", t => t.ContainsKey("layers.0.blocks.0.attn.relative_position_bias_table") && !OriginalLayout.IsOriginal(t)),
        new OriginalLayout(),
    ];

    /// <summary>
    /// Stage depths, heads (from the bias tables), width, patch size, window (from the bias table's size), MLP ratio and qkv
    /// bias come from the shapes; the image size is the options' or 224, the window's preset image size. The name is the
    /// preset that matches, if any.
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
            config = new SwinConfig([.. depths], [.. heads], EmbedDim: (int)patch.shape[0], WindowSize: window, PatchSize: (int)patch.shape[2],
                MlpRatio: (double)fc1.shape[0] / patch.shape[0], QkvBias: w.ContainsKey("layers.0.blocks.0.attn.qkv.bias"));
        }
        config = config with { NumClasses = options.NumClasses ?? checkpointClasses, ImageSize = options.ImageSize ?? config.ImageSize };
        string? matchingPreset = PresetConfigs.FirstOrDefault(p => p.Value with { NumClasses = config.NumClasses } == config).Key;
        return new SwinTransformer(config, preset ?? matchingPreset ?? $"swin_{string.Join("-", config.Depths)}_dim{config.EmbedDim}_window{config.WindowSize}");
    }

    /// <summary>
    /// Microsoft's original Swin checkpoints and timm's before 0.9: patch merging at the end of a stage rather than the
    /// start of the next, <c>head</c> rather than <c>head.fc</c>, and the derived buffers relative_position_index and
    /// attn_mask saved (left out here: the model derives them). The conversion of timm's checkpoint_filter_fn.
    /// </summary>
    private sealed class OriginalLayout : CheckpointLayout
    {
        public override string Name => "original Swin (Microsoft, timm < 0.9)";

        public static bool IsOriginal(IReadOnlyDictionary<string, Tensor> tensors) =>
            tensors.ContainsKey("layers.0.blocks.0.attn.relative_position_bias_table")
            && (tensors.ContainsKey("layers.0.downsample.reduction.weight") || tensors.ContainsKey("head.weight")
                || tensors.Keys.Any(k => k.EndsWith(".relative_position_index", StringComparison.Ordinal)));

        public override bool Matches(IReadOnlyDictionary<string, Tensor> tensors) => IsOriginal(tensors);

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
                if (parts.Length > 3 && parts[0] == "layers" && parts[2] == "downsample" && int.TryParse(parts[1], out int stage))
                    w[$"layers.{stage + 1}.downsample.{string.Join('.', parts[3..])}"] = tensor;
                else if (key.StartsWith("head.", StringComparison.Ordinal) && !key.StartsWith("head.fc.", StringComparison.Ordinal))
                    w["head.fc." + key["head.".Length..]] = tensor;
                else
                    w[key] = tensor;
            }
            return new ConvertedCheckpoint(Name, w, ignored);
        }
    }
}
