namespace Microsoft.ML.RepAdapter.MLNet;

/// <summary>
/// The image checks the trainers and transformers run, for code that decodes images itself: a service in front of
/// <c>ToOnnxPipeline</c>'s chain, whose ML.NET LoadImages decodes a truncated image silently (half black) and bounds
/// nothing.
/// </summary>
public static class ImageValidation
{
    /// <summary>
    /// Null when <paramref name="encoded"/> is a complete image of at most <paramref name="maxPixels"/> pixels; otherwise
    /// what is wrong with it: empty, too large by its header (checked first, before anything is decoded), truncated
    /// (PNG rows and JPEG scans are counted against the header), damaged or not an image.
    /// </summary>
    public static string? Problem(ReadOnlyMemory<byte> encoded, long maxPixels = RepAdapterTrainerOptions.DefaultMaxImagePixels)
    {
        if (encoded.IsEmpty) return "the image is empty (0 bytes)";
        return ImageIntegrity.SizeProblem(encoded.Span, maxPixels) ?? ImageIntegrity.Problem(encoded);
    }
}
