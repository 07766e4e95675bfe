namespace Microsoft.ML.RepAdapter.MLNet;

/// <summary>
/// Counts the MCUs a scan's entropy-coded data holds by Huffman-decoding each block just far enough to skip it: the
/// DC difference, then the AC run/size symbols with their extra bits (JPEG standard F.2.2, G.2.2), no coefficients
/// kept. The count must reach what the frame needs before the data ends at a marker.
/// </summary>
internal static class JpegScanDecoder
{
    public static string? Problem(ReadOnlySpan<byte> data, int start, JpegFrame frame, JpegScan scan, HuffmanTables tables, int restartInterval)
    {
        var bits = new EntropyBits(data, start);
        var decoder = new BlockDecoder(scan, tables);
        int[] blocks = scan.McuBlocks();
        long needed = scan.Mcus(frame);
        int expectedRestart = 0;
        for (long mcu = 0; mcu < needed; mcu++)
        {
            if (restartInterval > 0 && mcu > 0 && mcu % restartInterval == 0)
            {
                int restart = bits.NextRestartMarker();
                if (restart < 0) return Truncated(frame, scan, bits.Position, mcu, needed);
                if (restart != expectedRestart)
                    return $"a damaged JPEG: scan {scan.Number} has restart marker RST{restart} where RST{expectedRestart} belongs (byte {bits.Position - 2}, after {mcu} {scan.Units})";
                expectedRestart = (expectedRestart + 1) % 8;
                decoder.Restart();
            }
            foreach (int block in blocks)
            {
                var result = decoder.Skip(ref bits, block);
                if (result == BlockResult.OutOfData) return Truncated(frame, scan, bits.Position, mcu, needed);
                if (result == BlockResult.InvalidCode)
                    return $"a damaged JPEG: scan {scan.Number} has an invalid Huffman code near byte {bits.Position}, after {mcu} of its {needed} {scan.Units}";
            }
        }
        return null;
    }

    private static string Truncated(JpegFrame frame, JpegScan scan, int position, long decoded, long needed) =>
        $"a truncated JPEG: scan {scan.Number}'s data ends at byte {position} after {decoded} of the {needed} {scan.Units} " +
        $"that {frame.Width} x {frame.Height} pixels need";
}

internal enum BlockResult { Done, OutOfData, InvalidCode }

/// <summary>Skips one block of a scan, by the scan's kind; keeps the run of empty bands a progressive AC scan carries.</summary>
internal sealed class BlockDecoder(JpegScan scan, HuffmanTables tables)
{
    /// <summary>Blocks left in a run of end-of-band codes (progressive AC first scans: one code ends many blocks' bands).</summary>
    private int _endOfBandRun;

    /// <summary>A restart marker resets the run, as it resets the DC predictions (which counting does not need).</summary>
    public void Restart() => _endOfBandRun = 0;

    public BlockResult Skip(ref EntropyBits bits, int component) => scan.Kind switch
    {
        JpegScanKind.Sequential => SkipSequential(ref bits, component),
        JpegScanKind.DcFirst => SkipDc(ref bits, component),
        JpegScanKind.DcRefinement => bits.TryConsume(1) ? BlockResult.Done : BlockResult.OutOfData,   // one correction bit per block
        JpegScanKind.AcFirst => SkipAcBand(ref bits, component),
        _ => throw new InvalidOperationException($"{scan.Kind} scans are not decoded."),
    };

    private BlockResult SkipSequential(ref EntropyBits bits, int component)
    {
        var dc = SkipDc(ref bits, component);
        return dc == BlockResult.Done ? SkipSequentialAc(ref bits, component) : dc;
    }

    /// <summary>A DC difference: its magnitude category, then that many bits.</summary>
    private BlockResult SkipDc(ref EntropyBits bits, int component)
    {
        int category = tables.Dc(scan.DcTables[component])!.Decode(ref bits);
        return category < 0 ? ToResult(category) : SkipBits(ref bits, category);
    }

    /// <summary>
    /// The 63 AC coefficients of a sequential block: symbols of a zero run (high nibble) and a magnitude category (low),
    /// each followed by that many bits; 0x00 ends the block, 0xF0 is a run of 16 zeros. Like libjpeg, a run past the
    /// 63rd coefficient ends the block.
    /// </summary>
    private BlockResult SkipSequentialAc(ref EntropyBits bits, int component)
    {
        var table = tables.Ac(scan.AcTables[component])!;
        for (int k = 1; k < 64; k++)
        {
            int symbol = table.Decode(ref bits);
            if (symbol < 0) return ToResult(symbol);
            int run = symbol >> 4, category = symbol & 15;
            if (category == 0 && run != 15) break;
            k += run;
            if (SkipBits(ref bits, category) != BlockResult.Done) return BlockResult.OutOfData;
        }
        return BlockResult.Done;
    }

