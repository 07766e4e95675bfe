using System.Buffers.Binary;
using System.Text.Json;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Formats;

/// <summary>The safetensors dtype names and their TorchSharp types (the ones a vision checkpoint can hold).</summary>
internal static class SafeTensorsDType
{
    private static readonly Dictionary<string, ScalarType> ByName = new()
    {
        ["F64"] = ScalarType.Float64, ["F32"] = ScalarType.Float32, ["F16"] = ScalarType.Float16,
        ["BF16"] = ScalarType.BFloat16, ["I64"] = ScalarType.Int64, ["I32"] = ScalarType.Int32,
        ["I16"] = ScalarType.Int16, ["I8"] = ScalarType.Int8, ["U8"] = ScalarType.Byte, ["BOOL"] = ScalarType.Bool,
    };

    public static bool TryParse(string name, out ScalarType type) => ByName.TryGetValue(name, out type);

    public static string NameOf(ScalarType type) =>
        ByName.FirstOrDefault(pair => pair.Value == type).Key ?? throw new NotSupportedException($"safetensors has no dtype for {type}.");

    public static string KnownNames => string.Join(", ", ByName.Keys);
}

/// <summary>Reads safetensors files, validating the header against the file before any data is read.</summary>
internal static class SafeTensorsReader
{
    // The reference implementation refuses headers above 100 MB; so do we, before allocating.
    private const long MaxHeaderBytes = 100_000_000;

    /// <summary>Whether <paramref name="prefix"/> (the file's first bytes) looks like safetensors: a length, then '{'.</summary>
    public static bool Sniff(ReadOnlySpan<byte> prefix, long fileLength) =>
        prefix.Length >= 9 && prefix[8] == (byte)'{'
        && BinaryPrimitives.ReadUInt64LittleEndian(prefix) is var n && n >= 2 && n <= (ulong)Math.Max(0, fileLength - 8);

    public static TensorCheckpoint Read(string path)
    {
        using var stream = File.OpenRead(path);
        long fileLength = stream.Length;
        if (fileLength < 8) throw new CheckpointException(path, null, $"safetensors file too short: expected at least 8 bytes of header length, found {fileLength} bytes.");
        Span<byte> lengthBytes = stackalloc byte[8];
        stream.ReadExactly(lengthBytes);
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(lengthBytes);
        if (headerLength > (ulong)(fileLength - 8))
            throw new CheckpointException(path, null, $"truncated safetensors file: the header announces {headerLength} header bytes, found {fileLength - 8} bytes after the length.");
        if ((long)headerLength > MaxHeaderBytes)
            throw new CheckpointException(path, null, $"safetensors header of {headerLength} bytes exceeds the {MaxHeaderBytes}-byte limit.");
        var headerBytes = new byte[headerLength];
        stream.ReadExactly(headerBytes);
        long dataStart = 8 + (long)headerLength, dataLength = fileLength - dataStart;

        var (entries, metadata) = ParseHeader(path, headerBytes, dataLength);
        var tensors = new OrderedDictionary<string, Tensor>();
        try
        {
            foreach (var entry in entries)
            {
                var tensor = empty(entry.Shape, entry.Type);
                tensors.Add(entry.Name, tensor);
                if (tensor.NumberOfElements == 0) continue;
                stream.Position = dataStart + entry.Begin;
                stream.ReadExactly(tensor.bytes);
            }
        }
        catch
        {
            foreach (var tensor in tensors.Values) tensor.Dispose();
            throw;
        }
        return new TensorCheckpoint(path, CheckpointFormat.SafeTensors, tensors, metadata);
    }

    private sealed record Entry(string Name, ScalarType Type, long[] Shape, long Begin, long End);

