using System.Text.Json;
using Microsoft.ML.RepAdapter.Formats;
using Microsoft.ML.RepAdapter.Torch;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Backbones;

/// <summary>
/// The ResNet family: torchvision's presets and names, torchvision state dicts, and ML.NET's own pretrained ResNet-18
/// (the ONNX files of the Microsoft.ML.DnnImageFeaturizer.ResNet18 package) as built-in weights.
/// </summary>
public sealed class ResNetFamily : BackboneFamily
{
    /// <summary>The family.</summary>
    public static ResNetFamily Instance { get; } = new();

    private ResNetFamily() { }

    /// <summary>The name of ML.NET's pretrained ResNet-18 among <see cref="BuiltInWeights"/>.</summary>
    public const string MLNetResNet18 = "mlnet_resnet18";

    /// <summary>torchvision's ResNet presets.</summary>
    public static IReadOnlyDictionary<string, ResNetConfig> PresetConfigs { get; } = new Dictionary<string, ResNetConfig>
    {
        ["resnet18"] = new(ResNetBlock.Basic, [2, 2, 2, 2]),
        ["resnet34"] = new(ResNetBlock.Basic, [3, 4, 6, 3]),
        ["resnet50"] = new(ResNetBlock.Bottleneck, [3, 4, 6, 3]),
    };

    /// <inheritdoc/>
    public override string Name => "ResNet";

    /// <inheritdoc/>
    public override IReadOnlyCollection<string> Presets => [.. PresetConfigs.Keys];

    /// <inheritdoc/>
    public override Backbone Create(string preset, PresetOverrides overrides)
    {
        var config = PresetConfigs[preset];
        return new ResNet(config with { NumClasses = overrides.NumClasses ?? config.NumClasses, ImageSize = overrides.ImageSize ?? config.ImageSize }, preset);
    }

    /// <inheritdoc/>
    public override Backbone Build(string architecture, ImageInputSpec input, JsonElement config) =>
        new ResNet(config.Deserialize<ResNetConfig>(BackboneDescriptor.Json)!, architecture, input);

    /// <inheritdoc/>
    public override IReadOnlyList<CheckpointLayout> Layouts { get; } =
        [new OwnNamesLayout("torchvision ResNet", t => t.ContainsKey("layer1.0.conv1.weight"))];

    /// <summary>Block type, stage depths and widths come from the shapes; the name is the preset that matches, if any.</summary>
    public override Backbone CreateFromWeights(string path, ConvertedCheckpoint converted, string? preset, CheckpointOptions options)
    {
        var w = converted.Weights;
        int checkpointClasses = w.TryGetValue("fc.weight", out var fc) ? (int)fc.shape[0] : 0;
        ResNetConfig config;
        if (preset is not null)
        {
            config = PresetConfigs.TryGetValue(preset, out var known) ? known
                : throw new ArgumentException($"Unknown ResNet preset '{preset}'. Known presets: {string.Join(", ", PresetConfigs.Keys)}.", nameof(preset));
        }
        else
        {
            var block = w.ContainsKey("layer1.0.conv3.weight") ? ResNetBlock.Bottleneck : ResNetBlock.Basic;
            var layers = new int[4];
            var widths = new int[4];
            for (int s = 0; s < 4; s++)
            {
                while (w.ContainsKey($"layer{s + 1}.{layers[s]}.conv1.weight")) layers[s]++;
                widths[s] = (int)KeyTaker.Require(path, w, $"layer{s + 1}.0.conv1.weight", rank: 4).shape[0];
            }
            config = new ResNetConfig(block, layers, widths);
        }
        config = config with { NumClasses = options.NumClasses ?? checkpointClasses, ImageSize = options.ImageSize ?? config.ImageSize };
        string? matchingPreset = PresetConfigs.FirstOrDefault(p => p.Value with { NumClasses = config.NumClasses, ImageSize = config.ImageSize } == config).Key;
        return new ResNet(config, preset ?? matchingPreset ?? $"resnet_{config.Block.ToString().ToLowerInvariant()}_{string.Join("-", config.Layers)}");
    }

    /// <inheritdoc/>
    public override IReadOnlyCollection<string> BuiltInWeights => [MLNetResNet18];

