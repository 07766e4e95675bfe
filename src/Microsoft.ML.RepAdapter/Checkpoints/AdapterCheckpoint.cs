using Microsoft.ML.RepAdapter.Torch;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Formats;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Checkpoints;

/// <summary>
/// Adapter-only checkpoints: the adapters and the task head with their <see cref="AdapterConfig"/>, class count and
/// architecture, bound to the frozen backbone they were trained on by a content fingerprint. One backbone file then
/// serves many tasks, each a small .safetensors (ViT-B/16 repblock: 0.24M adapter parameters, about 1 MB in float32,
/// plus the head).
/// </summary>
public static partial class AdapterCheckpoint
{
    private const string FormatName = "repadapter-adapters";
    private const string FormatVersion = "1";

    /// <summary>
    /// SHA-256 (hex) over the backbone's frozen tensors: for each state-dict entry that is neither an adapter nor a head
    /// parameter, sorted by name: its name, dtype, shape and bytes. BatchNorm's num_batches_tracked counters are left
    /// out (they do not change what the network computes). Equal fingerprints mean identical frozen weights.
    /// </summary>
    public static string BackboneFingerprint(Backbone backbone)
    {
        using var scope = NewDisposeScope();
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var frozen = backbone.state_dict()
            .Where(p => !BackboneAdapters.IsAdapterParameter(p.Key) && !backbone.IsHeadParameter(p.Key)
                        && !p.Key.EndsWith(".num_batches_tracked", StringComparison.Ordinal))
            .OrderBy(p => p.Key, StringComparer.Ordinal);
        foreach (var (name, tensor) in frozen)
        {
            hash.AppendData(Encoding.UTF8.GetBytes($"{name}\0{tensor.dtype}\0{string.Join(",", tensor.shape)}\0"));
            var data = tensor.detach().cpu().contiguous();
            if (data.NumberOfElements > 0) hash.AppendData(data.bytes);
        }
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }

    /// <summary>
    /// Saves the adapters attached to <paramref name="adapted"/> (created with <paramref name="config"/>) and its head,
    /// with the config, class count, architecture and <see cref="BackboneFingerprint"/>. Save before merging.
    /// </summary>
    public static void Save(Backbone adapted, AdapterConfig config, string path)
    {
        var sites = adapted.SitesOf(config);
        var missing = sites.Where(s => s.Layer.Adapter is null).Select(s => s.Name).ToList();
        if (missing.Count > 0 || adapted.AdaptedLayers().Count() != sites.Count)
            throw new InvalidOperationException(
                $"{adapted.Architecture} does not carry the adapters of {config.Placement} placement (missing at {Describe.Keys(missing)}); save adapters before merging them.");
        var tensors = adapted.named_parameters()
            .Where(p => BackboneAdapters.IsAdapterParameter(p.name) || adapted.IsHeadParameter(p.name))
            .Select(p => new KeyValuePair<string, Tensor>(p.name, p.parameter));
        var metadata = new Dictionary<string, string>
        {
            ["format"] = FormatName,
            ["format_version"] = FormatVersion,
            ["architecture"] = adapted.Architecture,
            ["backbone_fingerprint"] = BackboneFingerprint(adapted),
            ["num_classes"] = adapted.NumClasses.ToString(CultureInfo.InvariantCulture),
            ["method"] = config.Method.ToString(),
            ["placement"] = config.Placement.ToString(),
            ["hidden"] = config.Hidden.ToString(CultureInfo.InvariantCulture),
            ["groups"] = config.Groups.ToString(CultureInfo.InvariantCulture),
            ["scale"] = config.Scale.ToString("R", CultureInfo.InvariantCulture),
            ["dropout"] = config.Dropout.ToString("R", CultureInfo.InvariantCulture),
        };
        if (config.LastBlocks is int last) metadata["last_blocks"] = last.ToString(CultureInfo.InvariantCulture);
        SafeTensorsWriter.Write(path, tensors, metadata);
    }

