using System.Buffers.Binary;
using System.IO.Compression;
using SkiaSharp;

namespace Microsoft.ML.RepAdapter.Tests.MLNet;

/// <summary>
/// Encoded images made for the integrity tests: PNGs written by hand (any colour type, bit depth and interlace, with
/// image data of any length), JPEGs from Skia and the committed libjpeg fixtures, and the surgery that damages them.
/// </summary>
internal static class TestImages
{
    /// <summary>A PNG's IHDR fields, and what its image data must hold.</summary>
    public sealed record PngSpec(int Width, int Height, int ColourType, int BitDepth, bool Interlaced = false)
    {
        private static readonly (int X, int Y, int StepX, int StepY)[] Adam7 =
            [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)];

        public int Channels => ColourType switch { 0 => 1, 2 => 3, 3 => 1, 4 => 2, _ => 4 };

        /// <summary>Each row of each pass (one pass unless interlaced) as its byte count, filter byte included.</summary>
        public IEnumerable<int> RowLengths()
        {
            var passes = Interlaced
                ? Adam7.Select(p => (Width: Math.Max(0, (Width - p.X + p.StepX - 1) / p.StepX), Height: Math.Max(0, (Height - p.Y + p.StepY - 1) / p.StepY)))
                : [(Width, Height)];
            foreach (var (width, height) in passes.Where(p => p.Width > 0 && p.Height > 0))
                for (int row = 0; row < height; row++)
                    yield return 1 + (width * Channels * BitDepth + 7) / 8;
        }

