using System.IO.Compression;
using System.Text;
using System.Text.RegularExpressions;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Formats;

/// <summary>
/// Reads NumPy .npz archives (np.savez / np.savez_compressed): one .npy array per entry, named after the entry.
/// Only plain numeric arrays are accepted; object arrays (which NumPy stores pickled) are refused.
/// </summary>
internal static partial class NpzReader
{
    private static readonly byte[] Magic = [0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y'];

    private static readonly Dictionary<string, (ScalarType Type, int Size)> DTypes = new()
    {
        ["f8"] = (ScalarType.Float64, 8), ["f4"] = (ScalarType.Float32, 4), ["f2"] = (ScalarType.Float16, 2),
        ["i8"] = (ScalarType.Int64, 8), ["i4"] = (ScalarType.Int32, 4), ["i2"] = (ScalarType.Int16, 2),
        ["i1"] = (ScalarType.Int8, 1), ["u1"] = (ScalarType.Byte, 1), ["b1"] = (ScalarType.Bool, 1),
    };

    public static TensorCheckpoint Read(string path, ZipArchive archive)
    {
        var tensors = new OrderedDictionary<string, Tensor>();
        try
        {
            foreach (var entry in archive.Entries)
            {
                if (entry.FullName.EndsWith('/')) continue;
                if (!entry.FullName.EndsWith(".npy", StringComparison.Ordinal))
                    throw new CheckpointException(path, entry.FullName, "unexpected entry in .npz archive: expected only .npy arrays.");
                string key = entry.FullName[..^".npy".Length];
                using var stream = entry.Open();
                tensors.Add(key, ReadArray(path, key, stream, entry.Length));
            }
        }
        catch (Exception e) when (e is not CheckpointException)
        {
            foreach (var tensor in tensors.Values) tensor.Dispose();
            throw new CheckpointException(path, null, $"corrupt .npz archive ({e.Message}).", e);
        }
        catch
        {
            foreach (var tensor in tensors.Values) tensor.Dispose();
            throw;
        }
        return new TensorCheckpoint(path, CheckpointFormat.NumpyNpz, tensors);
    }

    private static Tensor ReadArray(string path, string key, Stream stream, long entryLength)
    {
        var preamble = new byte[8];
        stream.ReadExactly(preamble);
        if (!preamble.AsSpan(0, 6).SequenceEqual(Magic))
            throw new CheckpointException(path, key, "not a .npy array: expected the \\x93NUMPY magic.");
        int major = preamble[6];
        int headerLength;
        if (major == 1)
        {
            var length = new byte[2];
            stream.ReadExactly(length);
            headerLength = BitConverter.ToUInt16(length);
        }
        else if (major is 2 or 3)
        {
            var length = new byte[4];
            stream.ReadExactly(length);
            headerLength = checked((int)BitConverter.ToUInt32(length));
        }
        else throw new CheckpointException(path, key, $".npy format version: expected 1, 2 or 3, found {major}.");
        long prefixLength = 8 + (major == 1 ? 2 : 4) + (long)headerLength;
        if (prefixLength > entryLength)
            throw new CheckpointException(path, key, $"truncated .npy header: expected {headerLength} bytes, found {entryLength - (prefixLength - headerLength)}.");
        var headerBytes = new byte[headerLength];
        stream.ReadExactly(headerBytes);
        string header = Encoding.Latin1.GetString(headerBytes);

        var descr = DescrPattern().Match(header);
        var fortran = FortranPattern().Match(header);
        var shapeMatch = ShapePattern().Match(header);
        if (!descr.Success || !fortran.Success || !shapeMatch.Success)
            throw new CheckpointException(path, key, $".npy header: expected 'descr', 'fortran_order' and 'shape', found {header.Trim()}.");
        string byteOrder = descr.Groups[1].Value, code = descr.Groups[2].Value;
        if (!DTypes.TryGetValue(code, out var dtype))
            throw new CheckpointException(path, key, $"unsupported dtype: expected a numeric array ({string.Join(", ", DTypes.Keys)}), found '{byteOrder}{code}'.");
        if (byteOrder == ">" && dtype.Size > 1)
            throw new CheckpointException(path, key, "big-endian arrays are not supported: expected little-endian ('<').");
        long[] shape = shapeMatch.Groups[1].Value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(long.Parse).ToArray();
        long count = shape.Aggregate(1L, (a, b) => checked(a * b));
        long expectedBytes = count * dtype.Size, foundBytes = entryLength - prefixLength;
        if (foundBytes != expectedBytes)
            throw new CheckpointException(path, key, $"array data: expected {expectedBytes} bytes for {Describe.Shape(shape)} {byteOrder}{code}, found {foundBytes}.");

        bool fortranOrder = fortran.Groups[1].Value == "True";
        // A Fortran-ordered array is the C-ordered array of the reversed shape, transposed back.
        var tensor = empty(fortranOrder ? shape.Reverse().ToArray() : shape, dtype.Type);
        if (count > 0) stream.ReadExactly(tensor.bytes);
        if (!fortranOrder) return tensor;
        using (tensor) return tensor.permute(Enumerable.Range(0, shape.Length).Reverse().Select(i => (long)i).ToArray()).contiguous();
    }

    [GeneratedRegex(@"'descr'\s*:\s*'([<>|=]?)([a-zA-Z]\d*)'")]
    private static partial Regex DescrPattern();

    [GeneratedRegex(@"'fortran_order'\s*:\s*(True|False)")]
    private static partial Regex FortranPattern();

    [GeneratedRegex(@"'shape'\s*:\s*\(([^)]*)\)")]
    private static partial Regex ShapePattern();
}