    /// <summary>
    /// Attaches the adapters saved in <paramref name="path"/> to <paramref name="backbone"/> (which must carry none) and
    /// loads them and the head (replacing the backbone's head). Refused, with both fingerprints in the message, when the
    /// backbone's frozen weights are not the ones the adapters were trained on. Nothing changes unless everything fits.
    /// </summary>
    /// <returns>The adapter configuration stored in the file.</returns>
    public static AdapterConfig Load(Backbone backbone, string path)
    {
        using var scope = NewDisposeScope();
        using var checkpoint = CheckpointReader.Read(path);
        var meta = checkpoint.Metadata;
        string format = meta.GetValueOrDefault("format", "(none)");
        if (format != FormatName)
            throw new CheckpointException(path, "__metadata__.format",
                $"expected '{FormatName}' (written by AdapterCheckpoint.Save), found '{format}'. Official RepAdapter checkpoints load with ImportOfficial.");
        if (meta.GetValueOrDefault("format_version") != FormatVersion)
            throw new CheckpointException(path, "__metadata__.format_version", $"expected '{FormatVersion}', found '{meta.GetValueOrDefault("format_version", "(none)")}'.");
        var config = new AdapterConfig(
            Method: Field(path, meta, "method", s => Enum.TryParse<AdaptationMethod>(s, out var m) && Enum.IsDefined(m) ? m
                : throw new FormatException($"not a method of this library ({string.Join(", ", Enum.GetNames<AdaptationMethod>())})")),
            Placement: Field(path, meta, "placement", Enum.Parse<AdapterPlacement>),
            Hidden: Field(path, meta, "hidden", s => int.Parse(s, CultureInfo.InvariantCulture)),
            Groups: Field(path, meta, "groups", s => int.Parse(s, CultureInfo.InvariantCulture)),
            Scale: Field(path, meta, "scale", s => float.Parse(s, CultureInfo.InvariantCulture)),
            Dropout: Field(path, meta, "dropout", s => double.Parse(s, CultureInfo.InvariantCulture)),
            LastBlocks: meta.ContainsKey("last_blocks") ? Field(path, meta, "last_blocks", s => int.Parse(s, CultureInfo.InvariantCulture)) : null);
        int numClasses = Field(path, meta, "num_classes", s => int.Parse(s, CultureInfo.InvariantCulture));

        string expected = Field(path, meta, "backbone_fingerprint", s => s);
        string actual = BackboneFingerprint(backbone);
        if (expected != actual)
            throw new CheckpointException(path, "__metadata__.backbone_fingerprint",
                $"these adapters were trained on a different backbone: expected fingerprint {expected} ({meta.GetValueOrDefault("architecture")}), "
                + $"found {actual} ({backbone.Architecture}). Load them onto the backbone (same checkpoint, image size and pre-logits choice) they were trained with.");
        AttachAndLoad(backbone, config, numClasses, checkpoint.Tensors, path);
        return config;
    }