    /// <summary>
    /// A progressive AC first scan's band Ss..Se of one block. A symbol with category 0 and run r &lt; 15 ends this band in
    /// this block and the next 2^r - 1 + (r extra bits) blocks.
    /// </summary>
    private BlockResult SkipAcBand(ref EntropyBits bits, int component)
    {
        if (_endOfBandRun > 0)
        {
            _endOfBandRun--;
            return BlockResult.Done;
        }
        var table = tables.Ac(scan.AcTables[component])!;
        for (int k = scan.SpectralStart; k <= scan.SpectralEnd; k++)
        {
            int symbol = table.Decode(ref bits);
            if (symbol < 0) return ToResult(symbol);
            int run = symbol >> 4, category = symbol & 15;
            if (category == 0 && run != 15)
            {
                if (!bits.TryRead(run, out int extra)) return BlockResult.OutOfData;
                _endOfBandRun = (1 << run) + extra - 1;
                break;
            }
            k += run;
            if (SkipBits(ref bits, category) != BlockResult.Done) return BlockResult.OutOfData;
        }
        return BlockResult.Done;
    }

    private static BlockResult SkipBits(ref EntropyBits bits, int count) => bits.TryConsume(count) ? BlockResult.Done : BlockResult.OutOfData;

    private static BlockResult ToResult(int decodeFailure) =>
        decodeFailure == HuffmanTable.InvalidCode ? BlockResult.InvalidCode : BlockResult.OutOfData;
}

/// <summary>
/// The bits of a scan's entropy-coded data, most significant first: 0xFF 0x00 stands for a data byte 0xFF, and any
/// other 0xFF pair is a marker, where the bits end until <see cref="NextRestartMarker"/> moves past it.
/// </summary>
internal ref struct EntropyBits
{
    private readonly ReadOnlySpan<byte> _data;
    private int _position;
    private ulong _buffer;    // the next bits, the first at the top; zeros below the buffered ones
    private int _buffered;
    private bool _atMarker;   // _position is at a marker or the end of the data: no more bytes until a restart

    public EntropyBits(ReadOnlySpan<byte> data, int start)
    {
        _data = data;
        _position = start;
    }

    /// <summary>The next byte to read.</summary>
    public readonly int Position => _position;

    /// <summary>How many bits <see cref="Peek16"/> returned are data, not padding past a marker.</summary>
    public readonly int Available => _buffered;

    /// <summary>The next 16 bits without consuming them; zeros where the data has ended.</summary>
    public int Peek16()
    {
        if (_buffered < 16) Fill();
        return (int)(_buffer >> 48);
    }

    /// <summary>Consumes <paramref name="count"/> bits (at most 16); false when the data before the marker is shorter.</summary>
    public bool TryConsume(int count)
    {
        if (_buffered < count) Fill();
        if (_buffered < count) return false;
        _buffer <<= count;
        _buffered -= count;
        return true;
    }

    /// <summary>Reads <paramref name="count"/> bits (at most 16) as a number.</summary>
    public bool TryRead(int count, out int value)
    {
        value = count == 0 ? 0 : (int)(Peek16() >> (16 - count));
        return TryConsume(count);
    }

    /// <summary>
    /// At the end of a restart interval: drops the padding bits, skips any bytes before the next marker (libjpeg does
    /// too) and moves past the marker when it is a restart marker. Its number 0 to 7, or -1 when the next marker is none
    /// (the scan has ended early).
    /// </summary>
    public int NextRestartMarker()
    {
        _buffer = 0;
        _buffered = 0;
        while (_position + 1 < _data.Length && !(_data[_position] == 0xFF && _data[_position + 1] != 0x00)) _position++;
        while (_position + 2 < _data.Length && _data[_position + 1] == 0xFF) _position++;   // fill bytes before a marker
        if (_position + 1 >= _data.Length || _data[_position + 1] is < 0xD0 or > 0xD7) return -1;
        int number = _data[_position + 1] - 0xD0;
        _position += 2;
        _atMarker = false;
        return number;
    }

    private void Fill()
    {
        while (_buffered <= 56 && !_atMarker)
        {
            if (_position >= _data.Length) _atMarker = true;
            else if (_data[_position] != 0xFF) Push(_data[_position++]);
            else if (_position + 1 < _data.Length && _data[_position + 1] == 0x00)
            {
                Push(0xFF);
                _position += 2;
            }
            else _atMarker = true;
        }
    }

    private void Push(byte value)
    {
        _buffer |= (ulong)value << (56 - _buffered);
        _buffered += 8;
    }
}

