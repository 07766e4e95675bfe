using System.Runtime.InteropServices;
using System.Text.Json;

namespace Microsoft.ML.RepAdapter.MLNet;

/// <summary>
/// A saved model's network description (JSON) is untrusted until its modules are built: a negative or huge dimension
/// would reach libtorch as a raw native error, or allocate gigabytes. Its numbers are bounded before anything is built,
/// and whatever still fails to build is an <see cref="InvalidDataException"/> naming the description.
/// </summary>
internal static class SavedDescription
{
    /// <summary>
    /// The largest number a description may hold: above every width, depth, head count, patch or image size and class
    /// count of the public vision backbones (ImageNet-21k has 21,843 classes), far below what would overflow an index.
    /// </summary>
    public const int MaxValue = 65_536;

    /// <summary>Nesting a description never reaches; deeper JSON is refused before it is walked.</summary>
    private const int MaxDepth = 16;

    /// <summary>Throws <see cref="InvalidDataException"/> naming the first number that is not finite, negative or above <see cref="MaxValue"/>.</summary>
    public static void CheckBounds(string json)
    {
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(json, new JsonDocumentOptions { MaxDepth = MaxDepth });
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"The model's network description is not valid JSON (or nests deeper than {MaxDepth}): {e.Message}", e);
        }
        using (document)
        {
            Check(document.RootElement, "$");
        }
    }

    /// <summary>Builds the network from a bounded description; any failure names the description.</summary>
    public static T Build<T>(string json, Func<string, T> build)
    {
        CheckBounds(json);
        try
        {
            return build(json);
        }
        catch (Exception e) when (e is JsonException or ExternalException or ArgumentException or InvalidOperationException or KeyNotFoundException
                                  or FormatException or NotSupportedException)
        {
            throw new InvalidDataException($"The model's network description cannot be built ({e.GetType().Name}: {e.Message}): the file was damaged or altered.", e);
        }
    }

    private static void Check(JsonElement element, string path)
    {
        switch (element.ValueKind)
        {
            case JsonValueKind.Object:
                foreach (var property in element.EnumerateObject()) Check(property.Value, $"{path}.{property.Name}");
                break;
            case JsonValueKind.Array:
                int i = 0;
                foreach (var item in element.EnumerateArray()) Check(item, $"{path}[{i++}]");
                break;
            case JsonValueKind.Number:
                if (!element.TryGetDouble(out double value) || !double.IsFinite(value) || value < 0 || value > MaxValue)
                {
                    throw new InvalidDataException(
                        $"The model's network description holds {element.GetRawText()} at {path}: every number must lie in [0, {MaxValue}]. The file was damaged or altered.");
                }
                break;
        }
    }
}
