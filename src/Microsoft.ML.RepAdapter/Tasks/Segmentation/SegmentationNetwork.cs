using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Torch;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Segmentation;

/// <summary>
/// A backbone (without its classifier) and a decode head over its multi-level features; images in, per-pixel class
/// logits [B, K, S, S] out, at the input resolution. Parameter names follow mmsegmentation: <c>backbone.*</c>,
/// <c>decode_head.*</c>. Adapters live in the backbone and merge into it as in classification.
/// </summary>
public sealed partial class SegmentationNetwork : nn.Module<Tensor, Tensor>, IAdaptableModel
{
    private const string HeadPrefix = "decode_head.";
    private static readonly JsonSerializerOptions Json = new() { Converters = { new JsonStringEnumConverter() } };

    private readonly Backbone backbone;
    private readonly nn.Module<IReadOnlyList<Tensor>, Tensor> decode_head;

    /// <summary>Puts a <paramref name="head"/> on <paramref name="backbone"/>, whose classifier is removed; the network owns both.</summary>
    public SegmentationNetwork(Backbone backbone, SegmentationHeadConfig head) : base(nameof(SegmentationNetwork))
    {
        if (!head.Levels.SequenceEqual(backbone.FeatureLevels))
            throw new ArgumentException("The head was configured for other feature levels than this backbone's.", nameof(head));
        backbone.ResetClassifier(0);
        this.backbone = backbone;
        decode_head = head.Build();
        Head = head;
        RegisterComponents();
    }

    /// <summary>The backbone (features only).</summary>
    public Backbone Backbone => backbone;

    /// <summary>The decode head's configuration.</summary>
    public SegmentationHeadConfig Head { get; }

    /// <summary>Classes predicted per pixel.</summary>
    public int NumClasses => Head.NumClasses;

    /// <summary>
    /// Per-pixel class logits [B, NumClasses, H, W] for normalised images [B, 3, H, W]: the decode head on the backbone's
    /// multi-level features, upsampled bilinearly to the input size.
    /// </summary>
    public override Tensor forward(Tensor images)
    {
        using var scope = NewDisposeScope();
        var logits = decode_head.forward(backbone.ForwardIntermediates(images));
        return nn.functional.interpolate(logits, [images.shape[2], images.shape[3]], mode: InterpolationMode.Bilinear, align_corners: false)
            .MoveToOuterDisposeScope();
    }

    /// <inheritdoc/>
    public IReadOnlyList<AdapterSite> AdapterSites(AdapterPlacement placement) =>
        [.. backbone.AdapterSites(placement).Select(site => site with { Name = $"backbone.{site.Name}" })];

    /// <inheritdoc/>
    public bool IsHeadParameter(string parameterName) => parameterName.StartsWith(HeadPrefix, StringComparison.Ordinal);

    /// <inheritdoc/>
    public bool FreezeNormStatistics
    {
        get => backbone.FreezeNormStatistics;
        set => backbone.FreezeNormStatistics = value;
    }

    /// <summary>The backbone's description and the head's configuration (JSON), enough to rebuild the modules.</summary>
    public string Describe() => JsonSerializer.Serialize(new Description(backbone.Describe().ToJson(), Head), Json);

    /// <summary>Builds the (randomly initialised) network that <see cref="Describe"/> described.</summary>
    public static SegmentationNetwork FromDescription(string json)
    {
        var description = JsonSerializer.Deserialize<Description>(json, Json) ?? throw new InvalidDataException("Empty segmentation network description.");
        var backbone = BackboneDescriptor.FromJson(description.Backbone).Build();
        try
        {
            return ModuleScopes.Unscoped(() => new SegmentationNetwork(backbone, description.Head));
        }
        catch
        {
            backbone.Dispose();
            throw;
        }
    }

    private sealed record Description(string Backbone, SegmentationHeadConfig Head);
}
