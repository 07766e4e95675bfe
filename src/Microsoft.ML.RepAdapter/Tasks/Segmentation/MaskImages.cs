using System.Buffers.Binary;
using System.IO.Compression;
using Microsoft.ML.RepAdapter.MLNet;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Segmentation;

/// <summary>
/// Masks as images: a class index per pixel, stored as a grayscale value. A mask must hold its indices exactly, so
/// lossy formats are refused and 16-bit PNGs are read at their depth (an 8-bit decode would keep the high byte and turn
/// 0 / 256 / 512 into classes 0 / 1 / 2).
/// </summary>
internal static class MaskImages
{
    /// <summary>The largest class index a mask can hold: indices are kept as bytes (255 is the default ignore value).</summary>
    private const int MaxIndex = byte.MaxValue;

    /// <summary>The class indices of a fetched mask, uint8 [H, W]; errors name the column, row and file.</summary>
    /// <param name="fetched">The mask as taken from its column.</param>
    /// <param name="maxPixels">The most pixels the mask may declare, checked before decoding it.</param>
    public static Tensor Read(FetchedImage fetched, long maxPixels = ImageColumn.DefaultMaxImagePixels)
    {
        string where = $"Mask column '{fetched.Column}', row {fetched.Row}" + (fetched.File is string file ? $" (file '{file}')" : "");
        // A LoadImages mask's file: its first bytes tell the format; ImageColumn.Decode reads the rest when it checks it.
        byte[]? encoded = fetched.Encoded ?? (fetched.File is string path && File.Exists(path) ? Head(path) : null);
        if (encoded is not null)
        {
            if (fetched.Encoded is null && SixteenBitPng.Is(encoded)) encoded = File.ReadAllBytes(fetched.File!);
            if (LossyFormat(encoded) is string lossy)
                throw new InvalidDataException($"{where}: the mask is {lossy}, whose compression changes pixel values, so class indices would not survive; save masks as PNG.");
            if (SixteenBitPng.Is(encoded))
            {
                if (ImageIntegrity.Problem(encoded) is string problem) throw new InvalidDataException($"{where}: {problem}.");
                try
                {
                    return SixteenBitPng.ClassIndices(encoded, MaxIndex, maxPixels);
                }
                catch (InvalidDataException e)
                {
                    throw new InvalidDataException($"{where}: {e.Message}", e);
                }
            }
        }
        return ImageColumn.Decode(fetched, ClassIndices, maxPixels, kind: "Mask");
    }

    /// <summary>The first bytes of a file: enough for <see cref="LossyFormat"/> and <see cref="SixteenBitPng.Is"/>.</summary>
    private static byte[] Head(string path)
    {
        using var file = File.OpenRead(path);
        var head = new byte[32];
        return head[..file.ReadAtLeast(head, head.Length, throwOnEndOfStream: false)];
    }

    /// <summary>"a JPEG" or "a lossy WebP" for formats that do not keep pixel values; null otherwise.</summary>
    private static string? LossyFormat(ReadOnlySpan<byte> data)
    {
        if (data.StartsWith((ReadOnlySpan<byte>)[0xFF, 0xD8, 0xFF])) return "a JPEG";
        // RIFF....WEBPVP8 : the lossy bitstream ("VP8L" is lossless, "VP8X" an extended file that may hold either).
        if (data.Length >= 16 && data[..4].SequenceEqual("RIFF"u8) && data[8..12].SequenceEqual("WEBP"u8) && data[12..16].SequenceEqual("VP8 "u8))
            return "a lossy WebP";
        return null;
    }

    /// <summary>
    /// The class index of every pixel, uint8 [H, W]: the gray value of a grayscale image (R = G = B). A colour image is
    /// refused: its colours are not class indices (a palette PNG must be converted to grayscale indices first).
    /// </summary>
    public static Tensor ClassIndices(DecodedImage mask)
    {
        byte[] bgr = mask.Bgr;
        for (int i = 0; i < bgr.Length; i += 3)
        {
            if (bgr[i] != bgr[i + 1] || bgr[i] != bgr[i + 2])
            {
                int pixel = i / 3;
                throw new InvalidDataException(
                    $"the mask is not grayscale: pixel (x {pixel % mask.Width}, y {pixel / mask.Width}) is RGB ({bgr[i + 2]}, {bgr[i + 1]}, {bgr[i]}); "
                    + "a mask holds one class index per pixel as its gray value (convert palette or colour masks to indices).");
            }
        }
        using var scope = NewDisposeScope();
        return tensor(bgr, ScalarType.Byte).view(mask.Height, mask.Width, 3).select(2, 0).contiguous().MoveToOuterDisposeScope();
    }