/// <summary>The Huffman tables a JPEG has defined so far: DC and AC, four of each; later DHT segments replace them.</summary>
internal sealed class HuffmanTables
{
    private readonly HuffmanTable?[] _dc = new HuffmanTable?[4], _ac = new HuffmanTable?[4];

    public HuffmanTable? Dc(int id) => _dc[id];
    public HuffmanTable? Ac(int id) => _ac[id];

    /// <summary>Whether every table the scan's blocks are decoded with is defined.</summary>
    public bool HasAll(JpegScan scan) => scan.Kind switch
    {
        JpegScanKind.Sequential => scan.DcTables.All(t => _dc[t] is not null) && scan.AcTables.All(t => _ac[t] is not null),
        JpegScanKind.DcFirst => scan.DcTables.All(t => _dc[t] is not null),
        JpegScanKind.AcFirst => scan.AcTables.All(t => _ac[t] is not null),
        _ => true,   // refinement: DC bits are raw, AC refinement scans are not decoded
    };

    /// <summary>A DHT segment: one or more tables, each a class and id, 16 code counts (lengths 1 to 16) and the values.</summary>
    public string? Define(ReadOnlySpan<byte> segment)
    {
        while (!segment.IsEmpty)
        {
            if (segment.Length < 17) return "a damaged JPEG: a Huffman table segment (DHT) ends inside a table";
            int kind = segment[0] >> 4, id = segment[0] & 15;
            if (kind > 1 || id > 3) return $"a damaged JPEG: a Huffman table segment (DHT) names table class {kind}, id {id}";
            var counts = segment.Slice(1, 16);
            int values = 0;
            foreach (byte count in counts) values += count;
            if (values > 256 || segment.Length < 17 + values) return "a damaged JPEG: a Huffman table segment (DHT) is malformed";
            var table = new HuffmanTable();
            if (table.Build(counts, segment.Slice(17, values), isDc: kind == 0) is string problem) return problem;
            (kind == 0 ? _dc : _ac)[id] = table;
            segment = segment[(17 + values)..];
        }
        return null;
    }
}

/// <summary>
/// One Huffman table, canonical as JPEG defines it (standard C.2, F.2.2.3): codes of 1 to 16 bits, read through a
/// 9-bit lookup for the short, common codes and per-length bounds for the rest.
/// </summary>
internal sealed class HuffmanTable
{
    public const int OutOfData = -1, InvalidCode = -2;
    private const int LookupBits = 9;

    private readonly ushort[] _lookup = new ushort[1 << LookupBits];   // code length << 8 | value; 0: a longer code
    private readonly int[] _maxCode = new int[17];                      // per length, the largest code (-1: none)
    private readonly int[] _valueOffset = new int[17];                  // per length, code + offset = index in _values
    private readonly byte[] _values = new byte[256];

    /// <summary>Assigns codes in order of length, as libjpeg does, refusing a table whose codes overflow their length.</summary>
    public string? Build(ReadOnlySpan<byte> counts, ReadOnlySpan<byte> values, bool isDc)
    {
        values.CopyTo(_values);
        int code = 0, index = 0;
        for (int length = 1; length <= 16; length++)
        {
            int count = counts[length - 1];
            _valueOffset[length] = index - code;
            for (int i = 0; i < count; i++, code++, index++)
            {
                // The all-ones code of each length is reserved, so a code reaching it has overflowed.
                if (code >= (1 << length) - 1) return "a damaged JPEG: a Huffman table has more codes than its code lengths allow";
                if (isDc && values[index] > 15) return $"a damaged JPEG: a DC Huffman table has value {values[index]} (0 to 15 are allowed)";
                if (length <= LookupBits) FillLookup(code, length, values[index]);
            }
            _maxCode[length] = count > 0 ? code - 1 : -1;
            code <<= 1;
        }
        return null;
    }

    /// <summary>Every 9-bit prefix starting with the code decodes to it.</summary>
    private void FillLookup(int code, int length, byte value)
    {
        int first = code << (LookupBits - length), span = 1 << (LookupBits - length);
        _lookup.AsSpan(first, span).Fill((ushort)(length << 8 | value));
    }

    /// <summary>The next value; <see cref="OutOfData"/> when the data ends inside a code, <see cref="InvalidCode"/> for none.</summary>
    public int Decode(ref EntropyBits bits)
    {
        int next = bits.Peek16();
        int entry = _lookup[next >> (16 - LookupBits)];
        if (entry != 0) return bits.TryConsume(entry >> 8) ? entry & 0xFF : OutOfData;
        for (int length = LookupBits + 1; length <= 16; length++)
        {
            int code = next >> (16 - length);
            if (code <= _maxCode[length]) return bits.TryConsume(length) ? _values[code + _valueOffset[length]] : OutOfData;
        }
        return bits.Available < 16 ? OutOfData : InvalidCode;
    }
}
