using Microsoft.ML.Data;
using SkiaSharp;

namespace RepAdapterWebService;

/// <summary>
/// Decodes a request body into the <see cref="MLImage"/> that ML.NET's LoadImages would have made of it, for models whose
/// pipeline starts with LoadImages (the ONNX chain always does). LoadImages decodes a truncated PNG or JPEG silently, half
/// black, and the ONNX chain has no check of its own, so every incomplete image is refused here, with what is wrong.
/// </summary>
internal static class ImageDecoding
{
    private static readonly byte[] PngSignature = [0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A];
    // The IEND chunk, always the last 12 bytes of a PNG: length 0, type, CRC.
    private static readonly byte[] PngEnd = [0, 0, 0, 0, (byte)'I', (byte)'E', (byte)'N', (byte)'D', 0xAE, 0x42, 0x60, 0x82];

    /// <summary>The decoded image; an <see cref="InvalidDataException"/> saying why when the bytes are not a complete image.</summary>
    public static MLImage Decode(byte[] encoded)
    {
        if (encoded.Length == 0) throw new InvalidDataException("The image is empty (0 bytes): send the encoded image (PNG, JPEG, BMP, GIF or WebP) as the body.");
        if (Problem(encoded) is string problem) throw new InvalidDataException($"The {encoded.Length} bytes are not a complete image: {problem}.");
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

    /// <summary>
    /// Null for a complete image. A cut that leaves every pixel row in place (a PNG without its IEND chunk, a JPEG without
    /// its end-of-image marker) decodes without complaint, so the end of those two formats is checked first; for every
    /// format Skia then decodes the pixels and reports incomplete or damaged data.
    /// </summary>
    private static string? Problem(byte[] encoded)
    {
        if (encoded.AsSpan().StartsWith(PngSignature) && !encoded.AsSpan().EndsWith(PngEnd))
            return "a truncated PNG (it does not end with its IEND chunk)";
        if (encoded is [0xFF, 0xD8, ..] && encoded is not [.., 0xFF, 0xD9])
            return "a truncated JPEG (it does not end with its end-of-image marker)";
        using var data = SKData.CreateCopy(encoded);
        using var codec = SKCodec.Create(data);
        if (codec is null) return "no image format recognised (PNG, JPEG, BMP, GIF, WebP, ICO, WBMP)";
        if (codec.Info.Width <= 0 || codec.Info.Height <= 0) return $"the {codec.EncodedFormat} image has no pixels ({codec.Info.Width} x {codec.Info.Height})";
        var info = new SKImageInfo(codec.Info.Width, codec.Info.Height, SKColorType.Bgra8888, SKAlphaType.Premul);
        using var bitmap = new SKBitmap(info);
        var result = codec.GetPixels(info, bitmap.GetPixels());
        return result switch
        {
            SKCodecResult.Success => null,
            SKCodecResult.IncompleteInput => $"a truncated {codec.EncodedFormat} image ({result})",
            SKCodecResult.ErrorInInput => $"a damaged {codec.EncodedFormat} image ({result})",
            _ => $"a {codec.EncodedFormat} image Skia cannot decode ({result})",
        };
    }
}