    /// <summary>
    /// Imports adapters saved by the official RepAdapter code (luogen1996/RepAdapter), whose names are
    /// <c>blocks.{i}.adapter_attn.*</c> (in front of attn.qkv) and <c>blocks.{i}.adapter_mlp.*</c> (in front of mlp.fc1)
    /// for a ViT (the backbone's family maps them: <see cref="BackboneFamily.OfficialAdapterSite"/>), plus <c>head.*</c>
    /// when saved. Hidden size, groups and placement come from the shapes; the scale s is not
    /// stored by the official code: it is <paramref name="scale"/>, else a "scale" metadata entry, else an error.
    /// The file may hold only those (what the official <c>save</c> writes) or a whole <c>model.state_dict()</c> of the
    /// adapted timm ViT: then its backbone tensors are loaded into <paramref name="backbone"/> too, strictly, so a backbone
    /// built from the matching preset becomes the trained model. Such files carry no backbone fingerprint: attach
    /// adapter-only files to the ViT they were trained on. Nothing changes unless everything fits.
    /// </summary>
    /// <returns>The adapter configuration used.</returns>
    public static AdapterConfig ImportOfficial(Backbone backbone, string path, float? scale = null, double dropout = 0.1)
    {
        using var scope = NewDisposeScope();
        using var checkpoint = CheckpointReader.Read(path);
        var adapterAndHead = new OrderedDictionary<string, Tensor>();
        var backboneWeights = new OrderedDictionary<string, Tensor>();
        var officialModules = new List<(string Official, string Site)>();
        bool anyOfficial = false;
        foreach (var (key, tensor) in checkpoint.Tensors)
        {
            var match = OfficialName().Match(key);
            anyOfficial |= match.Success;
            if (match.Success && backbone.Family.OfficialAdapterSite(match.Groups[1].Value) is string site)
            {
                adapterAndHead.Add($"{site}.adapter.{match.Groups[2].Value}", tensor);
                if (!officialModules.Any(m => m.Site == site)) officialModules.Add((match.Groups[1].Value, site));
            }
            else if (backbone.IsHeadParameter(key)) adapterAndHead.Add(key, tensor);
            else backboneWeights.Add(key, tensor);
        }
        if (officialModules.Count == 0)
            throw anyOfficial
                ? new ArgumentException($"{path}: the official RepAdapter code adapts ViTs; {backbone.Architecture} ({backbone.Family.Name}) has no official adapter names.", nameof(backbone))
                : new CheckpointException(path, "adapter_attn", "no official RepAdapter adapter (<block>.adapter_attn / adapter_mlp .conv_A / conv_B) in the file.");
        // Conv1d weights: conv_A [hidden, D, 1], conv_B [D, hidden / groups, 1]; the first adapter tells them.
        string first = officialModules[0].Official;
        var convA = KeyTaker.Require(path, checkpoint.Tensors, $"{first}.conv_A.weight", rank: 3);
        var convB = KeyTaker.Require(path, checkpoint.Tensors, $"{first}.conv_B.weight", rank: 3);
        int hidden = (int)convA.shape[0];
        int groups = convB.shape[1] > 0 && hidden % convB.shape[1] == 0 ? hidden / (int)convB.shape[1]
            : throw new CheckpointException(path, $"{first}.conv_B.weight", $"expected [D, hidden / groups, 1] with hidden {hidden}, found {Describe.ShapeOf(convB)}.");
        float s = scale ?? (checkpoint.Metadata.ContainsKey("scale")
            ? Field(path, checkpoint.Metadata, "scale", v => float.Parse(v, CultureInfo.InvariantCulture))
            : throw new CheckpointException(path, "scale", "the official RepAdapter code does not store the scale s: pass the value used in training."));
        // The placement whose sites are exactly the file's (the family's table: e.g. qkv only, or qkv and fc1).
        var fileSites = officialModules.Select(m => m.Site).ToHashSet();
        var placement = backbone.Placements.Keys.Cast<AdapterPlacement?>().FirstOrDefault(p => backbone.AdapterSites(p!.Value).Select(site => site.Name).ToHashSet().SetEquals(fileSites))
            ?? throw new CheckpointException(path, first, $"its {fileSites.Count} adapters match no placement of {backbone.Architecture} "
                + $"({string.Join(", ", backbone.Placements.Keys.Select(p => $"{p}: {backbone.AdapterSites(p).Count} sites"))}).");
        var config = new AdapterConfig(AdaptationMethod.RepAdapter, placement, hidden, groups, s, dropout);
        int? numClasses = adapterAndHead.TryGetValue($"{backbone.HeadName}.weight", out var head) ? (int)head.shape[0] : null;
        if (backboneWeights.Count == 0)
        {
            AttachAndLoad(backbone, config, numClasses, adapterAndHead, path);
            return config;
        }

        // A whole adapted model: its backbone too, all or nothing (restored if the adapters then do not fit). What this
        // backbone would leave out of it (e.g. a ViT's in21k pre-logits layer) the saved head was trained on: refuse.
        foreach (var (key, reason) in backbone.Family.LeftOut(backboneWeights, backbone))
            throw new CheckpointException(path, key, $"the saved model has it and its head was trained with it, but this backbone leaves it out ({reason}): build the backbone with it.");
        var saved = backbone.state_dict().ToDictionary(p => p.Key, p => p.Value.detach().clone());
        try
        {
            BackboneWeights.Apply(backbone, path, checkpoint.Format, new ConvertedCheckpoint("official RepAdapter model", backboneWeights, new Dictionary<string, string>()));
            AttachAndLoad(backbone, config, numClasses, adapterAndHead, path);
            return config;
        }
        catch
        {
            using (no_grad())
            {
                var current = backbone.state_dict();
                foreach (var (key, value) in saved.Where(p => current.ContainsKey(p.Key) && current[p.Key].shape.SequenceEqual(p.Value.shape)))
                    current[key].copy_(value);
            }
            throw;
        }
    }

    // The official code's adapter modules are named adapter_attn / adapter_mlp in their block: (module path)(parameter).
    [GeneratedRegex(@"^(.+\.adapter_(?:attn|mlp))\.(conv_[AB]\.(?:weight|bias))$")]
    private static partial Regex OfficialName();

