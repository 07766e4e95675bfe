using System.Buffers.Binary;
using SkiaSharp;

namespace Microsoft.ML.RepAdapter.MLNet;

/// <summary>
/// Whether an encoded image is complete. Skia (behind MLImage) decodes a truncated PNG or JPEG without complaint and
/// leaves the missing rows black, which would train and score silently on damaged data. PNG and JPEG are checked by
/// walking their structure (cheap: no decompression); other formats by decoding with SKCodec, which reports an
/// incomplete input.
/// </summary>
internal static class ImageIntegrity
{
    /// <summary>Null when <paramref name="data"/> is a complete image; otherwise what is wrong with it.</summary>
    public static string? Problem(ReadOnlySpan<byte> data)
    {
        if (data.StartsWith((ReadOnlySpan<byte>)[0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A])) return PngProblem(data);
        if (data.StartsWith((ReadOnlySpan<byte>)[0xFF, 0xD8])) return JpegProblem(data);
        return DecodeProblem(data.ToArray());
    }

    /// <summary>A PNG is a signature and chunks (length, type, data, CRC) up to IEND.</summary>
    private static string? PngProblem(ReadOnlySpan<byte> data)
    {
        long position = 8;
        while (true)
        {
            if (position + 8 > data.Length) return $"a truncated PNG: it ends at byte {data.Length} without its IEND chunk";
            long length = BinaryPrimitives.ReadUInt32BigEndian(data[(int)position..]);
            string type = System.Text.Encoding.ASCII.GetString(data.Slice((int)position + 4, 4));
            if (position + 12 + length > data.Length)
                return $"a truncated PNG: chunk '{type}' at byte {position} needs {length + 12} bytes, {data.Length - position} are left";
            if (type == "IEND") return null;
            position += 12 + length;
        }
    }

    /// <summary>
    /// A JPEG is markers from SOI to EOI; after each start of scan come entropy-coded bytes, in which 0xFF is always
    /// followed by 0x00 or a restart marker, so the next real marker is found by scanning.
    /// </summary>
    private static string? JpegProblem(ReadOnlySpan<byte> data)
    {
        int position = 2;
        while (true)
        {
            while (position < data.Length && data[position] == 0xFF && position + 1 < data.Length && data[position + 1] == 0xFF) position++;
            if (position + 1 >= data.Length) return $"a truncated JPEG: it ends at byte {data.Length} without its end-of-image marker";
            if (data[position] != 0xFF) return $"a damaged JPEG: expected a marker at byte {position}, found 0x{data[position]:x2}";
            byte marker = data[position + 1];
            position += 2;
            if (marker == 0xD9) return null;                                          // EOI
            if (marker is 0x01 or >= 0xD0 and <= 0xD7) continue;                      // no length
            if (position + 2 > data.Length) return $"a truncated JPEG: it ends inside marker 0x{marker:x2}";
            int length = BinaryPrimitives.ReadUInt16BigEndian(data[position..]);
            if (length < 2 || position + length > data.Length) return $"a truncated JPEG: segment 0x{marker:x2} at byte {position - 2} runs past the end";
            position += length;
            if (marker != 0xDA) continue;                                            // SOS: entropy-coded data follows
            while (position + 1 < data.Length && !(data[position] == 0xFF && data[position + 1] is not 0x00 and not (>= 0xD0 and <= 0xD7)))
                position++;
        }
    }

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