        /// <summary>Valid image data: each row filter 0 (none) and random samples.</summary>
        public byte[] RawImageData(int seed = 1)
        {
            var random = new Random(seed);
            var raw = new List<byte>();
            foreach (int length in RowLengths())
            {
                var row = new byte[length];
                random.NextBytes(row);
                row[0] = 0;
                raw.AddRange(row);
            }
            return [.. raw];
        }
    }

    /// <summary>A PNG of <paramref name="spec"/> whose IDAT holds <paramref name="raw"/> (by default, the right data).</summary>
    public static byte[] Png(PngSpec spec, byte[]? raw = null)
    {
        raw ??= spec.RawImageData();
        using var compressed = new MemoryStream();
        using (var zlib = new ZLibStream(compressed, CompressionLevel.Optimal, leaveOpen: true)) zlib.Write(raw);
        return PngFile(spec, compressed.ToArray());
    }

    /// <summary>A PNG of <paramref name="spec"/> with <paramref name="zlibData"/> split over two IDAT chunks.</summary>
    public static byte[] PngFile(PngSpec spec, byte[] zlibData)
    {
        using var png = new MemoryStream();
        png.Write([0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A]);
        var header = new byte[13];
        BinaryPrimitives.WriteInt32BigEndian(header, spec.Width);
        BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(4), spec.Height);
        (header[8], header[9], header[12]) = ((byte)spec.BitDepth, (byte)spec.ColourType, (byte)(spec.Interlaced ? 1 : 0));
        WriteChunk(png, "IHDR", header);
        if (spec.ColourType == 3) WriteChunk(png, "PLTE", [.. Enumerable.Range(0, 3 << spec.BitDepth).Select(i => (byte)(i * 37))]);
        int half = zlibData.Length / 2;
        WriteChunk(png, "IDAT", zlibData[..half]);
        WriteChunk(png, "IDAT", zlibData[half..]);
        WriteChunk(png, "IEND", []);
        return png.ToArray();
    }

    /// <summary>A chunk: length, type, data and the CRC-32 of type and data.</summary>
    private static void WriteChunk(Stream png, string type, byte[] data)
    {
        byte[] typeAndData = [.. type.Select(c => (byte)c), .. data];
        Span<byte> field = stackalloc byte[4];
        BinaryPrimitives.WriteInt32BigEndian(field, data.Length);
        png.Write(field);
        png.Write(typeAndData);
        BinaryPrimitives.WriteUInt32BigEndian(field, Crc32(typeAndData));
        png.Write(field);
    }

    private static uint Crc32(ReadOnlySpan<byte> data)
    {
        uint crc = 0xFFFFFFFF;
        foreach (byte b in data)
        {
            crc ^= b;
            for (int bit = 0; bit < 8; bit++) crc = (crc & 1) != 0 ? 0xEDB88320 ^ (crc >> 1) : crc >> 1;
        }
        return ~crc;
    }

    /// <summary>A 61 x 43 image (odd sizes: partial MCUs) of gradients and noise, so every coefficient band is used.</summary>
    public static SKBitmap Picture(int width = 61, int height = 43)
    {
        var bitmap = new SKBitmap(new SKImageInfo(width, height, SKColorType.Rgba8888, SKAlphaType.Premul));
        var random = new Random(3);
        for (int y = 0; y < height; y++)
            for (int x = 0; x < width; x++)
                bitmap.SetPixel(x, y, new SKColor((byte)(x * 4 + random.Next(30)), (byte)(y * 5 + random.Next(30)), (byte)((x + y) * 2), 255));
        return bitmap;
    }

    public static byte[] Jpeg(SKBitmap bitmap, SKJpegEncoderDownsample downsample)
    {
        using var pixmap = bitmap.PeekPixels();
        using var data = pixmap.Encode(new SKJpegEncoderOptions(90, downsample, SKJpegEncoderAlphaOption.Ignore));
        return data?.ToArray() ?? throw new InvalidOperationException("Skia could not encode the JPEG.");
    }

    public static byte[] WebP(SKBitmap bitmap, SKWebpEncoderCompression compression)
    {
        using var pixmap = bitmap.PeekPixels();
        using var data = pixmap.Encode(new SKWebpEncoderOptions(compression, 80));
        return data?.ToArray() ?? throw new InvalidOperationException("Skia could not encode the WebP.");
    }

    public static byte[] Encode(SKBitmap bitmap, SKEncodedImageFormat format, int quality = 90)
    {
        using var data = bitmap.Encode(format, quality);
        return data.ToArray();
    }

    public static byte[] JpegFixture(string name) => File.ReadAllBytes(TestData.Fixture(Path.Combine("jpeg", name)));

    /// <summary>
    /// Where each scan's entropy-coded data begins and ends (at the next marker other than a restart marker), and
    /// whether it is a progressive AC refinement scan (Ss &gt; 0 and Ah &gt; 0 in its header's last bytes).
    /// </summary>
    public static List<(int Start, int End, bool AcRefinement)> JpegScans(byte[] jpeg)
    {
        var scans = new List<(int, int, bool)>();
        int position = 2;
        while (position + 4 <= jpeg.Length && jpeg[position + 1] != 0xD9)
        {
            int length = BinaryPrimitives.ReadUInt16BigEndian(jpeg.AsSpan(position + 2));
            bool scan = jpeg[position + 1] == 0xDA;
            position += 2 + length;
            if (!scan) continue;
            int start = position;
            while (!(jpeg[position] == 0xFF && jpeg[position + 1] is not 0x00 and not (>= 0xD0 and <= 0xD7))) position++;
            scans.Add((start, position, jpeg[start - 3] > 0 && jpeg[start - 1] >> 4 > 0));
        }
        return scans;
    }

    /// <summary>The file up to <paramref name="cut"/>, then an end-of-image marker: correct markers, short data.</summary>
    public static byte[] CutAndEnd(byte[] jpeg, int cut) => [.. jpeg[..cut], 0xFF, 0xD9];

    /// <summary>The JPEG without its Huffman table segments (DHT), as Motion-JPEG frames come.</summary>
    public static byte[] WithoutHuffmanTables(byte[] jpeg)
    {
        var kept = new List<byte>(jpeg[..2]);
        int position = 2;
        while (jpeg[position + 1] != 0xDA)
        {
            int length = 2 + BinaryPrimitives.ReadUInt16BigEndian(jpeg.AsSpan(position + 2));
            if (jpeg[position + 1] != 0xC4) kept.AddRange(jpeg[position..(position + length)]);
            position += length;
        }
        kept.AddRange(jpeg[position..]);
        return [.. kept];
    }

    /// <summary>A 54-byte BMP: file header and BITMAPINFOHEADER, no pixels.</summary>
    public static byte[] BmpHeader(int width, int height, int headerSize = 40)
    {
        var bmp = new byte[14 + headerSize];
        "BM"u8.CopyTo(bmp);
        BinaryPrimitives.WriteInt32LittleEndian(bmp.AsSpan(2), bmp.Length);
        BinaryPrimitives.WriteInt32LittleEndian(bmp.AsSpan(10), bmp.Length);
        BinaryPrimitives.WriteInt32LittleEndian(bmp.AsSpan(14), headerSize);
        if (headerSize == 12)
        {
            BinaryPrimitives.WriteInt16LittleEndian(bmp.AsSpan(18), (short)width);
            BinaryPrimitives.WriteInt16LittleEndian(bmp.AsSpan(20), (short)height);
            BinaryPrimitives.WriteInt16LittleEndian(bmp.AsSpan(22), 1);
            BinaryPrimitives.WriteInt16LittleEndian(bmp.AsSpan(24), 24);
        }
        else
        {
            BinaryPrimitives.WriteInt32LittleEndian(bmp.AsSpan(18), width);
            BinaryPrimitives.WriteInt32LittleEndian(bmp.AsSpan(22), height);
            BinaryPrimitives.WriteInt16LittleEndian(bmp.AsSpan(26), 1);
            BinaryPrimitives.WriteInt16LittleEndian(bmp.AsSpan(28), 24);
        }
        return bmp;
    }
}
