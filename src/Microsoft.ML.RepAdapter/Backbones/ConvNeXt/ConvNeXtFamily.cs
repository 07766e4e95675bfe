using System.Text.Json;
using Microsoft.ML.RepAdapter.Formats;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Backbones;

/// <summary>The ConvNeXt family: timm's presets and names, read from timm state dicts.</summary>
public sealed class ConvNeXtFamily : BackboneFamily
{
    /// <summary>The family.</summary>
    public static ConvNeXtFamily Instance { get; } = new();

    private ConvNeXtFamily() { }

    /// <summary>timm's ConvNeXt presets.</summary>
    public static IReadOnlyDictionary<string, ConvNeXtConfig> PresetConfigs { get; } = new Dictionary<string, ConvNeXtConfig>
    {
        ["convnext_tiny"] = new([3, 3, 9, 3], [96, 192, 384, 768]),
        ["convnext_small"] = new([3, 3, 27, 3], [96, 192, 384, 768]),
        ["convnext_base"] = new([3, 3, 27, 3], [128, 256, 512, 1024]),
    };

    /// <inheritdoc/>
    public override string Name => "ConvNeXt";

    /// <inheritdoc/>
    public override IReadOnlyCollection<string> Presets => [.. PresetConfigs.Keys];

    /// <inheritdoc/>
    public override Backbone Create(string preset, PresetOverrides overrides)
    {
        var config = PresetConfigs[preset];
        return new ConvNeXt(config with
        {
            NumClasses = overrides.NumClasses ?? config.NumClasses,
            ImageSize = overrides.ImageSize ?? config.ImageSize,
            DropPathRate = overrides.DropPathRate,
        }, preset);
    }

    /// <inheritdoc/>
    public override Backbone Build(string architecture, ImageInputSpec input, JsonElement config) =>
        new ConvNeXt(config.Deserialize<ConvNeXtConfig>(BackboneDescriptor.Json)!, architecture, input);

    /// <inheritdoc/>
    public override JsonElement WithDropPathRate(JsonElement config, double rate) =>
        JsonSerializer.SerializeToElement(config.Deserialize<ConvNeXtConfig>(BackboneDescriptor.Json)! with { DropPathRate = rate }, BackboneDescriptor.Json);

    /// <inheritdoc/>
    public override IReadOnlyList<CheckpointLayout> Layouts { get; } =
        [new OwnNamesLayout("timm ConvNeXt", t => t.ContainsKey("stem.0.weight") && t.ContainsKey("stages.0.blocks.0.conv_dw.weight"))];

    /// <summary>Stage depths and widths come from the shapes; the name is the preset that matches, if any.</summary>
    public override Backbone CreateFromWeights(string path, ConvertedCheckpoint converted, string? preset, CheckpointOptions options)
    {
        var w = converted.Weights;
        int checkpointClasses = w.TryGetValue("head.fc.weight", out var fc) ? (int)fc.shape[0] : 0;
        ConvNeXtConfig config;
        if (preset is not null)
        {
            config = PresetConfigs.TryGetValue(preset, out var known) ? known
                : throw new ArgumentException($"Unknown ConvNeXt preset '{preset}'. Known presets: {string.Join(", ", PresetConfigs.Keys)}.", nameof(preset));
        }
        else
        {
            var depths = new List<int>();
            var dims = new List<int>();
            for (int s = 0; w.ContainsKey($"stages.{s}.blocks.0.conv_dw.weight"); s++)
            {
                int depth = 0;
                while (w.ContainsKey($"stages.{s}.blocks.{depth}.conv_dw.weight")) depth++;
                depths.Add(depth);
                dims.Add((int)KeyTaker.Require(path, w, $"stages.{s}.blocks.0.conv_dw.weight", rank: 4).shape[0]);
            }
            config = new ConvNeXtConfig([.. depths], [.. dims]);
        }
        config = config with { NumClasses = options.NumClasses ?? checkpointClasses, ImageSize = options.ImageSize ?? config.ImageSize };
        string? matchingPreset = PresetConfigs.FirstOrDefault(p => p.Value with { NumClasses = config.NumClasses, ImageSize = config.ImageSize } == config).Key;
        return new ConvNeXt(config, preset ?? matchingPreset ?? $"convnext_{string.Join("-", config.Depths)}_{string.Join("-", config.Dims)}");
    }
}
