using System.Buffers.Binary;

namespace Microsoft.ML.RepAdapter.MLNet;

/// <summary>
/// Whether a JPEG holds all its image data. Every JPEG: the markers from SOI to EOI, with segment lengths in bounds (a
/// file cut short has no EOI). Then by frame type:
/// <list type="bullet">
/// <item>Baseline and extended-sequential Huffman (SOF0, SOF1): every scan's entropy-coded data is Huffman-decoded
/// (coefficients skipped, no dequantization or IDCT) and must hold every MCU its frame needs: ceil(W / 8 Hmax) x
/// ceil(H / 8 Vmax) for an interleaved scan, ceil(Wc / 8) x ceil(Hc / 8) blocks for a one-component scan; restart
/// markers must come in sequence after every interval; every component must be in a scan. A scan cut short, whether
/// the file then ends or an EOI or a later scan follows, is caught, and so is an invalid Huffman code.</item>
/// <item>Progressive (SOF2): every component must have a DC scan; the DC scans (first and refinement) and the first
/// scans of AC bands are decoded and must hold every block. Not verified: the data of AC refinement scans (skipping
/// their coefficients needs each coefficient's history, memory in proportion to the image; Skia does not notice a cut
/// one either), and whether the scans cover every AC band and bit, which the standard does not require, so a file
/// ending between scans after its DC scans is a complete (blurred) image and passes.</item>
/// <item>Arithmetic-coded (SOF9 to SOF11), lossless (SOF3) and hierarchical frames: refused. They are rare, their
/// completeness is not checked here, and Skia decodes a truncated arithmetic-coded JPEG silently, with grey rows.</item>
/// <item>A scan using a Huffman table no DHT segment defines (Motion-JPEG frames rely on the standard tables) is not
/// decoded here but left to the SKCodec decode check, which finds an undecodable image but not missing rows: the
/// completeness of such a JPEG is not verified.</item>
/// </list>
/// Defensive: every loop is bounded by the data or the declared size, nothing is allocated in proportion to either,
/// and a problem is returned, never thrown.
/// </summary>
internal static class JpegIntegrity
{
    private const byte DefineHuffmanTables = 0xC4, StartOfScan = 0xDA, DefineRestartInterval = 0xDD;
    internal const byte EndOfImage = 0xD9;

    public static bool IsJpeg(ReadOnlySpan<byte> data) => data.StartsWith((ReadOnlySpan<byte>)[0xFF, 0xD8]);

    /// <summary>The frame header's size: the markers are read up to the first SOFn, the image data never.</summary>
    public static ImageDimensions? Dimensions(ReadOnlySpan<byte> data)
    {
        var markers = new JpegMarkers(data);
        while (markers.TryNext(out byte marker, out var segment, out _) && marker is not EndOfImage and not StartOfScan)
            if (IsStartOfFrame(marker) && segment.Length >= 5)
                return ImageIntegrity.Checked(BinaryPrimitives.ReadUInt16BigEndian(segment[3..]), BinaryPrimitives.ReadUInt16BigEndian(segment[1..]), "JPEG");
        return null;
    }

    /// <summary>
    /// Null when the JPEG is complete, as far as the class summary says; otherwise what is wrong with it.
    /// <paramref name="scansUnchecked"/> is set when some scan uses Huffman tables no DHT defines, so that its data
    /// could not be decoded here: the caller should decode the image to check that it decodes at all.
    /// </summary>
    public static string? Problem(ReadOnlySpan<byte> data, out bool scansUnchecked)
    {
        scansUnchecked = false;
        var markers = new JpegMarkers(data);
        var tables = new HuffmanTables();
        JpegFrame? frame = null;
        int restartInterval = 0, scans = 0;
        while (true)
        {
            if (!markers.TryNext(out byte marker, out var segment, out string? problem)) return problem;
            if (marker == EndOfImage) return frame is null ? "a damaged JPEG: it has no frame header (SOF)" : frame.MissingScanProblem();
            if (marker == DefineHuffmanTables) problem = tables.Define(segment);
            else if (marker == DefineRestartInterval) problem = ReadRestartInterval(segment, out restartInterval);
            else if (IsStartOfFrame(marker))
                problem = frame is not null ? "a damaged JPEG: it has a second frame header" : JpegFrame.Parse(marker, segment, out frame);
            else if (marker == StartOfScan)
            {
                if (frame is null) return "a damaged JPEG: a scan comes before the frame header";
                problem = JpegScan.Parse(segment, frame, ++scans, out var scan)
                    ?? ScanDataProblem(data, markers.SegmentEnd, frame, scan!, tables, restartInterval, ref scansUnchecked);
            }
            if (problem is not null) return problem;
        }
    }