    /// <summary>
    /// Builds the adapters off the backbone, checks every tensor of the file against them and the head, and only then
    /// attaches them and replaces the head, so that a bad file leaves the backbone as it was. A null
    /// <paramref name="numClasses"/> means the file has no head and the backbone keeps its own.
    /// </summary>
    private static void AttachAndLoad(Backbone backbone, AdapterConfig config, int? numClasses, IReadOnlyDictionary<string, Tensor> tensors, string path)
    {
        if (backbone.AdaptedLayers().Any())
            throw new InvalidOperationException($"{backbone.Architecture} already carries adapters; load adapters onto a plain backbone.");
        var sites = backbone.SitesOf(config);
        var adapters = ModuleScopes.Unscoped(() => sites.Select(site => ProjectionAdapter.Create(config, site.Layer, site.Name)).ToList());
        try
        {
            var copies = new List<(Tensor Target, Tensor Source)>();
            var problems = new List<(string Key, string Problem)>();
            var used = new HashSet<string>();
            void Match(string key, long[] shape, Action<Tensor> assign)
            {
                if (!tensors.TryGetValue(key, out var source)) { problems.Add((key, "missing from the checkpoint")); return; }
                used.Add(key);
                if (!source.shape.SequenceEqual(shape)) problems.Add((key, $"shape: expected {Describe.Shape(shape)}, found {Describe.ShapeOf(source)}"));
                else if (!source.is_floating_point()) problems.Add((key, $"dtype: expected a floating-point tensor, found {source.dtype}"));
                else if (NonFinite.FirstIn([(key, source)]) is not null) problems.Add((key, "holds non-finite values (NaN or infinity)"));
                else assign(source);
            }
            for (int i = 0; i < sites.Count; i++)
            {
                foreach (var (name, parameter) in adapters[i].named_parameters())
                    Match($"{sites[i].Name}.adapter.{name}", parameter.shape, source => copies.Add((parameter, source)));
            }
            var headSources = new Dictionary<string, Tensor>();
            if (numClasses > 0)
            {
                int classes = numClasses.Value;
                string head = backbone.HeadName;
                Match($"{head}.weight", [classes, backbone.FeatureDim], source => headSources["weight"] = source);
                Match($"{head}.bias", [classes], source => headSources["bias"] = source);
            }
            foreach (var key in tensors.Keys.Where(k => !used.Contains(k))) problems.Add((key, "unexpected: neither an adapter of this placement nor the head"));
            if (problems.Count > 0)
                throw new CheckpointException(path, problems[0].Key,
                    $"the adapters do not fit {backbone.Architecture} with {config}, nothing was loaded: {string.Join("; ", problems.Take(12).Select(p => $"'{p.Key}' {p.Problem}"))}.");

            using (no_grad())
            {
                foreach (var (target, source) in copies) target.copy_(source);
            }
            for (int i = 0; i < sites.Count; i++)
            {
                adapters[i].to(sites[i].Layer.weight.device);
                sites[i].Layer.AttachAdapter(adapters[i]);
            }
            if (numClasses is int n && backbone.NumClasses != n) backbone.ResetClassifier(n);
            if (numClasses > 0)
            {
                var headState = backbone.named_parameters().Where(p => backbone.IsHeadParameter(p.name)).ToDictionary(p => p.name.Split('.')[^1], p => p.parameter);
                using (no_grad())
                {
                    foreach (var (leaf, source) in headSources) headState[leaf].copy_(source.to(headState[leaf].dtype, headState[leaf].device));
                }
            }
        }
        catch
        {
            foreach (var adapter in adapters.Where(a => !sites.Any(s => ReferenceEquals(s.Layer.Adapter, a)))) adapter.Dispose();
            throw;
        }
    }

    private static T Field<T>(string path, IReadOnlyDictionary<string, string> metadata, string key, Func<string, T> parse)
    {
        if (!metadata.TryGetValue(key, out var text)) throw new CheckpointException(path, $"__metadata__.{key}", "missing from the checkpoint's metadata.");
        try
        {
            return parse(text);
        }
        catch (Exception e) when (e is FormatException or ArgumentException or OverflowException)
        {
            throw new CheckpointException(path, $"__metadata__.{key}", $"expected a {typeof(T).Name}, found '{text}'.", e);
        }
    }
}
