using Microsoft.ML.RepAdapter.Torch;
using Microsoft.ML.RepAdapter.Backbones;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Checkpoints;

/// <summary>A backbone built from a checkpoint, with what the load did.</summary>
public sealed record LoadedBackbone(Backbone Backbone, LoadReport Report);

/// <summary>
/// Builds backbones from pretrained checkpoints: the architecture is read from the tensor shapes (or named by a
/// preset), the weights are loaded strictly (<see cref="BackboneWeights.LoadWeights"/>).
/// </summary>
public static class PretrainedBackbones
{
    /// <summary>Architecture name of ML.NET's ResNet-18 (<see cref="LoadMLNetResNet18"/>); trainers accept it without a checkpoint.</summary>
    public const string MLNetResNet18 = "mlnet_resnet18";

    /// <summary>
    /// Loads a ViT (timm, Google .npz or Hugging Face layout) or a torchvision ResNet from any supported file format.
    /// <para>Architecture: ViT embedding width, depth, MLP ratio, patch size, qkv bias, pre-logits and the checkpoint's image
    /// size (from the position embeddings) come from the shapes. The number of attention heads is not in the shapes:
    /// it is <paramref name="numHeads"/>, else the <paramref name="preset"/>'s, else width / 64 (the rule of ViT-Ti/S/B/L,
    /// not ViT-H), and an error when the width is not a multiple of 64. ResNet block type, stage depths and widths come
    /// from the shapes. With a <paramref name="preset"/> the preset's architecture is used and the shapes must match it.
    /// The backbone's <see cref="Backbone.Architecture"/> is the preset name that matches the architecture, if any.</para>
    /// </summary>
    /// <param name="checkpointPath">The checkpoint file; its format is recognised from the content.</param>
    /// <param name="preset">A <see cref="VisionTransformerConfig.Presets"/> or <see cref="ResNetConfig.Presets"/> name, or null to infer the architecture.</param>
    /// <param name="numClasses">Head size: null keeps the checkpoint's head (none if it has none, or if its pre-logits layer
    /// is dropped), 0 builds no head, n builds an n-class head that takes the checkpoint's head only when it has n classes.</param>
    /// <param name="imageSize">ViT input size (a multiple of the patch size); position embeddings are resampled to it.
    /// Null keeps the checkpoint's. ResNets accept any size; this sets their <see cref="Backbone.Input"/>.</param>
    /// <param name="keepPreLogits">Keep the pre-logits layer (fc + tanh) of Google's ImageNet-21k checkpoints. Off by
    /// default, as in current timm: its head is then ignored too, since it was trained on the pre-logits output.</param>
    /// <param name="numHeads">ViT attention heads, when the default rule (width / 64) or the preset's does not apply.</param>
    public static LoadedBackbone Load(string checkpointPath, string? preset = null, int? numClasses = null, int? imageSize = null,
        bool keepPreLogits = false, int? numHeads = null)
    {
        using var scope = NewDisposeScope();
        using var checkpoint = CheckpointReader.Read(checkpointPath);
        var converted = CheckpointLayouts.Convert(checkpoint);
        var weights = converted.Weights;
        Backbone backbone = converted.Layout == CheckpointLayout.TorchvisionResNet
            ? ModuleScopes.Unscoped(() => CreateResNet(checkpoint.Path, weights, preset, numClasses, imageSize))
            : ModuleScopes.Unscoped(() => CreateVisionTransformer(checkpoint.Path, weights, preset, numClasses, imageSize, keepPreLogits, numHeads));
        try
        {
            return new LoadedBackbone(backbone, BackboneWeights.Apply(backbone, checkpoint.Path, checkpoint.Format, converted));
        }
        catch
        {
            backbone.Dispose();
            throw;
        }
    }

