using Microsoft.ML.RepAdapter.Torch;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace Microsoft.ML.RepAdapter.Backbones;

/// <summary>
/// Everything needed to rebuild a backbone's modules (not its weights): the architecture family, its config record
/// and its input spec. Serialised as JSON next to the weights in a saved model.
/// </summary>
public sealed record BackboneDescriptor(
    string Architecture,
    ImageInputSpec Input,
    VisionTransformerConfig? VisionTransformer = null,
    ResNetConfig? ResNet = null)
{
    private static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = false,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        Converters = { new JsonStringEnumConverter() },
    };

    /// <summary>Builds the (randomly initialised) backbone this descriptor describes.</summary>
    public Backbone Build() => ModuleScopes.Unscoped<Backbone>(() => (VisionTransformer, ResNet) switch
    {
        ({ } vit, null) => new VisionTransformer(vit, Architecture, Input),
        (null, { } resnet) => new ResNet(resnet, Architecture, Input),
        _ => throw new InvalidDataException($"Backbone descriptor for '{Architecture}' must name exactly one architecture family."),
    });

    /// <summary>The same backbone with stochastic depth <paramref name="rate"/> (only Vision Transformers have it).</summary>
    public BackboneDescriptor WithDropPathRate(double rate) =>
        VisionTransformer is { } vit ? this with { VisionTransformer = vit with { DropPathRate = rate } } : this;

    public string ToJson() => JsonSerializer.Serialize(this, Json);

    public static BackboneDescriptor FromJson(string json) =>
        JsonSerializer.Deserialize<BackboneDescriptor>(json, Json)
        ?? throw new InvalidDataException("Empty backbone descriptor.");
}