    /// <summary>
    /// ML.NET's own pretrained ResNet-18 (ImageNet), from the ONNX files of the Microsoft.ML.DnnImageFeaturizer.ResNet18
    /// package, so a real pretrained backbone works offline. Its graph is a torchvision-style BasicBlock ResNet with
    /// stages [2, 2, 2, 3] (one block more than torchvision's ResNet-18 in the last stage) and separate BatchNorms; its
    /// preprocessing (ResNetPreprocess.onnx) turns RGB 0..255 into BGR minus a per-pixel mean image. The backbone
    /// reproduces that exactly: <see cref="Backbone.Input"/> is BGR, scale 1, std 1, minus the mean image's per-channel
    /// averages, and the per-pixel remainder is the ResNet's fixed <c>input_offset</c>. The network was trained at 224 x 224;
    /// at another <paramref name="imageSize"/> the mean image is resampled to that size (bilinear, antialiased), an
    /// approximation of the preprocessing it was trained with (the convolutions themselves work at any size).
    /// </summary>
    /// <param name="name"><see cref="MLNetResNet18"/>.</param>
    /// <param name="numClasses">Classes of a new, freshly initialised head (0: none; the ONNX graph has no classifier).</param>
    /// <param name="directory">The package's <c>DnnImageModels</c> folder. Null looks next to the application
    /// (where the package copies it) and then in the NuGet package cache.</param>
    /// <param name="imageSize">Input resolution; null: 224, as trained.</param>
    public override BuiltInCheckpoint LoadBuiltIn(string name, int numClasses, string? directory, int? imageSize = null)
    {
        if (name != MLNetResNet18) return base.LoadBuiltIn(name, numClasses, directory, imageSize);
        if (imageSize is <= 0) throw new ArgumentOutOfRangeException(nameof(imageSize), imageSize, "The image size must be positive.");
        directory = LocateDnnImageModels(directory);
        string modelPath = Path.Combine(directory, "ResNet18Onnx", "ResNet18.onnx");
        string preprocessPath = Path.Combine(directory, "ResNetPrepOnnx", "ResNetPreprocess.onnx");
        // The returned weights are the checkpoints' tensors: the caller's dispose scope frees them after loading.
        var model = CheckpointReader.Read(modelPath);
        if (model.Format != CheckpointFormat.Onnx) throw new CheckpointException(modelPath, null, $"expected an ONNX model, found {model.Format}.");
        var graph = OnnxResNetImport.Convert(model);
        var preprocess = CheckpointReader.Read(preprocessPath);
        var meanImage = OnnxResNetImport.ReadMeanImage(preprocess, graph.ImageSize);
        int size = imageSize ?? graph.ImageSize;
        if (size != graph.ImageSize)
            meanImage = nn.functional.interpolate(meanImage, [size, size], mode: InterpolationMode.Bilinear, align_corners: false, antialias: true);
        var channelMeans = meanImage.mean([0, 2, 3]);
        graph.Weights.Add("input_offset", channelMeans.view(1, 3, 1, 1) - meanImage);

        float[] means = channelMeans.data<float>().ToArray();
        var input = new ImageInputSpec(size, means, [1f, 1f, 1f], PixelScale: 1f, Order: ChannelOrder.Bgr);
        var config = new ResNetConfig(ResNetBlock.Basic, graph.Layers, graph.Widths, numClasses, size, HasInputOffset: true);
        var backbone = ModuleScopes.Unscoped(() => new ResNet(config, MLNetResNet18, input));
        return new BuiltInCheckpoint(backbone, modelPath, CheckpointFormat.Onnx,
            new ConvertedCheckpoint("ML.NET ResNet-18 ONNX", graph.Weights, new Dictionary<string, string>()));
    }

    /// <summary>Where <see cref="LoadBuiltIn"/> looks for the package's DnnImageModels folder, in order.</summary>
    public static IReadOnlyList<string> DnnImageModelsSearchPaths()
    {
        string packages = Environment.GetEnvironmentVariable("NUGET_PACKAGES")
            ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        return
        [
            Path.Combine(AppContext.BaseDirectory, "DnnImageModels"),
            Path.Combine(packages, "microsoft.ml.dnnimagefeaturizer.resnet18", "0.23.1", "tools", "DnnImageModels"),
        ];
    }

    private static string LocateDnnImageModels(string? modelDirectory)
    {
        var candidates = modelDirectory is null ? DnnImageModelsSearchPaths() : [modelDirectory];
        foreach (string candidate in candidates)
        {
            if (File.Exists(Path.Combine(candidate, "ResNet18Onnx", "ResNet18.onnx"))) return candidate;
        }
        throw new FileNotFoundException(
            "ML.NET's ResNet-18 (ResNet18Onnx/ResNet18.onnx) was not found in: " + string.Join(", ", candidates)
            + ". Reference the Microsoft.ML.DnnImageFeaturizer.ResNet18 package (it copies DnnImageModels next to the application) or pass its folder (a trainer's CheckpointPath with Architecture = \"" + MLNetResNet18 + "\", or LoadBuiltIn's directory).");
    }
}