    /// <summary>
    /// Decodes the scan's data when it can be decoded here (marks it unchecked when its tables are missing; AC
    /// refinement scans are never decoded), and records which components now have their data.
    /// </summary>
    private static string? ScanDataProblem(
        ReadOnlySpan<byte> data, int start, JpegFrame frame, JpegScan scan, HuffmanTables tables, int restartInterval, ref bool scansUnchecked)
    {
        bool hasTables = tables.HasAll(scan);
        scansUnchecked |= !hasTables;
        if (hasTables && scan.Kind != JpegScanKind.AcRefinement
            && JpegScanDecoder.Problem(data, start, frame, scan, tables, restartInterval) is string problem)
            return problem;
        if (scan.BringsData)
            foreach (var component in scan.Components) component.HasData = true;
        return null;
    }

    private static string? ReadRestartInterval(ReadOnlySpan<byte> segment, out int interval)
    {
        interval = segment.Length == 2 ? BinaryPrimitives.ReadUInt16BigEndian(segment) : 0;
        return segment.Length == 2 ? null : "a damaged JPEG: its restart interval segment (DRI) is not 4 bytes";
    }

    /// <summary>SOF0 to SOF15, except the codes that DHT (C4), JPG (C8) and DAC (CC) took.</summary>
    internal static bool IsStartOfFrame(byte marker) => marker is >= 0xC0 and <= 0xCF and not 0xC4 and not 0xC8 and not 0xCC;
}

/// <summary>
/// The markers of a JPEG with their segments, in order. Entropy-coded data follows each scan header; in it 0xFF is
/// always followed by 0x00 or a restart marker, so the next real marker is found by scanning.
/// </summary>
internal ref struct JpegMarkers
{
    private readonly ReadOnlySpan<byte> _data;
    private int _position = 2;
    private bool _afterScanHeader;

    public JpegMarkers(ReadOnlySpan<byte> data) => _data = data;

    /// <summary>Where the last segment ended: for a scan header, where its entropy-coded data begins.</summary>
    public readonly int SegmentEnd => _position;

    /// <summary>
    /// The next marker and its segment (without the length field; empty for markers without one). False, with the
    /// problem, when the structure breaks: the data ends before EOI, a marker is missing, a segment runs past the end.
    /// </summary>
    public bool TryNext(out byte marker, out ReadOnlySpan<byte> segment, out string? problem)
    {
        marker = 0;
        segment = default;
        problem = null;
        if (_afterScanHeader) SkipEntropyCodedData();
        while (_position + 1 < _data.Length && _data[_position] == 0xFF && _data[_position + 1] == 0xFF) _position++;  // fill bytes
        if (_position + 1 >= _data.Length) return Fail($"a truncated JPEG: it ends at byte {_data.Length} without its end-of-image marker", out problem);
        if (_data[_position] != 0xFF) return Fail($"a damaged JPEG: expected a marker at byte {_position}, found 0x{_data[_position]:x2}", out problem);
        marker = _data[_position + 1];
        _position += 2;
        _afterScanHeader = false;
        if (marker is JpegIntegrity.EndOfImage or 0x01 or >= 0xD0 and <= 0xD7) return true;   // no length
        if (_position + 2 > _data.Length) return Fail($"a truncated JPEG: it ends inside marker 0x{marker:x2}", out problem);
        int length = BinaryPrimitives.ReadUInt16BigEndian(_data[_position..]);
        if (length < 2 || _position + length > _data.Length)
            return Fail($"a truncated JPEG: segment 0x{marker:x2} at byte {_position - 2} runs past the end", out problem);
        segment = _data.Slice(_position + 2, length - 2);
        _position += length;
        _afterScanHeader = marker == 0xDA;
        return true;
    }

    private static bool Fail(string message, out string problem)
    {
        problem = message;
        return false;
    }

    private void SkipEntropyCodedData()
    {
        while (_position + 1 < _data.Length && !(_data[_position] == 0xFF && _data[_position + 1] is not 0x00 and not (>= 0xD0 and <= 0xD7)))
            _position++;
    }
}