    /// <summary>
    /// 16-bit grayscale PNGs, decoded here: Skia (behind MLImage) reduces them to 8 bits. Only what masks use is read
    /// (grayscale, not interlaced); other 16-bit layouts are refused with the reason rather than guessed at.
    /// </summary>
    private static class SixteenBitPng
    {
        public static bool Is(ReadOnlySpan<byte> data) =>
            data.Length >= 29 && PngIntegrity.IsPng(data) && data[12..16].SequenceEqual("IHDR"u8) && data[24] == 16;

        /// <summary>Each pixel's 16-bit value as a class index, refusing values above <paramref name="maxIndex"/>.</summary>
        public static Tensor ClassIndices(byte[] data, int maxIndex, long maxPixels)
        {
            int width = checked((int)BinaryPrimitives.ReadUInt32BigEndian(data.AsSpan(16))), height = checked((int)BinaryPrimitives.ReadUInt32BigEndian(data.AsSpan(20)));
            byte colorType = data[25], interlace = data[28];
            if (colorType != 0)
                throw new InvalidDataException($"the mask is a 16-bit PNG of colour type {colorType}: a 16-bit mask must be grayscale (colour type 0).");
            if (interlace != 0) throw new InvalidDataException("the mask is an interlaced 16-bit PNG: save it without interlacing.");
            if ((long)width * height > maxPixels)
                throw new InvalidDataException(ImageIntegrity.PixelLimitProblem("the 16-bit mask declares", width, height, maxPixels, ImageColumn.MaxImagePixelsName));
            int stride = 2 * width;
            var indices = new byte[(long)width * height];
            using var inflated = new ZLibStream(new MemoryStream(ImageData(data)), CompressionMode.Decompress);
            var previous = new byte[stride];
            var row = new byte[stride];
            for (int y = 0; y < height; y++)
            {
                int filter = inflated.ReadByte();
                if (filter < 0 || inflated.ReadAtLeast(row, stride, throwOnEndOfStream: false) < stride)
                    throw new InvalidDataException($"the 16-bit mask's image data ends at row {y} of {height}.");
                Unfilter(filter, row, previous, bytesPerPixel: 2, y);
                for (int x = 0; x < width; x++)
                {
                    int value = row[2 * x] << 8 | row[2 * x + 1];
                    if (value > maxIndex)
                        throw new InvalidDataException($"the 16-bit mask holds {value} at pixel (x {x}, y {y}): class indices go up to {maxIndex}.");
                    indices[(long)y * width + x] = (byte)value;
                }
                (previous, row) = (row, previous);
            }
            using var scope = NewDisposeScope();
            return tensor(indices, ScalarType.Byte).view(height, width).MoveToOuterDisposeScope();
        }

        /// <summary>The IDAT chunks' data, concatenated (ImageIntegrity has checked the chunk framing).</summary>
        private static byte[] ImageData(byte[] data)
        {
            using var image = new MemoryStream();
            for (long position = 8; position + 12 <= data.Length;)
            {
                int length = checked((int)BinaryPrimitives.ReadUInt32BigEndian(data.AsSpan((int)position)));
                if (data.AsSpan((int)position + 4, 4).SequenceEqual("IDAT"u8)) image.Write(data, (int)position + 8, length);
                position += 12L + length;
            }
            return image.ToArray();
        }

        /// <summary>Undoes a PNG row filter in place (filter types 0-4 of the PNG specification).</summary>
        private static void Unfilter(int filter, byte[] row, byte[] previous, int bytesPerPixel, int y)
        {
            for (int i = 0; i < row.Length; i++)
            {
                int left = i >= bytesPerPixel ? row[i - bytesPerPixel] : 0, up = previous[i], upLeft = i >= bytesPerPixel ? previous[i - bytesPerPixel] : 0;
                row[i] = filter switch
                {
                    0 => row[i],
                    1 => (byte)(row[i] + left),
                    2 => (byte)(row[i] + up),
                    3 => (byte)(row[i] + (left + up) / 2),
                    4 => (byte)(row[i] + Paeth(left, up, upLeft)),
                    _ => throw new InvalidDataException($"the 16-bit mask's row {y} has filter type {filter}; PNG defines 0-4."),
                };
            }
        }

        private static int Paeth(int a, int b, int c)
        {
            int p = a + b - c, pa = Math.Abs(p - a), pb = Math.Abs(p - b), pc = Math.Abs(p - c);
            return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
        }
    }
}
