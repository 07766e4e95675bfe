using System.Text.Json;
using Microsoft.ML.RepAdapter.Backbones;

namespace Microsoft.ML.RepAdapter.Checkpoints;

/// <summary>
/// Where a trained model's frozen backbone came from, and its <see cref="AdapterCheckpoint.BackboneFingerprint"/>: enough
/// to load the same weights again on another machine, so that a task model can hold only what training changed.
/// Either built-in weights (<see cref="BuiltIn"/>, read from <see cref="Path"/> when that folder was given) or a
/// checkpoint file (<see cref="Path"/>, with the <see cref="Architecture"/> preset and family load options it was read with).
/// </summary>
/// <param name="BuiltIn">The built-in weights' name (e.g. <c>mlnet_resnet18</c>), or null for a checkpoint file.</param>
/// <param name="Path">The checkpoint file, or the built-in weights' folder when one was given; absolute.</param>
/// <param name="Architecture">The preset the checkpoint was read as; null when inferred.</param>
/// <param name="ImageSize">The resolution the weights were loaded at (position embeddings or mean image resampled to it).</param>
/// <param name="LoadOptionsType">The family load options' type name, or null.</param>
/// <param name="LoadOptions">The family load options as JSON, or null.</param>
/// <param name="Fingerprint">The frozen weights' SHA-256, as <see cref="AdapterCheckpoint.BackboneFingerprint"/>.</param>
public sealed record BackboneSource(string? BuiltIn, string? Path, string? Architecture, int? ImageSize, string? LoadOptionsType, string? LoadOptions,
    string Fingerprint)
{
    /// <summary>
    /// The environment variable naming a folder to look in when a task model's backbone file is not at its recorded path
    /// on the scoring machine (ML.NET's <c>Model.Load</c> takes no options): the file is looked up there by its name.
    /// </summary>
    public const string FolderVariable = "REPADAPTER_BACKBONE_DIR";

    /// <summary>The source of built-in weights <paramref name="name"/> (read from <paramref name="folder"/> when given).</summary>
    public static BackboneSource OfBuiltIn(string name, string? folder, int? imageSize, Backbone loaded) =>
        new(name, folder is null ? null : System.IO.Path.GetFullPath(folder), null, imageSize, null, null, AdapterCheckpoint.BackboneFingerprint(loaded));

    /// <summary>The source of checkpoint <paramref name="path"/>, read as <paramref name="architecture"/> with <paramref name="loadOptions"/>.</summary>
    public static BackboneSource OfCheckpoint(string path, string? architecture, int? imageSize, FamilyLoadOptions? loadOptions, Backbone loaded) =>
        new(null, System.IO.Path.GetFullPath(path), architecture, imageSize, loadOptions?.GetType().FullName,
            loadOptions is null ? null : JsonSerializer.Serialize(loadOptions, loadOptions.GetType()), AdapterCheckpoint.BackboneFingerprint(loaded));

    /// <summary>
    /// Loads the weights again (no head) and checks them against <see cref="Fingerprint"/>: other weights, even of the same
    /// architecture, are refused with both fingerprints named. A missing file names the recorded path and <see cref="FolderVariable"/>.
    /// </summary>
    public Backbone Load()
    {
        var loaded = BuiltIn is { } name
            ? PretrainedBackbones.LoadBuiltIn(name, 0, BuiltInFolder(), ImageSize).Backbone
            : PretrainedBackbones.Load(Locate(), Architecture, 0, ImageSize, FamilyOptions()).Backbone;
        string actual;
        try
        {
            actual = AdapterCheckpoint.BackboneFingerprint(loaded);
        }
        catch
        {
            loaded.Dispose();
            throw;
        }
        if (actual == Fingerprint) return loaded;
        loaded.Dispose();
        throw new InvalidDataException($"The task model was trained on backbone weights with fingerprint {Fingerprint}; {Describe()} has {actual}. "
            + "Give the scoring machine the same weights (same file, same image size).");
    }

    /// <summary>
    /// The checkpoint file this source reads now (its path, length and time of last write), so that weights read from it
    /// before can be told current; null for built-in weights. A missing file is the same error as <see cref="Load"/>'s.
    /// </summary>
    internal (string Path, long Length, DateTime Written)? FileStamp()
    {
        if (BuiltIn is not null) return null;
        var file = new FileInfo(Locate());
        return (file.FullName, file.Length, file.LastWriteTimeUtc);
    }

    /// <summary>The weights in words, for messages: the built-in name or the file.</summary>
    public string Describe() => BuiltIn is { } name ? $"built-in '{name}'" : $"'{Path}'";

    /// <summary>The built-in weights' recorded folder, else <see cref="FolderVariable"/>'s, else null (where their package puts them).</summary>
    private string? BuiltInFolder() =>
        Path is { } recorded && Directory.Exists(recorded) ? recorded
        : Environment.GetEnvironmentVariable(FolderVariable) is { } folder && Directory.Exists(folder) && Path is not null ? folder
        : null;

    private string Locate()
    {
        if (File.Exists(Path)) return Path;
        string? folder = Environment.GetEnvironmentVariable(FolderVariable);
        string? there = folder is null ? null : System.IO.Path.Combine(folder, System.IO.Path.GetFileName(Path!));
        if (there is not null && File.Exists(there)) return there;
        throw new FileNotFoundException($"The task model's backbone '{Path}' is not on this machine"
            + (there is null ? "" : $", nor at '{there}'") + $": copy it there, or set {FolderVariable} to the folder that holds it.", Path);
    }

    private FamilyLoadOptions? FamilyOptions()
    {
        if (LoadOptionsType is null || LoadOptions is null) return null;
        var type = BackboneFamilies.All.Select(f => f.LoadOptionsType).FirstOrDefault(t => t?.FullName == LoadOptionsType)
            ?? throw new InvalidDataException($"The task model's backbone load options are of an unknown type '{LoadOptionsType}'.");
        return (FamilyLoadOptions?)JsonSerializer.Deserialize(LoadOptions, type);
    }
}