    /// <summary>
    /// ML.NET's own pretrained ResNet-18 (ImageNet), from the ONNX files of the Microsoft.ML.DnnImageFeaturizer.ResNet18
    /// package, so a real pretrained backbone works offline. Its graph is a torchvision-style BasicBlock ResNet with
    /// stages [2, 2, 2, 3] (one block more than torchvision's ResNet-18 in the last stage) and separate BatchNorms; its
    /// preprocessing (ResNetPreprocess.onnx) turns RGB 0..255 into BGR minus a per-pixel mean image. The backbone
    /// reproduces that exactly: <see cref="Backbone.Input"/> is BGR, scale 1, std 1, minus the mean image's per-channel
    /// averages, and the per-pixel remainder is the ResNet's fixed <c>input_offset</c>. Input is 224x224 only.
    /// </summary>
    /// <param name="numClasses">Classes of a new, freshly initialised head (0: none; the ONNX graph has no classifier).</param>
    /// <param name="modelDirectory">The package's <c>DnnImageModels</c> folder. Null looks next to the application
    /// (where the package copies it) and then in the NuGet package cache.</param>
    public static LoadedBackbone LoadMLNetResNet18(int numClasses = 0, string? modelDirectory = null)
    {
        string directory = LocateDnnImageModels(modelDirectory);
        string modelPath = Path.Combine(directory, "ResNet18Onnx", "ResNet18.onnx");
        string preprocessPath = Path.Combine(directory, "ResNetPrepOnnx", "ResNetPreprocess.onnx");
        using var scope = NewDisposeScope();
        using var model = CheckpointReader.Read(modelPath);
        if (model.Format != CheckpointFormat.Onnx) throw new CheckpointException(modelPath, null, $"expected an ONNX model, found {model.Format}.");
        var graph = OnnxResNetImport.Convert(model);
        using var preprocess = CheckpointReader.Read(preprocessPath);
        var meanImage = OnnxResNetImport.ReadMeanImage(preprocess, graph.ImageSize);
        var channelMeans = meanImage.mean([0, 2, 3]);
        graph.Weights.Add("input_offset", channelMeans.view(1, 3, 1, 1) - meanImage);

        float[] means = channelMeans.data<float>().ToArray();
        var input = new ImageInputSpec(graph.ImageSize, means, [1f, 1f, 1f], PixelScale: 1f, Order: ChannelOrder.Bgr);
        var config = new ResNetConfig(ResNetBlock.Basic, graph.Layers, graph.Widths, numClasses, graph.ImageSize, HasInputOffset: true);
        var backbone = ModuleScopes.Unscoped(() => new ResNet(config, MLNetResNet18, input));
        try
        {
            var converted = new ConvertedCheckpoint(CheckpointLayout.MLNetResNet18Onnx, graph.Weights, new Dictionary<string, string>());
            return new LoadedBackbone(backbone, BackboneWeights.Apply(backbone, modelPath, CheckpointFormat.Onnx, converted));
        }
        catch
        {
            backbone.Dispose();
            throw;
        }
    }