/// <summary>A frame header (SOF0, SOF1 or SOF2): the image's size and its components with their sampling factors.</summary>
internal sealed class JpegFrame
{
    /// <summary>libjpeg's limit on the blocks of an interleaved MCU, from the standard.</summary>
    public const int MaxBlocksPerMcu = 10;

    public required int Width { get; init; }
    public required int Height { get; init; }
    public required bool Progressive { get; init; }
    public required JpegComponent[] Components { get; init; }
    public int MaxHorizontal => Components.Max(c => c.Horizontal);
    public int MaxVertical => Components.Max(c => c.Vertical);

    public static string? Parse(byte marker, ReadOnlySpan<byte> segment, out JpegFrame? frame)
    {
        frame = null;
        if (marker is not (0xC0 or 0xC1 or 0xC2)) return Unsupported(marker);
        if (segment.Length < 6 || segment.Length != 6 + 3 * segment[5]) return "a damaged JPEG: its frame header has the wrong length";
        int height = BinaryPrimitives.ReadUInt16BigEndian(segment[1..]), width = BinaryPrimitives.ReadUInt16BigEndian(segment[3..]);
        int count = segment[5];
        if (width == 0) return "a damaged JPEG: its frame header declares a width of 0";
        if (height == 0) return "an unsupported JPEG: its height is left to a DNL marker after the first scan";
        if (count is 0 or > 4) return $"an unsupported JPEG: its frame has {count} components (1 to 4 are supported)";
        var components = new JpegComponent[count];
        for (int i = 0; i < count; i++)
        {
            byte id = segment[6 + 3 * i], sampling = segment[7 + 3 * i];
            components[i] = new JpegComponent(id, sampling >> 4, sampling & 15);
            if (components[i].Horizontal is < 1 or > 4 || components[i].Vertical is < 1 or > 4)
                return $"a damaged JPEG: component {id} has sampling factors {sampling >> 4} x {sampling & 15} (1 to 4 are allowed)";
            if (components.Take(i).Any(c => c.Id == id)) return $"a damaged JPEG: component {id} is declared twice";
        }
        frame = new JpegFrame { Width = width, Height = height, Progressive = marker == 0xC2, Components = components };
        return null;
    }

    private static string Unsupported(byte marker)
    {
        string kind = marker >= 0xC9 ? "arithmetic-coded" : marker == 0xC3 ? "lossless" : "hierarchical";
        return $"an unsupported JPEG: it is {kind} (SOF{marker - 0xC0}), whose completeness is not checked; re-encode it as a baseline or progressive JPEG";
    }

    /// <summary>MCUs of an interleaved scan, 8 Hmax x 8 Vmax pixels each, partial ones at the right and bottom included.</summary>
    public long InterleavedMcus => DivideRoundingUp(Width, 8 * MaxHorizontal) * DivideRoundingUp(Height, 8 * MaxVertical);

    /// <summary>Blocks of a component scanned alone: its own samples (scaled by its sampling factors), in 8 x 8 blocks.</summary>
    public long BlocksOf(JpegComponent component) =>
        DivideRoundingUp((long)Width * component.Horizontal, 8 * MaxHorizontal) * DivideRoundingUp((long)Height * component.Vertical, 8 * MaxVertical);

    /// <summary>At EOI: a component no scan reached (sequential), or without a DC scan (progressive), is missing.</summary>
    public string? MissingScanProblem() =>
        Components.FirstOrDefault(c => !c.HasData) is { } missing
            ? $"a truncated JPEG: it ends before the {(Progressive ? "DC scan" : "scan")} of component {missing.Id}"
            : null;

    private static long DivideRoundingUp(long value, long divisor) => (value + divisor - 1) / divisor;
}

/// <summary>A frame component: its id and sampling factors, and whether a scan has brought its data.</summary>
internal sealed class JpegComponent(byte id, int horizontal, int vertical)
{
    public byte Id { get; } = id;
    public int Horizontal { get; } = horizontal;
    public int Vertical { get; } = vertical;

