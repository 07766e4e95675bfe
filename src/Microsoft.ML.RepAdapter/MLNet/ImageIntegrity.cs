using System.Buffers.Binary;
using System.Globalization;
using SkiaSharp;

namespace Microsoft.ML.RepAdapter.MLNet;

/// <summary>
/// Whether an encoded image is complete, and how large it says it is. Skia (behind MLImage) decodes a truncated PNG or
/// JPEG without complaint and leaves the missing rows black, which would train and score silently on damaged data; and
/// it allocates whatever size a header declares before it finds out that the data is not there. PNG and JPEG are
/// checked by reading their image data without building pixels (<see cref="PngIntegrity"/>, <see cref="JpegIntegrity"/>
/// say exactly what each verifies); other formats by decoding with SKCodec, which reports an incomplete input.
/// </summary>
internal static class ImageIntegrity
{
    /// <summary>Bytes a decoded pixel takes: Skia decodes to 8-bit RGBA.</summary>
    public const int DecodedBytesPerPixel = 4;

    /// <summary>
    /// Null when <paramref name="data"/> is a complete image; otherwise what is wrong with it. Run
    /// <see cref="SizeProblem"/> first: the decode check of formats other than PNG and JPEG allocates the declared size.
    /// </summary>
    public static string? Problem(ReadOnlyMemory<byte> data)
    {
        var span = data.Span;
        if (PngIntegrity.IsPng(span)) return PngIntegrity.Problem(data);
        if (JpegIntegrity.IsJpeg(span))
            return JpegIntegrity.Problem(span, out bool scansUnchecked) ?? (scansUnchecked ? DecodeProblem(data.ToArray()) : null);
        return DecodeProblem(data.ToArray());
    }

    /// <summary>
    /// Null when the image's header declares at most <paramref name="maxPixels"/> pixels (or declares no size we can
    /// read: <see cref="Problem"/> reports that); otherwise the declared size against the limit, with the memory a decode
    /// would take. Reads the header only, so a small file claiming a huge size costs nothing.
    /// </summary>
    /// <param name="data">The encoded image (only its header is read).</param>
    /// <param name="maxPixels">The most pixels (width x height) an image may declare.</param>
    /// <param name="limitName">What sets the limit, for the message.</param>
    public static string? SizeProblem(ReadOnlySpan<byte> data, long maxPixels, string limitName = ImageColumn.MaxImagePixelsName) =>
        Dimensions(data) is { } declared && declared.Pixels > maxPixels
            ? PixelLimitProblem($"the {declared.Format} image declares", declared.Width, declared.Height, maxPixels, limitName)
            : null;

    /// <summary>"{subject} W x H = N pixels, more than the limit of M (limit name); decoding it takes B bytes".</summary>
    public static string PixelLimitProblem(string subject, long width, long height, long maxPixels, string limitName)
    {
        long pixels = width * height;
        return string.Create(CultureInfo.InvariantCulture,
            $"{subject} {width} x {height} = {pixels:N0} pixels, more than the limit of {maxPixels:N0} ({limitName}); " +
            $"decoding it would take {pixels * DecodedBytesPerPixel / 1e9:0.0} GB");
    }

    /// <summary>
    /// The size and format an image's header declares, without decoding: PNG (IHDR), JPEG (the frame header), BMP, GIF
    /// (the logical screen) and WebP read here; any other format through SKCodec, whose Create reads the header only.
    /// Null when the header cannot be read.
    /// </summary>
    public static ImageDimensions? Dimensions(ReadOnlySpan<byte> data)
    {
        if (PngIntegrity.IsPng(data)) return PngIntegrity.Dimensions(data);
        if (JpegIntegrity.IsJpeg(data)) return JpegIntegrity.Dimensions(data);
        if (data.StartsWith("BM"u8)) return BmpDimensions(data);
        if (data.StartsWith("GIF87a"u8) || data.StartsWith("GIF89a"u8)) return GifDimensions(data);
        if (data.StartsWith("RIFF"u8) && data.Length >= 12 && data[8..12].SequenceEqual("WEBP"u8)) return WebPDimensions(data);
        return CodecDimensions(data);
    }