    /// <summary>Where <see cref="LoadMLNetResNet18"/> looks for the package's DnnImageModels folder, in order.</summary>
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
            + ". Reference the Microsoft.ML.DnnImageFeaturizer.ResNet18 package (it copies DnnImageModels next to the application) or pass its folder.");
    }

    private static VisionTransformer CreateVisionTransformer(string path, IReadOnlyDictionary<string, Tensor> w, string? preset,
        int? numClasses, int? imageSize, bool keepPreLogits, int? numHeads)
    {
        var cls = Require(path, w, "cls_token", rank: 3);
        var patch = Require(path, w, "patch_embed.proj.weight", rank: 4);
        var pos = Require(path, w, "pos_embed", rank: 3);
        int embedDim = (int)cls.shape[2];
        int patchSize = (int)patch.shape[2];
        if (patch.shape[3] != patchSize) throw new CheckpointException(path, "patch_embed.proj.weight", $"expected square patches, found {Describe.ShapeOf(patch)}.");
        int grid = (int)Math.Round(Math.Sqrt(pos.shape[1] - 1));
        if (grid * grid != pos.shape[1] - 1)
            throw new CheckpointException(path, "pos_embed", $"expected 1 class token + a square grid of positions, found {Describe.ShapeOf(pos)}.");
        bool hasPreLogits = w.ContainsKey("pre_logits.fc.weight");
        if (keepPreLogits && !hasPreLogits)
            throw new CheckpointException(path, "pre_logits.fc.weight", "keepPreLogits: expected a pre-logits layer in the checkpoint, found none.");
        int? representation = keepPreLogits ? (int)Require(path, w, "pre_logits.fc.weight", rank: 2).shape[0] : null;
        // A head trained on the pre-logits output is useless without them (BackboneWeights ignores it then).
        int checkpointClasses = w.TryGetValue("head.weight", out var head) && (keepPreLogits || !hasPreLogits) ? (int)head.shape[0] : 0;

        VisionTransformerConfig config;
        if (preset is not null)
        {
            config = VisionTransformerConfig.Presets.TryGetValue(preset, out var known) ? known
                : throw new ArgumentException($"Unknown ViT preset '{preset}'. Known presets: {string.Join(", ", VisionTransformerConfig.Presets.Keys)}.", nameof(preset));
            if (numHeads is int heads) config = config with { NumHeads = heads };
        }
        else
        {
            int depth = 0;
            while (w.ContainsKey($"blocks.{depth}.norm1.weight")) depth++;
            var fc1 = Require(path, w, "blocks.0.mlp.fc1.weight", rank: 2);
            config = new VisionTransformerConfig(
                ImageSize: grid * patchSize,
                PatchSize: patchSize,
                EmbedDim: embedDim,
                Depth: depth,
                NumHeads: numHeads ?? DefaultHeads(path, embedDim),
                MlpRatio: (double)fc1.shape[0] / embedDim,
                QkvBias: w.ContainsKey("blocks.0.attn.qkv.bias"));
        }
        config = config with
        {
            ImageSize = imageSize ?? config.ImageSize,
            RepresentationSize = representation,
            NumClasses = numClasses ?? checkpointClasses,
        };
        string? matchingPreset = VisionTransformerConfig.Presets.FirstOrDefault(p => p.Value with { NumClasses = config.NumClasses } == config).Key;
        return new VisionTransformer(config, preset ?? matchingPreset ?? $"vit_patch{patchSize}_dim{embedDim}_depth{config.Depth}");
    }

    private static int DefaultHeads(string path, int embedDim) =>
        embedDim % 64 == 0 ? embedDim / 64
            : throw new CheckpointException(path, "cls_token",
                $"attention heads: the shapes do not determine them and the default rule (width / 64) needs a width that is a multiple of 64, found {embedDim}; pass numHeads or a preset.");

    private static ResNet CreateResNet(string path, IReadOnlyDictionary<string, Tensor> w, string? preset, int? numClasses, int? imageSize)
    {
        int checkpointClasses = w.TryGetValue("fc.weight", out var fc) ? (int)fc.shape[0] : 0;
        ResNetConfig config;
        if (preset is not null)
        {
            config = ResNetConfig.Presets.TryGetValue(preset, out var known) ? known
                : throw new ArgumentException($"Unknown ResNet preset '{preset}'. Known presets: {string.Join(", ", ResNetConfig.Presets.Keys)}.", nameof(preset));
        }
        else
        {
            var block = w.ContainsKey("layer1.0.conv3.weight") ? ResNetBlock.Bottleneck : ResNetBlock.Basic;
            var layers = new int[4];
            var widths = new int[4];
            for (int s = 0; s < 4; s++)
            {
                while (w.ContainsKey($"layer{s + 1}.{layers[s]}.conv1.weight")) layers[s]++;
                widths[s] = (int)Require(path, w, $"layer{s + 1}.0.conv1.weight", rank: 4).shape[0];
            }
            config = new ResNetConfig(block, layers, widths);
        }
        config = config with { NumClasses = numClasses ?? checkpointClasses, ImageSize = imageSize ?? config.ImageSize };
        string? matchingPreset = ResNetConfig.Presets.FirstOrDefault(p => p.Value with { NumClasses = config.NumClasses, ImageSize = config.ImageSize } == config).Key;
        return new ResNet(config, preset ?? matchingPreset ?? $"resnet_{config.Block.ToString().ToLowerInvariant()}_{string.Join("-", config.Layers)}");
    }

    private static Tensor Require(string path, IReadOnlyDictionary<string, Tensor> w, string key, int rank)
    {
        if (!w.TryGetValue(key, out var tensor)) throw new CheckpointException(path, key, "missing from the checkpoint.");
        if (tensor.dim() != rank) throw new CheckpointException(path, key, $"rank: expected a {rank}-D tensor, found {Describe.ShapeOf(tensor)}.");
        return tensor;
    }
}
