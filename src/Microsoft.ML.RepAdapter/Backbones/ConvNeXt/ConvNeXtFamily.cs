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
        // conv_mlp in timm; loaded as the linear MLP (see TimmLayout).
        ["convnext_atto"] = new([2, 2, 6, 2], [40, 80, 160, 320]),
        ["convnext_femto"] = new([2, 2, 6, 2], [48, 96, 192, 384]),
        ["convnext_pico"] = new([2, 2, 6, 2], [64, 128, 256, 512]),
        ["convnext_nano"] = new([2, 2, 8, 2], [80, 160, 320, 640]),
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
    public override IReadOnlyList<CheckpointLayout> Layouts { get; } = [new TimmLayout()];

    /// <summary>
    /// timm's names. The small models (atto, femto, pico, nano: <c>conv_mlp</c>) store the MLP as 1x1 convolutions
    /// [out, in, 1, 1] behind a channels-first LayerNorm; that is the same maths as the linear MLP behind a channels-last
    /// one, so the kernels are read as [out, in] matrices.
    /// </summary>
    private sealed class TimmLayout : CheckpointLayout
    {
        public override string Name => "timm ConvNeXt";

        public override bool Matches(IReadOnlyDictionary<string, Tensor> tensors) =>
            tensors.ContainsKey("stem.0.weight") && tensors.ContainsKey("stages.0.blocks.0.conv_dw.weight");

        public override ConvertedCheckpoint Convert(TensorCheckpoint checkpoint, IReadOnlyDictionary<string, Tensor> tensors)
        {
            var weights = new OrderedDictionary<string, Tensor>();
            var notes = new List<string>();
            foreach (var (key, tensor) in tensors)
            {
                bool convMlp = (key.EndsWith(".mlp.fc1.weight", StringComparison.Ordinal) || key.EndsWith(".mlp.fc2.weight", StringComparison.Ordinal))
                    && tensor.dim() == 4 && tensor.shape[2] == 1 && tensor.shape[3] == 1;
                weights.Add(key, convMlp ? tensor.flatten(1) : tensor);
                if (convMlp && notes.Count == 0) notes.Add("conv_mlp: the MLP's 1x1 convolutions read as linear layers (the same maths).");
            }
            return new ConvertedCheckpoint(Name, weights, new Dictionary<string, string>(), notes);
        }
    }

    /// <summary>Stage depths and widths come from the shapes; the name is the preset that matches, if any.</summary>
    public override Backbone CreateFromWeights(string path, ConvertedCheckpoint converted, string? preset, CheckpointOptions options)
    {
        var w = converted.Weights;
        // Variants whose blocks or stem differ from ConvNeXt V1's, refused by what is missing rather than by shapes.
        if (w.Keys.FirstOrDefault(k => k.Contains(".mlp.grn.", StringComparison.Ordinal)) is string grn)
            throw new CheckpointException(path, grn, "ConvNeXt V2 (global response norm in the MLP) is not supported: the ConvNeXt family reads V1 models (convnext_atto .. convnext_base).");
        if (KeyTaker.Require(path, w, "stem.0.weight", rank: 4).shape[2] != 4)
            throw new CheckpointException(path, "stem.0.weight", "an overlapping stem (timm's *_ols models) is not supported: the ConvNeXt family reads the 4x4 patchify stem.");
        if (w.ContainsKey("stem.1.weight") && !w.ContainsKey("stem.1.bias"))
            throw new CheckpointException(path, "stem.1.bias", "norms without a bias (timm's *_rms / simplenorm models) are not supported: the ConvNeXt family reads LayerNorm models.");
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