    private static (List<Entry>, Dictionary<string, string>) ParseHeader(string path, byte[] headerBytes, long dataLength)
    {
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(headerBytes);
        }
        catch (JsonException e)
        {
            throw new CheckpointException(path, null, $"safetensors header is not valid JSON ({e.Message}).", e);
        }
        using (document)
        {
            if (document.RootElement.ValueKind != JsonValueKind.Object)
                throw new CheckpointException(path, null, $"safetensors header: expected a JSON object, found {document.RootElement.ValueKind}.");
            var entries = new List<Entry>();
            var names = new HashSet<string>(StringComparer.Ordinal);
            var metadata = new Dictionary<string, string>();
            foreach (var property in document.RootElement.EnumerateObject())
            {
                if (property.Name == "__metadata__")
                {
                    if (property.Value.ValueKind != JsonValueKind.Object)
                        throw new CheckpointException(path, "__metadata__", $"expected an object of strings, found {property.Value.ValueKind}.");
                    foreach (var item in property.Value.EnumerateObject())
                    {
                        metadata[item.Name] = item.Value.ValueKind == JsonValueKind.String
                            ? item.Value.GetString()!
                            : throw new CheckpointException(path, $"__metadata__.{item.Name}", $"expected a string, found {item.Value.ValueKind}.");
                    }
                    continue;
                }
                // JSON allows a name twice; a checkpoint cannot hold two tensors of one name (which one would load?).
                if (!names.Add(property.Name))
                    throw new CheckpointException(path, property.Name, "the header names this tensor twice.");
                entries.Add(ParseEntry(path, property, dataLength));
            }
            CheckDataCoverage(path, entries, dataLength);
            return (entries, metadata);
        }
    }

    private static Entry ParseEntry(string path, JsonProperty property, long dataLength)
    {
        string name = property.Name;
        try
        {
            var info = property.Value;
            string dtypeName = info.GetProperty("dtype").GetString() ?? "";
            if (!SafeTensorsDType.TryParse(dtypeName, out var type))
                throw new CheckpointException(path, name, $"unsupported dtype: expected one of {SafeTensorsDType.KnownNames}, found '{dtypeName}'.");
            long[] shape = info.GetProperty("shape").EnumerateArray().Select(d => d.GetInt64()).ToArray();
            long[] offsets = info.GetProperty("data_offsets").EnumerateArray().Select(d => d.GetInt64()).ToArray();
            if (shape.Any(d => d < 0)) throw new CheckpointException(path, name, $"negative dimension in shape {Describe.Shape(shape)}.");
            if (offsets.Length != 2 || offsets[0] < 0 || offsets[1] < offsets[0])
                throw new CheckpointException(path, name, $"data_offsets: expected [begin, end] with 0 <= begin <= end, found [{string.Join(", ", offsets)}].");
            long expectedBytes = ElementSize(type);
            foreach (long d in shape) expectedBytes = checked(expectedBytes * d);
            if (offsets[1] - offsets[0] != expectedBytes)
                throw new CheckpointException(path, name, $"data size: expected {expectedBytes} bytes for {dtypeName} {Describe.Shape(shape)}, found {offsets[1] - offsets[0]} bytes in data_offsets.");
            if (offsets[1] > dataLength)
                throw new CheckpointException(path, name, $"truncated: data ends at byte {offsets[1]} of the data section, found only {dataLength} bytes.");
            return new Entry(name, type, shape, offsets[0], offsets[1]);
        }
        catch (Exception e) when (e is KeyNotFoundException or InvalidOperationException or FormatException or OverflowException)
        {
            throw new CheckpointException(path, name, $"malformed header entry: expected {{\"dtype\", \"shape\", \"data_offsets\"}}, found {property.Value.GetRawText()}.", e);
        }
    }

    /// <summary>The format requires the entries to tile the data section exactly: no gaps, no overlaps, nothing after.</summary>
    private static void CheckDataCoverage(string path, List<Entry> entries, long dataLength)
    {
        long position = 0;
        foreach (var entry in entries.OrderBy(e => e.Begin).ThenBy(e => e.End))
        {
            if (entry.Begin != position)
                throw new CheckpointException(path, entry.Name, $"data_offsets: expected the tensor to start at byte {position} (entries must tile the data section), found {entry.Begin}.");
            position = entry.End;
        }
        if (position != dataLength)
            throw new CheckpointException(path, null, $"data section: expected {position} bytes after the header, found {dataLength}.");
    }

    private static long ElementSize(ScalarType type) => type switch
    {
        ScalarType.Float64 or ScalarType.Int64 => 8,
        ScalarType.Float32 or ScalarType.Int32 => 4,
        ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Int16 => 2,
        _ => 1,
    };
}

/// <summary>Writes safetensors files that the Hugging Face <c>safetensors</c> library and timm load unchanged.</summary>
public static class SafeTensorsWriter
{
    /// <summary>
    /// Writes <paramref name="tensors"/> (name -> tensor, any device; written contiguous and little-endian) in the given
    /// order, with optional string <paramref name="metadata"/>. The file is written next to <paramref name="path"/> and
    /// renamed into place, so a failure never leaves a half-written checkpoint behind.
    /// </summary>
    public static void Write(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("Writing safetensors needs a little-endian machine.");
        using var scope = NewDisposeScope();
        var items = tensors.Select(pair => (pair.Key, Tensor: pair.Value.detach().cpu().contiguous())).ToList();
        var duplicate = items.GroupBy(item => item.Key).FirstOrDefault(group => group.Count() > 1);
        if (duplicate is not null) throw new ArgumentException($"Tensor name '{duplicate.Key}' appears twice.", nameof(tensors));

        var header = new MemoryStream();
        using (var json = new Utf8JsonWriter(header))
        {
            json.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                json.WriteStartObject("__metadata__");
                foreach (var (key, value) in metadata) json.WriteString(key, value);
                json.WriteEndObject();
            }
            long offset = 0;
            foreach (var (name, tensor) in items)
            {
                long size = tensor.NumberOfElements * tensor.ElementSize;
                json.WriteStartObject(name);
                json.WriteString("dtype", SafeTensorsDType.NameOf(tensor.dtype));
                json.WriteStartArray("shape");
                foreach (long d in tensor.shape) json.WriteNumberValue(d);
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset + size);
                json.WriteEndArray();
                json.WriteEndObject();
                offset += size;
            }
            json.WriteEndObject();
        }
        // Spaces pad the header so that the data starts 8-byte aligned, as the reference writer does.
        while (header.Length % 8 != 0) header.WriteByte((byte)' ');

        string temporary = path + ".partial";
        using (var file = File.Create(temporary))
        {
            Span<byte> length = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)header.Length);
            file.Write(length);
            header.Position = 0;
            header.CopyTo(file);
            foreach (var (_, tensor) in items)
            {
                if (tensor.NumberOfElements > 0) file.Write(tensor.bytes);
            }
        }
        File.Move(temporary, path, overwrite: true);
    }
}
