using System.Text.Json;
using Microsoft.ML.RepAdapter.Formats;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Backbones;

/// <summary>
/// One architecture family as a plug-in, the way timm keeps one file per architecture: its presets, how a saved
/// description rebuilds it, the checkpoint layouts it reads and how its config is inferred from their tensor shapes,
/// and the fix-ups its weights need when loaded. Formats, loaders, trainers and tasks work through this class and never
/// name a family; the families are listed once, in <see cref="BackboneFamilies"/>.
/// </summary>
public abstract class BackboneFamily
{
    /// <summary>The family's name; also the key of its config in a saved <see cref="BackboneDescriptor"/>.</summary>
    public abstract string Name { get; }

    /// <summary>The presets it builds, by their timm / torchvision names.</summary>
    public abstract IReadOnlyCollection<string> Presets { get; }

    /// <summary>Creates <paramref name="preset"/> with random weights, as the reference implementation initialises it.</summary>
    public abstract Backbone Create(string preset, PresetOverrides overrides);

    /// <summary>Rebuilds the modules (random weights) that a saved description's <paramref name="config"/> describes.</summary>
    public abstract Backbone Build(string architecture, ImageInputSpec input, JsonElement config);

    /// <summary>The same config with stochastic depth rate <paramref name="rate"/>, for families that have it.</summary>
    public virtual JsonElement WithDropPathRate(JsonElement config, double rate) => config;

    /// <summary>The checkpoint layouts this family reads: its own names first, then others it converts from.</summary>
    public abstract IReadOnlyList<CheckpointLayout> Layouts { get; }

    /// <summary>
    /// Builds the backbone (random weights) that checkpoint tensors, already in this family's names, describe: the
    /// config from their shapes, or <paramref name="preset"/>'s (whose shapes must then match). Errors name the file
    /// and the key.
    /// </summary>
    public abstract Backbone CreateFromWeights(string path, ConvertedCheckpoint converted, string? preset, CheckpointOptions options);

    /// <summary>
    /// Checkpoint tensors that <paramref name="target"/> leaves out on purpose, with the reason (e.g. an ImageNet-21k
    /// pre-logits layer that is not kept, and the head trained on it).
    /// </summary>
    public virtual IReadOnlyDictionary<string, string> LeftOut(IReadOnlyDictionary<string, Tensor> weights, Backbone target) =>
        new Dictionary<string, string>();

    /// <summary>
    /// A checkpoint tensor reshaped to fit <paramref name="target"/>'s tensor <paramref name="key"/> when only the
    /// resolution differs (e.g. position embeddings resampled to another grid), with a note saying so; null when this
    /// family has no such conversion for the key.
    /// </summary>
    public virtual (Tensor Value, string Note)? Resize(string path, string key, Tensor source, Backbone target) => null;

    /// <summary>The type of the family's own load options (a <see cref="FamilyLoadOptions"/>), or null when it has none.</summary>
    public virtual Type? LoadOptionsType => null;

    /// <summary>
    /// <paramref name="options"/> when they are this family's (or null), else an <see cref="ArgumentException"/> naming
    /// both: options meant for another family are never silently ignored.
    /// </summary>
    public T? OwnLoadOptions<T>(FamilyLoadOptions? options) where T : FamilyLoadOptions =>
        options is null ? null
        : LoadOptionsType?.IsInstanceOfType(options) == true && options is T own ? own
        : throw new ArgumentException($"{options.GetType().Name} are not the {Name} family's load options"
            + (LoadOptionsType is null ? " (it has none)." : $" ({LoadOptionsType.Name})."), nameof(options));

    /// <summary>Names of weights that ship with a package rather than in a checkpoint file (e.g. ML.NET's ResNet-18).</summary>
    public virtual IReadOnlyCollection<string> BuiltInWeights => [];

    /// <summary>
    /// Builds the backbone of built-in weights <paramref name="name"/> and reads those weights, in this family's names, at
    /// input resolution <paramref name="imageSize"/> (null: the weights' own).
    /// </summary>
    public virtual BuiltInCheckpoint LoadBuiltIn(string name, int numClasses, string? directory, int? imageSize = null) =>
        throw new ArgumentException($"The {Name} family has no built-in weights named '{name}'.", nameof(name));

    /// <summary>
    /// The adapter site in front of which the official RepAdapter code's adapter module <paramref name="officialModule"/>
    /// (e.g. <c>blocks.3.adapter_attn</c>) sits, or null when this family has no official adapters.
    /// </summary>
    public virtual string? OfficialAdapterSite(string officialModule) => null;
}

/// <summary>What a preset can be created with instead of its defaults.</summary>
/// <param name="NumClasses">Classes of the head (0: none); null keeps the preset's.</param>
/// <param name="ImageSize">Input resolution; null keeps the preset's.</param>
/// <param name="DropPathRate">Stochastic depth rate, for families that have it.</param>
public sealed record PresetOverrides(int? NumClasses = null, int? ImageSize = null, double DropPathRate = 0);

/// <summary>How a checkpoint becomes a backbone.</summary>
/// <param name="NumClasses">Head size: null keeps the checkpoint's head, 0 builds none, n builds n classes.</param>
/// <param name="ImageSize">Input resolution; null keeps the checkpoint's.</param>
/// <param name="Family">The family's own load options (<see cref="BackboneFamily.LoadOptionsType"/>), or null for its defaults.</param>
public sealed record CheckpointOptions(int? NumClasses = null, int? ImageSize = null, FamilyLoadOptions? Family = null);

