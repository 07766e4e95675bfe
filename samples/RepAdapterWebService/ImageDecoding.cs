using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.MLNet;

namespace RepAdapterWebService;

/// <summary>
/// Decodes a request body into the <see cref="MLImage"/> that ML.NET's LoadImages would have made of it, for models whose
/// pipeline starts with LoadImages (the ONNX chain always does). LoadImages decodes a truncated PNG or JPEG silently, half
/// black, and the ONNX chain has no check of its own, so every incomplete or oversized image is refused here, with what is
/// wrong, by the library's <see cref="ImageValidation"/>.
/// </summary>
internal static class ImageDecoding
{
    /// <summary>The decoded image; an <see cref="InvalidDataException"/> saying why when the bytes are not a complete image.</summary>
    public static MLImage Decode(byte[] encoded)
    {
        if (encoded.Length == 0) throw new InvalidDataException("The image is empty (0 bytes): send the encoded image (PNG, JPEG, BMP, GIF or WebP) as the body.");
        // The library's own checks (size from the header, PNG rows and JPEG scans counted), as its transformers run them.
        if (ImageValidation.Problem(encoded) is string problem) throw new InvalidDataException($"The {encoded.Length} bytes are not a complete image: {problem}.");
        try
        {
            // Skia again, as LoadImages decodes files: the pixels are exactly those the chain was built to see.
            return MLImage.CreateFromStream(new MemoryStream(encoded, writable: false));
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or IOException)
        {
            throw new InvalidDataException($"The {encoded.Length} bytes are not a decodable image ({e.Message}).", e);
        }
    }
}
