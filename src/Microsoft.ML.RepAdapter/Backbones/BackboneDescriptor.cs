using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.ML.RepAdapter.Torch;

namespace Microsoft.ML.RepAdapter.Backbones;

/// <summary>
/// Everything needed to rebuild a backbone's modules (not its weights): the architecture name, the input spec, and its
/// family's config. Serialised as JSON next to the weights in a saved model:
/// <c>{"Architecture": ..., "Input": {...}, "&lt;family name&gt;": {config}}</c>.
/// </summary>
[JsonConverter(typeof(BackboneDescriptorConverter))]
public sealed record BackboneDescriptor(string Architecture, ImageInputSpec Input, string Family, JsonElement Config)
{
    internal static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = false,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        Converters = { new JsonStringEnumConverter() },
    };

    /// <summary>A descriptor of family <paramref name="family"/> with its typed <paramref name="config"/>.</summary>
    public static BackboneDescriptor Create<TConfig>(string architecture, ImageInputSpec input, BackboneFamily family, TConfig config) =>
        new(architecture, input, family.Name, JsonSerializer.SerializeToElement(config, Json));

    /// <summary>The family's config as its typed record.</summary>
    public TConfig ConfigAs<TConfig>() =>
        Config.Deserialize<TConfig>(Json) ?? throw new InvalidDataException($"Empty {Family} config for '{Architecture}'.");

    /// <summary>Builds the (randomly initialised) backbone this descriptor describes.</summary>
    public Backbone Build() => ModuleScopes.Unscoped(() => BackboneFamilies.Named(Family).Build(Architecture, Input, Config));

    /// <summary>The same backbone with stochastic depth <paramref name="rate"/> (for families that have it).</summary>
    public BackboneDescriptor WithDropPathRate(double rate) => this with { Config = BackboneFamilies.Named(Family).WithDropPathRate(Config, rate) };

    /// <summary>The descriptor as JSON.</summary>
    public string ToJson() => JsonSerializer.Serialize(this, Json);

    /// <summary>A descriptor from <see cref="ToJson"/>'s JSON (also the form saved before families were plug-ins).</summary>
    public static BackboneDescriptor FromJson(string json) =>
        JsonSerializer.Deserialize<BackboneDescriptor>(json, Json) ?? throw new InvalidDataException("Empty backbone descriptor.");

    /// <summary>Value equality, comparing <see cref="Config"/> by its JSON text.</summary>
    public bool Equals(BackboneDescriptor? other) =>
        other is not null && Architecture == other.Architecture && Input.Equals(other.Input) && Family == other.Family
        && Config.GetRawText() == other.Config.GetRawText();

    /// <inheritdoc/>
    public override int GetHashCode() => HashCode.Combine(Architecture, Input, Family, Config.GetRawText());

    /// <summary>Writes the config under its family's name; reads it back from whichever property is not Architecture or Input.</summary>
    private sealed class BackboneDescriptorConverter : JsonConverter<BackboneDescriptor>
    {
        public override BackboneDescriptor Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
        {
            using var document = JsonDocument.ParseValue(ref reader);
            string? architecture = null, family = null;
            ImageInputSpec? input = null;
            JsonElement config = default;
            foreach (var property in document.RootElement.EnumerateObject())
            {
                if (property.Name == nameof(Architecture)) architecture = property.Value.GetString();
                else if (property.Name == nameof(Input)) input = property.Value.Deserialize<ImageInputSpec>(options);
                else if (family is not null) throw new JsonException($"A backbone descriptor names one family, found '{family}' and '{property.Name}'.");
                else (family, config) = (property.Name, property.Value.Clone());
            }
            if (architecture is null || input is null || family is null)
                throw new JsonException("A backbone descriptor needs Architecture, Input and one family's config.");
            return new BackboneDescriptor(architecture, input, family, config);
        }

        public override void Write(Utf8JsonWriter writer, BackboneDescriptor value, JsonSerializerOptions options)
        {
            writer.WriteStartObject();
            writer.WriteString(nameof(Architecture), value.Architecture);
            writer.WritePropertyName(nameof(Input));
            JsonSerializer.Serialize(writer, value.Input, options);
            writer.WritePropertyName(value.Family);
            value.Config.WriteTo(writer);
            writer.WriteEndObject();
        }
    }
}
