using Microsoft.ML.RepAdapter.Torch;
using Microsoft.ML.RepAdapter.Formats;
using System.Text;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Checkpoints;

/// <summary>
/// What loading a checkpoint did. Everything not listed in <see cref="IgnoredCheckpointKeys"/> or
/// <see cref="UnloadedModelKeys"/> was loaded; anything else that did not fit was an error, not an entry here.
/// </summary>
/// <param name="Path">The checkpoint file.</param>
/// <param name="Format">Its container format, detected from the content.</param>
/// <param name="Layout">Its naming convention (a <see cref="CheckpointLayout"/>'s name), detected from the tensor names.</param>
/// <param name="LoadedKeys">Model tensors set from the checkpoint (library names).</param>
/// <param name="IgnoredCheckpointKeys">Checkpoint tensors left out on purpose, with the reason (e.g. the old head when the class count differs).</param>
/// <param name="UnloadedModelKeys">Model tensors the checkpoint did not set, on purpose, with the reason (e.g. a new head).</param>
/// <param name="Notes">Conversions applied, e.g. position-embedding resampling.</param>
public sealed record LoadReport(
    string Path,
    CheckpointFormat Format,
    string Layout,
    IReadOnlyList<string> LoadedKeys,
    IReadOnlyDictionary<string, string> IgnoredCheckpointKeys,
    IReadOnlyDictionary<string, string> UnloadedModelKeys,
    IReadOnlyList<string> Notes)
{
    /// <summary>The report as log lines: the file, what was loaded, and every exception with its reason.</summary>
    public override string ToString()
    {
        var text = new StringBuilder($"{Path} ({Format}, {Layout}): {LoadedKeys.Count} tensors loaded.");
        foreach (var (key, reason) in IgnoredCheckpointKeys) text.Append($"\n  ignored '{key}': {reason}");
        foreach (var (key, reason) in UnloadedModelKeys) text.Append($"\n  not loaded '{key}': {reason}");
        foreach (string note in Notes) text.Append($"\n  {note}");
        return text.ToString();
    }
}

/// <summary>Loading checkpoint weights into an existing backbone, strictly: all of it fits, or nothing changes.</summary>
public static class BackboneWeights
{
    /// <summary>
    /// Loads <paramref name="checkpointPath"/> (any supported format and layout) into <paramref name="backbone"/>.
    /// Every backbone tensor must come from the checkpoint and every checkpoint tensor must be used, except on purpose:
    /// the head when the class counts differ or the backbone has none (it keeps its own), a pre-logits layer the backbone
    /// does not have (with the head trained on it), BatchNorm's num_batches_tracked counters, and attached adapters.
    /// Position embeddings are resampled to the backbone's grid. Anything else (missing or unexpected keys, shape or
    /// dtype mismatches) throws a <see cref="CheckpointException"/> before any weight is changed.
    /// </summary>
    public static LoadReport LoadWeights(this Backbone backbone, string checkpointPath)
    {
        using var scope = NewDisposeScope();
        using var checkpoint = CheckpointReader.Read(checkpointPath);
        // The backbone's own family first; then every family, since a layout of one family can describe another's model
        // (CLIP checkpoints describe pre-normed ViTs), and the strict load below says when the weights do not fit.
        var converted = CheckpointConversion.Convert(checkpoint, [backbone.Family, .. BackboneFamilies.All.Where(f => f != backbone.Family)]).Converted;
        return Apply(backbone, checkpoint.Path, checkpoint.Format, converted with { Assumptions = null });
    }

    internal static LoadReport Apply(Backbone backbone, string path, CheckpointFormat format, ConvertedCheckpoint converted)
    {
        using var scope = NewDisposeScope();
        var model = backbone.state_dict();
        var weights = converted.Weights;
        var ignored = new OrderedDictionary<string, string>();
        foreach (var (key, reason) in converted.Ignored) ignored.Add(key, reason);
        var unloaded = new OrderedDictionary<string, string>();
        var notes = new List<string>([.. converted.Notes ?? [], .. converted.Assumptions ?? []]);
        var copies = new List<(string Key, Tensor Target, Tensor Source)>();
        var problems = new List<(string Key, string Problem)>();

        foreach (var (key, reason) in backbone.Family.LeftOut(weights, backbone)) ignored[key] = reason;
        foreach (var (key, source) in weights)
        {
            if (ignored.ContainsKey(key)) continue;
            if (backbone.IsHeadParameter(key))
            {
                if (!model.TryGetValue(key, out var head)) ignored[key] = "the model has no head (numClasses 0).";
                else if (!head.shape.SequenceEqual(source.shape))
                    ignored[key] = $"class count differs (checkpoint {Describe.ShapeOf(source)}, model {Describe.ShapeOf(head)}): the model keeps its new head.";
                else copies.Add((key, head, source));
                continue;
            }
            if (!model.TryGetValue(key, out var target))
            {
                problems.Add((key, $"unexpected: {backbone.Architecture} has no such tensor"));
                continue;
            }
            var value = source;
            if (!source.shape.SequenceEqual(target.shape) && backbone.Family.Resize(path, key, source, backbone) is (Tensor resized, string note))
            {
                value = resized;
                notes.Add(note);
            }
            if (!value.shape.SequenceEqual(target.shape))
                problems.Add((key, $"shape: expected {Describe.ShapeOf(target)}, found {Describe.ShapeOf(value)}"));
            else if (value.is_floating_point() != target.is_floating_point() || value.dtype == ScalarType.Bool)
                problems.Add((key, $"dtype: expected {target.dtype}, found {value.dtype}"));
            else if (NonFinite.FirstIn([(key, value)]) is not null)
                problems.Add((key, "holds non-finite values (NaN or infinity)"));
            else copies.Add((key, target, value));
        }
        var loaded = copies.Select(c => c.Key).ToHashSet();
        foreach (var key in model.Keys.Where(k => !loaded.Contains(k)))
        {
            if (backbone.IsHeadParameter(key)) unloaded[key] = "new head, freshly initialised.";
            else if (key.EndsWith(".num_batches_tracked", StringComparison.Ordinal)) unloaded[key] = "BatchNorm batch counter; not used in inference.";
            else if (BackboneAdapters.IsAdapterParameter(key)) unloaded[key] = "adapter parameter: not part of a backbone checkpoint, kept as it is.";
            else if (!weights.ContainsKey(key)) problems.Add((key, "missing from the checkpoint"));
        }
        if (problems.Count > 0)
        {
            string list = string.Join("; ", problems.Take(12).Select(p => $"'{p.Key}' {p.Problem}"));
            if (problems.Count > 12) list += $"; ... ({problems.Count} problems in all)";
            throw new CheckpointException(path, problems[0].Key,
                $"the {converted.Layout} checkpoint does not fit {backbone.Architecture}, nothing was loaded: {list}.");
        }

        using (no_grad())
        {
            foreach (var (_, target, source) in copies) target.copy_(source.to(target.dtype, target.device));
        }
        return new LoadReport(path, format, converted.Layout, copies.Select(c => c.Key).ToList(), ignored, unloaded, notes);
    }
}