    /// <summary>A sequential scan, or a progressive DC first scan, included it (and held all its blocks where decoded).</summary>
    public bool HasData { get; set; }
}

internal enum JpegScanKind { Sequential, DcFirst, DcRefinement, AcFirst, AcRefinement }

/// <summary>A scan header (SOS): its components with their Huffman tables, and (progressive) the band and bit it codes.</summary>
internal sealed class JpegScan
{
    public required int Number { get; init; }
    public required JpegScanKind Kind { get; init; }
    public required JpegComponent[] Components { get; init; }
    public required int[] DcTables { get; init; }
    public required int[] AcTables { get; init; }
    public required int SpectralStart { get; init; }
    public required int SpectralEnd { get; init; }

    public bool Interleaved => Components.Length > 1;

    public static string? Parse(ReadOnlySpan<byte> segment, JpegFrame frame, int number, out JpegScan? scan)
    {
        scan = null;
        int count = segment.IsEmpty ? 0 : segment[0];
        if (count is < 1 or > 4 || segment.Length != 4 + 2 * count) return $"a damaged JPEG: scan {number} has a malformed header";
        var components = new JpegComponent[count];
        int[] dcTables = new int[count], acTables = new int[count];
        for (int i = 0; i < count; i++)
        {
            byte id = segment[1 + 2 * i], tables = segment[2 + 2 * i];
            var component = frame.Components.FirstOrDefault(c => c.Id == id);
            if (component is null || components.Contains(component)) return $"a damaged JPEG: scan {number} names component {id}, absent from the frame or named twice";
            (components[i], dcTables[i], acTables[i]) = (component, tables >> 4, tables & 15);
            if (dcTables[i] > 3 || acTables[i] > 3) return $"a damaged JPEG: scan {number} names Huffman table {dcTables[i]}/{acTables[i]} (0 to 3 exist)";
        }
        var band = segment[(1 + 2 * count)..];
        int start = band[0], end = band[1], high = band[2] >> 4, low = band[2] & 15;
        if (count > 1 && components.Sum(c => c.Horizontal * c.Vertical) > JpegFrame.MaxBlocksPerMcu)
            return $"a damaged JPEG: scan {number} interleaves more than {JpegFrame.MaxBlocksPerMcu} blocks per MCU";
        if (frame.Progressive && !IsValidProgression(count, start, end, high, low))
            return $"a damaged JPEG: progressive scan {number} has invalid parameters (Ss {start}, Se {end}, Ah {high}, Al {low})";
        var kind = !frame.Progressive ? JpegScanKind.Sequential
            : start == 0 ? (high == 0 ? JpegScanKind.DcFirst : JpegScanKind.DcRefinement)
            : (high == 0 ? JpegScanKind.AcFirst : JpegScanKind.AcRefinement);
        scan = new JpegScan { Number = number, Kind = kind, Components = components, DcTables = dcTables, AcTables = acTables, SpectralStart = start, SpectralEnd = end };
        return null;
    }

    /// <summary>The standard's rules, as libjpeg applies them: DC alone, AC bands of one component, one bit per refinement.</summary>
    private static bool IsValidProgression(int components, int start, int end, int high, int low) =>
        (start == 0 ? end == 0 : start <= end && end <= 63 && components == 1) && (high == 0 || low == high - 1) && low <= 13;

    /// <summary>MCUs in the scan: interleaved ones, or (one component) single blocks.</summary>
    public long Mcus(JpegFrame frame) => Interleaved ? frame.InterleavedMcus : frame.BlocksOf(Components[0]);

    /// <summary>"MCUs", or "blocks of component 2" for a one-component scan.</summary>
    public string Units => Interleaved ? "MCUs" : $"blocks of component {Components[0].Id}";

    /// <summary>Each block of one MCU, as the index of its component in the scan: H x V blocks of each, in scan order.</summary>
    public int[] McuBlocks() => Interleaved
        ? Enumerable.Range(0, Components.Length).SelectMany(i => Enumerable.Repeat(i, Components[i].Horizontal * Components[i].Vertical)).ToArray()
        : [0];

    /// <summary>Whether the scan, once all its MCUs are decoded, gives its components the data a complete image needs.</summary>
    public bool BringsData => Kind is JpegScanKind.Sequential or JpegScanKind.DcFirst;
}
