using System.Buffers;
using System.Buffers.Binary;
using System.IO.Compression;

namespace Microsoft.ML.RepAdapter.MLNet;

/// <summary>
/// Whether a PNG holds all its rows. Verified: the chunk framing (length, type, data, CRC field) up to IEND, with
/// IHDR first and valid (size, colour type with bit depth, interlace); then the concatenated IDAT data is inflated
/// (zlib, streamed through a small buffer: the image is never built) and must decompress to exactly the bytes IHDR
/// implies, each row a filter byte and its packed samples, over the seven Adam7 passes when interlaced. Fewer bytes are
/// missing rows (Skia would leave them black), more are damage, and a corrupt zlib stream (including its Adler-32) is
/// damage. Not verified: chunk CRCs, row filter types and ancillary chunks (libpng rejects the critical ones itself).
/// The work stops once the count passes the expected size, so it is bounded by what IHDR declares, which
/// <see cref="ImageIntegrity.SizeProblem"/> limits first.
/// </summary>
internal static class PngIntegrity
{
    private static ReadOnlySpan<byte> Signature => [0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A];

    /// <summary>The inflate buffer: big enough to keep zlib calls few, small next to any image.</summary>
    private const int InflateBufferBytes = 64 * 1024;

    public static bool IsPng(ReadOnlySpan<byte> data) => data.StartsWith(Signature);

    /// <summary>IHDR's width and height: the first chunk, right after the signature.</summary>
    public static ImageDimensions? Dimensions(ReadOnlySpan<byte> data) =>
        data.Length >= 24 && data[12..16].SequenceEqual("IHDR"u8)
            ? ImageIntegrity.Checked(BinaryPrimitives.ReadUInt32BigEndian(data[16..]), BinaryPrimitives.ReadUInt32BigEndian(data[20..]), "PNG")
            : null;

    public static string? Problem(ReadOnlyMemory<byte> data)
    {
        if (FramingProblem(data.Span, out int firstImageData) is string framing) return framing;
        if (PngHeader.Parse(data.Span, out var header) is string invalid) return invalid;
        if (firstImageData < 0) return "a damaged PNG: it has no image data (no IDAT chunk)";
        return ImageDataProblem(new ImageDataStream(data, firstImageData), header);
    }

    /// <summary>
    /// A PNG is a signature and chunks (length, type, data, CRC) up to IEND. Sets <paramref name="firstImageData"/> to
    /// the offset of the first IDAT chunk (-1 when there is none).
    /// </summary>
    private static string? FramingProblem(ReadOnlySpan<byte> data, out int firstImageData)
    {
        firstImageData = -1;
        long position = Signature.Length;
        while (true)
        {
            if (position + 8 > data.Length) return $"a truncated PNG: it ends at byte {data.Length} without its IEND chunk";
            long length = BinaryPrimitives.ReadUInt32BigEndian(data[(int)position..]);
            var type = data.Slice((int)position + 4, 4);
            string name = System.Text.Encoding.ASCII.GetString(type);
            if (position + 12 + length > data.Length)
                return $"a truncated PNG: chunk '{name}' at byte {position} needs {length + 12} bytes, {data.Length - position} are left";
            if (position == Signature.Length && name != "IHDR") return $"a damaged PNG: its first chunk is '{name}', not IHDR";
            if (name == "IEND") return null;
            if (name == "IDAT" && firstImageData < 0) firstImageData = (int)position;
            position += 12 + length;
        }
    }

