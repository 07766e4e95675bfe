using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Formats;
using Microsoft.ML.RepAdapter.Torch;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Checkpoints;

/// <summary>A backbone built from a checkpoint, with what the load did.</summary>
public sealed record LoadedBackbone(Backbone Backbone, LoadReport Report);

/// <summary>
/// Builds backbones from pretrained checkpoints of any family: the file's format is recognised from its content, its
/// layout from its tensor names (<see cref="BackboneFamily.Layouts"/>), the architecture from the tensor shapes (or a
/// preset), and the weights are loaded strictly (<see cref="BackboneWeights.LoadWeights"/>).
/// </summary>
public static class PretrainedBackbones
{
    /// <summary>Name of ML.NET's pretrained ResNet-18, the built-in weights trainers use when none are named (<see cref="LoadBuiltIn"/>).</summary>
    public const string MLNetResNet18 = BackboneFamilies.DefaultPretrained;

    /// <summary>
    /// Loads a backbone from any supported file format and layout (see each family's <see cref="BackboneFamily.CreateFromWeights"/>
    /// for what the shapes determine). With a <paramref name="preset"/> the preset's architecture is used and the shapes
    /// must match it. The backbone's <see cref="Backbone.Architecture"/> is the preset name that matches, if any.
    /// </summary>
    /// <param name="checkpointPath">The checkpoint file; its format is recognised from the content.</param>
    /// <param name="preset">A preset name (<see cref="BackbonePresets.Names"/>), or null to infer the architecture.</param>
    /// <param name="numClasses">Head size: null keeps the checkpoint's head (none if it has none, or if its pre-logits layer
    /// is dropped), 0 builds no head, n builds an n-class head that takes the checkpoint's head only when it has n classes.</param>
    /// <param name="imageSize">Input size; a ViT's position embeddings are resampled to it. Null keeps the checkpoint's.</param>
    /// <param name="loadOptions">The family's own load options (e.g. <see cref="VisionTransformerLoadOptions"/>: a ViT's
    /// heads, Google's pre-logits layer); options of another family than the file's are refused.</param>
    public static LoadedBackbone Load(string checkpointPath, string? preset = null, int? numClasses = null, int? imageSize = null,
        FamilyLoadOptions? loadOptions = null)
    {
        loadOptions?.Validate();
        using var scope = NewDisposeScope();
        using var checkpoint = CheckpointReader.Read(checkpointPath);
        IReadOnlyList<BackboneFamily> families = preset is null ? BackboneFamilies.All
            : [BackboneFamilies.OfPreset(preset) ?? throw new ArgumentException($"Unknown backbone preset '{preset}'. Known presets: {string.Join(", ", BackbonePresets.Names)}.", nameof(preset))];
        var (family, converted) = CheckpointConversion.Convert(checkpoint, families);
        var options = new CheckpointOptions(numClasses, imageSize, family.OwnLoadOptions<FamilyLoadOptions>(loadOptions));
        var backbone = ModuleScopes.Unscoped(() => family.CreateFromWeights(checkpoint.Path, converted, preset, options));
        return Apply(backbone, checkpoint.Path, checkpoint.Format, preset is null ? converted : converted with { Assumptions = null });
    }

    /// <summary>
    /// Weights that ship with a package rather than in a file (<see cref="BackboneFamily.BuiltInWeights"/>), e.g.
    /// <see cref="MLNetResNet18"/>, ML.NET's pretrained ImageNet ResNet-18, which works offline.
    /// </summary>
    /// <param name="name">The built-in weights' name.</param>
    /// <param name="numClasses">Classes of a new, freshly initialised head (0: none).</param>
    /// <param name="directory">Where the weights are, when not where their family looks by default.</param>
    /// <param name="imageSize">Input resolution; null: the weights' own (see the family's LoadBuiltIn for what changes).</param>
    public static LoadedBackbone LoadBuiltIn(string name, int numClasses = 0, string? directory = null, int? imageSize = null)
    {
        var family = BackboneFamilies.OfBuiltInWeights(name)
            ?? throw new ArgumentException($"No built-in weights named '{name}'. Known: {string.Join(", ", BackboneFamilies.All.SelectMany(f => f.BuiltInWeights))}.", nameof(name));
        using var scope = NewDisposeScope();
        var builtIn = family.LoadBuiltIn(name, numClasses, directory, imageSize);
        return Apply(builtIn.Backbone, builtIn.Path, builtIn.Format, builtIn.Weights);
    }

    /// <summary>ML.NET's own pretrained ResNet-18 (<see cref="ResNetFamily.LoadBuiltIn"/> says how it is read).</summary>
    /// <param name="numClasses">Classes of a new, freshly initialised head (0: none; the ONNX graph has no classifier).</param>
    /// <param name="modelDirectory">The package's <c>DnnImageModels</c> folder; null looks where the package puts it.</param>
    /// <param name="imageSize">Input resolution; null: 224, as trained (other sizes resample its mean image).</param>
    public static LoadedBackbone LoadMLNetResNet18(int numClasses = 0, string? modelDirectory = null, int? imageSize = null) =>
        LoadBuiltIn(MLNetResNet18, numClasses, modelDirectory, imageSize);

    private static LoadedBackbone Apply(Backbone backbone, string path, CheckpointFormat format, ConvertedCheckpoint converted)
    {
        try
        {
            return new LoadedBackbone(backbone, BackboneWeights.Apply(backbone, path, format, converted));
        }
        catch
        {
            backbone.Dispose();
            throw;
        }
    }
}

/// <summary>Finds the family and layout of a checkpoint's tensor names and converts them to that family's names.</summary>
internal static class CheckpointConversion
{
    public static (BackboneFamily Family, ConvertedCheckpoint Converted) Convert(TensorCheckpoint checkpoint, IReadOnlyList<BackboneFamily> families)
    {
        if (checkpoint.Format == CheckpointFormat.Onnx)
            throw new CheckpointException(checkpoint.Path, null,
                $"an ONNX graph carries its own preprocessing outside the weights: load built-in ONNX weights with PretrainedBackbones.LoadBuiltIn (e.g. \"{PretrainedBackbones.MLNetResNet18}\").");
        var tensors = StripDataParallelPrefix(checkpoint.Tensors);
        foreach (var family in families)
        {
            if (family.Layouts.FirstOrDefault(l => l.Matches(tensors)) is { } layout) return (family, layout.Convert(checkpoint, tensors));
        }
        throw new CheckpointException(checkpoint.Path, null,
            $"unrecognised layout: expected one of {string.Join(", ", families.SelectMany(f => f.Layouts).Select(l => l.Name))}; found keys {Describe.Keys(tensors.Keys)}.");
    }

    /// <summary>nn.DataParallel / DistributedDataParallel save every name under "module."; drop it when all names have it.</summary>
    private static IReadOnlyDictionary<string, Tensor> StripDataParallelPrefix(IReadOnlyDictionary<string, Tensor> tensors)
    {
        const string prefix = "module.";
        if (tensors.Count == 0 || !tensors.Keys.All(k => k.StartsWith(prefix, StringComparison.Ordinal))) return tensors;
        var stripped = new OrderedDictionary<string, Tensor>();
        foreach (var (key, tensor) in tensors) stripped.Add(key[prefix.Length..], tensor);
        return stripped;
    }
}