/// <summary>
/// What one family's checkpoints can be told beyond the shapes (a ViT's attention heads, say): each family that has
/// any declares its own record, in its folder, and names its type in <see cref="BackboneFamily.LoadOptionsType"/>.
/// </summary>
public abstract record FamilyLoadOptions
{
    /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> naming the first option that cannot work.</summary>
    public virtual void Validate() { }
}

/// <summary>A naming convention of checkpoints (timm, Google .npz, Hugging Face, ...), recognised from tensor names.</summary>
public abstract class CheckpointLayout
{
    /// <summary>The layout's name in load reports, e.g. "timm ViT".</summary>
    public abstract string Name { get; }

    /// <summary>Whether these tensor names are this layout's.</summary>
    public abstract bool Matches(IReadOnlyDictionary<string, Tensor> tensors);

    /// <summary>
    /// The tensors under the family's own names. Every source tensor must be used or listed as ignored with a reason,
    /// so nothing in a file is silently dropped. Called inside a dispose scope: converted tensors are new.
    /// </summary>
    public abstract ConvertedCheckpoint Convert(TensorCheckpoint checkpoint, IReadOnlyDictionary<string, Tensor> tensors);

    /// <inheritdoc/>
    public override string ToString() => Name;
}

/// <summary>A family's own parameter names, taken as they are (timm's, torchvision's).</summary>
/// <param name="name">The layout's name in load reports.</param>
/// <param name="matches">Whether tensor names are this layout's.</param>
public sealed class OwnNamesLayout(string name, Func<IReadOnlyDictionary<string, Tensor>, bool> matches) : CheckpointLayout
{
    /// <inheritdoc/>
    public override string Name => name;

    /// <inheritdoc/>
    public override bool Matches(IReadOnlyDictionary<string, Tensor> tensors) => matches(tensors);

    /// <inheritdoc/>
    public override ConvertedCheckpoint Convert(TensorCheckpoint checkpoint, IReadOnlyDictionary<string, Tensor> tensors)
    {
        var weights = new OrderedDictionary<string, Tensor>();
        foreach (var (key, tensor) in tensors) weights.Add(key, tensor);
        return new ConvertedCheckpoint(Name, weights, new Dictionary<string, string>());
    }
}

/// <summary>A checkpoint's tensors under a family's parameter names.</summary>
/// <param name="Layout">The source layout's name.</param>
/// <param name="Weights">The tensors under the family's names.</param>
/// <param name="Ignored">Source tensors left out on purpose, with the reason.</param>
/// <param name="Notes">What the conversion assumed, for the load report (e.g. an activation the weights do not tell).</param>
/// <param name="ImageSize">The input resolution the file records (e.g. in a saved attention mask), when it does.</param>
/// <param name="Assumptions">
/// What an architecture inferred from these weights assumes where they do not tell (e.g. the activation), for the load
/// report only when the architecture is inferred: a preset, or a backbone loaded into, settles it.
/// </param>
public sealed record ConvertedCheckpoint(string Layout, OrderedDictionary<string, Tensor> Weights, IReadOnlyDictionary<string, string> Ignored,
    IReadOnlyList<string>? Notes = null, int? ImageSize = null, IReadOnlyList<string>? Assumptions = null);

/// <summary>Built-in weights: the backbone they fit, and the weights in its names.</summary>
/// <param name="Backbone">The backbone (random weights).</param>
/// <param name="Path">Where the weights were read from.</param>
/// <param name="Format">Their file format.</param>
/// <param name="Weights">The weights, converted.</param>
public sealed record BuiltInCheckpoint(Backbone Backbone, string Path, CheckpointFormat Format, ConvertedCheckpoint Weights);

/// <summary>The registry: every backbone family, one line each.</summary>
public static class BackboneFamilies
{
    /// <summary>Every family, in the order checkpoint layouts are tried.</summary>
    public static IReadOnlyList<BackboneFamily> All { get; } =
    [
        VisionTransformerFamily.Instance,
        ResNetFamily.Instance,
        SwinFamily.Instance,
        ConvNeXtFamily.Instance,
        ClipFamily.Instance,
        VideoMAEFamily.Instance,
    ];

    /// <summary>The weights a trainer uses when none are named: ML.NET's pretrained ResNet-18, which works offline.</summary>
    public const string DefaultPretrained = "mlnet_resnet18";

    /// <summary>The family called <paramref name="name"/>.</summary>
    public static BackboneFamily Named(string name) =>
        All.FirstOrDefault(f => f.Name == name)
        ?? throw new InvalidDataException($"Unknown backbone family '{name}'. Known families: {string.Join(", ", All.Select(f => f.Name))}.");

    /// <summary>The family that has preset <paramref name="preset"/>, or null.</summary>
    public static BackboneFamily? OfPreset(string preset) => All.FirstOrDefault(f => f.Presets.Contains(preset));

    /// <summary>The family that has built-in weights <paramref name="name"/>, or null.</summary>
    public static BackboneFamily? OfBuiltInWeights(string name) => All.FirstOrDefault(f => f.BuiltInWeights.Contains(name));

    /// <summary>Every preset name, sorted.</summary>
    public static IEnumerable<string> PresetNames => All.SelectMany(f => f.Presets).Order(StringComparer.Ordinal);
}