    /// <summary>Inflates the image data, counting bytes, and compares the count with what the header implies.</summary>
    private static string? ImageDataProblem(Stream compressed, PngHeader header)
    {
        long expected = header.ImageDataBytes();
        long inflated = 0;
        byte[] buffer = ArrayPool<byte>.Shared.Rent(InflateBufferBytes);
        try
        {
            using var inflater = new ZLibStream(compressed, CompressionMode.Decompress);
            int read;
            while ((read = inflater.Read(buffer, 0, buffer.Length)) > 0)
            {
                inflated += read;
                if (inflated > expected)
                    return $"a damaged PNG: its image data decompresses to more than the {expected} bytes that {header.Description} need";
            }
        }
        catch (InvalidDataException e)
        {
            return $"a damaged PNG: its compressed image data is corrupt after {inflated} bytes ({e.Message})";
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
        return inflated < expected ? $"a truncated PNG: its image data holds {header.Coverage(inflated)}" : null;
    }

    /// <summary>The IDAT chunks' data, one after another, as the zlib stream they hold; other chunks are skipped.</summary>
    private sealed class ImageDataStream(ReadOnlyMemory<byte> png, int firstChunk) : Stream
    {
        private int _nextChunk = firstChunk;
        private ReadOnlyMemory<byte> _current = ReadOnlyMemory<byte>.Empty;

        public override int Read(Span<byte> buffer)
        {
            while (_current.IsEmpty && NextImageDataChunk()) { }
            int count = Math.Min(buffer.Length, _current.Length);
            _current.Span[..count].CopyTo(buffer);
            _current = _current[count..];
            return count;
        }

        /// <summary>Moves to the next chunk (framing is already checked); false at IEND.</summary>
        private bool NextImageDataChunk()
        {
            var chunk = png.Span[_nextChunk..];
            int length = (int)BinaryPrimitives.ReadUInt32BigEndian(chunk);
            if (chunk[4..8].SequenceEqual("IEND"u8)) return false;
            if (chunk[4..8].SequenceEqual("IDAT"u8)) _current = png.Slice(_nextChunk + 8, length);
            _nextChunk += 12 + length;
            return true;
        }

        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}

/// <summary>IHDR: what the image data must hold.</summary>
internal readonly record struct PngHeader(int Width, int Height, int BitDepth, int ColourType, bool Interlaced)
{
    /// <summary>Adam7's passes: first column and row, then the step between them.</summary>
    private static readonly (int X, int Y, int StepX, int StepY)[] Adam7 =
        [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)];

    /// <summary>Reads and validates IHDR (the first chunk: framing has checked it is there).</summary>
    public static string? Parse(ReadOnlySpan<byte> png, out PngHeader header)
    {
        header = default;
        var chunk = png[8..];
        if (BinaryPrimitives.ReadUInt32BigEndian(chunk) != 13) return "a damaged PNG: its IHDR chunk is not 13 bytes";
        var fields = chunk[8..21];
        uint width = BinaryPrimitives.ReadUInt32BigEndian(fields), height = BinaryPrimitives.ReadUInt32BigEndian(fields[4..]);
        if (width is 0 or > int.MaxValue || height is 0 or > int.MaxValue) return $"a damaged PNG: IHDR declares {width} x {height} pixels";
        header = new PngHeader((int)width, (int)height, fields[8], fields[9], fields[12] == 1);
        if (header.Channels == 0 || !header.AllowsBitDepth) return $"a damaged PNG: IHDR declares colour type {fields[9]} with bit depth {fields[8]}, which PNG does not allow";
        if (fields[10] != 0 || fields[11] != 0 || fields[12] > 1) return $"a damaged PNG: IHDR declares compression {fields[10]}, filter {fields[11]}, interlace {fields[12]}";
        return null;
    }

    /// <summary>Samples per pixel: grey, -, RGB, palette index, grey and alpha, -, RGBA; 0 for an invalid colour type.</summary>
    public int Channels => ColourType switch { 0 => 1, 2 => 3, 3 => 1, 4 => 2, 6 => 4, _ => 0 };

    private bool AllowsBitDepth => ColourType switch
    {
        0 => BitDepth is 1 or 2 or 4 or 8 or 16,
        3 => BitDepth is 1 or 2 or 4 or 8,
        _ => BitDepth is 8 or 16,
    };

    /// <summary>The inflated image data's size: each row is a filter byte and its samples, packed to whole bytes.</summary>
    public long ImageDataBytes()
    {
        if (!Interlaced) return PassBytes(Width, Height);
        long total = 0;
        foreach (var (x, y, stepX, stepY) in Adam7)
            total = SaturatingAdd(total, PassBytes(PassSize(Width, x, stepX), PassSize(Height, y, stepY)));
        return total;
    }

    /// <summary>"4 of its 28 rows (...)"; interlaced, where rows are spread over seven passes, the bytes.</summary>
    public string Coverage(long inflated) => Interlaced
        ? $"{inflated} of the {ImageDataBytes()} bytes that {Description} need"
        : $"{inflated / RowBytes(Width)} of its {Height} rows ({inflated} of the {ImageDataBytes()} bytes that {Description} need)";

    /// <summary>"28 x 28 pixels of colour type 2, bit depth 8".</summary>
    public string Description =>
        $"{Width} x {Height} pixels of colour type {ColourType}, bit depth {BitDepth}{(Interlaced ? ", Adam7 interlaced," : "")}";

    /// <summary>Pixels of a pass along one axis: from its first one, every step-th; none when the image is smaller.</summary>
    private static int PassSize(int size, int first, int step) => size <= first ? 0 : (size - first + step - 1) / step;

    /// <summary>An empty pass has no rows, not even filter bytes.</summary>
    private long PassBytes(int width, int height) => width == 0 || height == 0 ? 0 : SaturatingMultiply(height, RowBytes(width));

    private long RowBytes(int width) => 1 + ((long)width * Channels * BitDepth + 7) / 8;

    // A declared size can pass long's range (2^31 rows of 2^34 bytes) though no data could fill it: saturate.
    private static long SaturatingMultiply(long a, long b) => (long)Int128.Min((Int128)a * b, long.MaxValue);

    private static long SaturatingAdd(long a, long b) => (long)Int128.Min((Int128)a + b, long.MaxValue);
}