    /// <summary>BITMAPCOREHEADER (12 bytes) has 16-bit sizes; every later header 32-bit ones, a negative height meaning top-down.</summary>
    private static ImageDimensions? BmpDimensions(ReadOnlySpan<byte> data)
    {
        if (data.Length < 26) return null;
        uint headerSize = BinaryPrimitives.ReadUInt32LittleEndian(data[14..]);
        if (headerSize == 12)
            return Checked(BinaryPrimitives.ReadUInt16LittleEndian(data[18..]), BinaryPrimitives.ReadUInt16LittleEndian(data[20..]), "BMP");
        long width = BinaryPrimitives.ReadInt32LittleEndian(data[18..]);
        long height = BinaryPrimitives.ReadInt32LittleEndian(data[22..]);
        return Checked(width, Math.Abs(height), "BMP");
    }

    /// <summary>Skia decodes a GIF to its logical screen, whose size follows the signature.</summary>
    private static ImageDimensions? GifDimensions(ReadOnlySpan<byte> data) =>
        data.Length < 10 ? null
            : Checked(BinaryPrimitives.ReadUInt16LittleEndian(data[6..]), BinaryPrimitives.ReadUInt16LittleEndian(data[8..]), "GIF");

    /// <summary>The first chunk after "WEBP": VP8X (the canvas), VP8 (a lossy key frame) or VP8L (lossless).</summary>
    private static ImageDimensions? WebPDimensions(ReadOnlySpan<byte> data)
    {
        if (data.Length < 30) return null;
        var chunk = data[12..16];
        if (chunk.SequenceEqual("VP8X"u8))
            return Checked(ReadUInt24LittleEndian(data[24..]) + 1L, ReadUInt24LittleEndian(data[27..]) + 1L, "WebP");
        if (chunk.SequenceEqual("VP8 "u8) && data[23..26].SequenceEqual((ReadOnlySpan<byte>)[0x9D, 0x01, 0x2A]))
            return Checked(BinaryPrimitives.ReadUInt16LittleEndian(data[26..]) & 0x3FFF, BinaryPrimitives.ReadUInt16LittleEndian(data[28..]) & 0x3FFF, "WebP");
        if (chunk.SequenceEqual("VP8L"u8) && data[20] == 0x2F)
        {
            uint bits = BinaryPrimitives.ReadUInt32LittleEndian(data[21..]);
            return Checked((bits & 0x3FFF) + 1L, ((bits >> 14) & 0x3FFF) + 1L, "WebP");
        }
        return null;
    }

    private static int ReadUInt24LittleEndian(ReadOnlySpan<byte> data) => data[0] | data[1] << 8 | data[2] << 16;

    /// <summary>SKCodec.Create reads the header only; it holds a copy of the bytes, which are the file and nothing larger.</summary>
    private static ImageDimensions? CodecDimensions(ReadOnlySpan<byte> data)
    {
        using var stream = new SKMemoryStream(data.ToArray());
        using var codec = SKCodec.Create(stream);
        return codec is null ? null : Checked(codec.Info.Width, codec.Info.Height, codec.EncodedFormat.ToString());
    }

    /// <summary>The dimensions when both are positive and fit an int; otherwise null (no readable size).</summary>
    internal static ImageDimensions? Checked(long width, long height, string format) =>
        width is > 0 and <= int.MaxValue && height is > 0 and <= int.MaxValue ? new ImageDimensions((int)width, (int)height, format) : null;

    private static string? DecodeProblem(byte[] data)
    {
        using var stream = new SKMemoryStream(data);
        using var codec = SKCodec.Create(stream, out var created);
        if (codec is null) return $"not a decodable image ({created})";
        var info = new SKImageInfo(codec.Info.Width, codec.Info.Height, SKColorType.Bgra8888, SKAlphaType.Premul);
        using var bitmap = new SKBitmap(info);
        var result = codec.GetPixels(info, bitmap.GetPixels());
        return result switch
        {
            SKCodecResult.Success => null,
            SKCodecResult.IncompleteInput or SKCodecResult.ErrorInInput => $"a truncated or damaged {codec.EncodedFormat} image ({result})",
            _ => $"not a decodable {codec.EncodedFormat} image ({result})",
        };
    }
}

/// <summary>The size and format an image's header declares.</summary>
internal readonly record struct ImageDimensions(int Width, int Height, string Format)
{
    public long Pixels => (long)Width * Height;
}
