using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Formats;

/// <summary>
/// Reads torch.save's zip format (<c>&lt;folder&gt;/data.pkl</c> + <c>&lt;folder&gt;/data/&lt;key&gt;</c> storages) without running
/// Python: <see cref="RestrictedUnpickler"/> interprets the pickle itself and only builds containers, numbers, strings
/// and tensors, refusing every other global (the same policy as <c>torch.load(weights_only=True)</c>).
/// </summary>
internal static class PyTorchZipReader
{
    /// <summary>Whether the zip entries are those of torch.save (one data.pkl in a top folder).</summary>
    public static bool IsTorchArchive(ZipArchive archive) => archive.Entries.Any(e => IsDataPickle(e.FullName));

    public static TensorCheckpoint Read(string path, ZipArchive archive)
    {
        var pickles = archive.Entries.Where(e => IsDataPickle(e.FullName)).ToList();
        if (pickles.Count != 1)
            throw new CheckpointException(path, null, $"PyTorch archive: expected one data.pkl, found {pickles.Count} ({Describe.Keys(pickles.Select(p => p.FullName))}).");
        // The top folder is the file stem at save time (not always "archive/"), so take it from data.pkl's path.
        string prefix = pickles[0].FullName[..^"data.pkl".Length];
        if (archive.GetEntry(prefix + "constants.pkl") is not null || archive.Entries.Any(e => e.FullName.StartsWith(prefix + "code/", StringComparison.Ordinal)))
            throw new CheckpointException(path, null, "this is a TorchScript archive (torch.jit.save): expected a state dict saved with torch.save(model.state_dict(), ...).");
        if (archive.GetEntry(prefix + "byteorder") is { } byteOrderEntry)
        {
            using var reader = new StreamReader(byteOrderEntry.Open());
            string order = reader.ReadToEnd().Trim();
            if (order != "little") throw new CheckpointException(path, prefix + "byteorder", $"expected 'little', found '{order}'.");
        }

        // A state dict's pickle holds names and shapes only (kilobytes even for ViT-L): refuse anything that expands further.
        const int maxPickleBytes = 64 << 20;
        if (pickles[0].Length > maxPickleBytes)
            throw new CheckpointException(path, pickles[0].FullName, $"{pickles[0].Length} bytes: larger than the {maxPickleBytes >> 20} MB a tensor state dict's pickle could need.");
        byte[] pickle;
        using (var stream = pickles[0].Open())
        using (var buffer = new MemoryStream())
        {
            // The declared size can lie: copy at most one byte more than the limit.
            var limited = new byte[81920];
            int read;
            while ((read = stream.Read(limited, 0, (int)Math.Min(limited.Length, maxPickleBytes + 1L - buffer.Length))) > 0) buffer.Write(limited, 0, read);
            if (buffer.Length > maxPickleBytes)
                throw new CheckpointException(path, pickles[0].FullName, $"expands beyond the {maxPickleBytes >> 20} MB a tensor state dict's pickle could need.");
            pickle = buffer.ToArray();
        }
        using var storages = new StorageLoader(path, archive, prefix);
        object? root = new RestrictedUnpickler(path, pickle, storages).Load();
        return new TensorCheckpoint(path, CheckpointFormat.PyTorchZip, ExtractStateDict(path, root));
    }

    private static bool IsDataPickle(string entryName) =>
        entryName == "data.pkl" || (entryName.EndsWith("/data.pkl", StringComparison.Ordinal) && entryName.IndexOf('/') == entryName.Length - "/data.pkl".Length);

    /// <summary>
    /// The state dict: the top-level dict when it holds tensors, else its "state_dict" or "model" entry (training
    /// checkpoints) or "module" (DeepSpeed's, e.g. VideoMAE's released weights); every value must then be a tensor. Tensors the unpickler built but that end up elsewhere are freed.
    /// </summary>
    private static OrderedDictionary<string, Tensor> ExtractStateDict(string path, object? root)
    {
        var stateDict = root as PickleDict ?? throw new CheckpointException(path, null, $"expected a pickled dict of tensors, found {PickleDict.TypeName(root)}.");
        if (!stateDict.Values.Any(v => v is Tensor))
        {
            stateDict = (stateDict.GetValueOrDefault("state_dict") ?? stateDict.GetValueOrDefault("model") ?? stateDict.GetValueOrDefault("module")) as PickleDict
                ?? throw new CheckpointException(path, null, $"no tensors found: expected a state dict, or a dict with a 'state_dict', 'model' or 'module' entry; found keys {Describe.Keys(stateDict.Keys.Select(k => k.ToString()!))}.");
        }
        var tensors = new OrderedDictionary<string, Tensor>();
        foreach (var (key, value) in stateDict)
        {
            if (key is not string name || value is not Tensor tensor)
                throw new CheckpointException(path, key.ToString(), $"expected a tensor under a string key, found {PickleDict.TypeName(value)}.");
            tensors.Add(name, tensor);
        }
        return tensors;
    }

    /// <summary>Loads storages on demand (persistent ids of the pickle) and frees them when unpickling is done.</summary>
    internal sealed class StorageLoader(string path, ZipArchive archive, string prefix) : IDisposable
    {
        private readonly Dictionary<string, Tensor> _loaded = [];

        public Tensor Load(string key, ScalarType type, long count)
        {
            if (_loaded.TryGetValue(key, out var cached)) return cached;
            string entryName = $"{prefix}data/{key}";
            var entry = archive.GetEntry(entryName) ?? throw new CheckpointException(path, entryName, "storage referenced by the pickle is missing from the archive (truncated file?).");
            // Sizes come from the file: check them before allocating anything.
            long expected = count < 0 ? -1 : checked(count * ElementSize(type));
            if (count < 0 || entry.Length < expected)
                throw new CheckpointException(path, entryName, $"storage data: expected {expected} bytes ({count} x {type}), found {entry.Length}.");
            var storage = empty([count], type);
            _loaded.Add(key, storage);
            if (count > 0)
            {
                using var stream = entry.Open();
                stream.ReadExactly(storage.bytes);
            }
            return storage;
        }

        private static long ElementSize(ScalarType type)
        {
            using var probe = empty([0], type);
            return probe.ElementSize;
        }

        public void Dispose()
        {
            foreach (var storage in _loaded.Values) storage.Dispose();
        }
    }
}

/// <summary>A pickled dict (dict or collections.OrderedDict), keys in insertion order.</summary>
internal sealed class PickleDict : OrderedDictionary<object, object?>
{
    public static string TypeName(object? value) => value switch
    {
        null => "None",
        Tensor t => $"tensor {Describe.ShapeOf(t)}",
        PickleDict => "dict",
        object?[] => "tuple",
        List<object?> => "list",
        string => "str",
        long => "int",
        double => "float",
        bool => "bool",
        _ => value.GetType().Name,
    };
}

/// <summary>
/// A pickle virtual machine for tensor state dicts. It knows the opcodes of protocols 2-5 that such files use and
/// allows only these globals: collections.OrderedDict, torch._utils._rebuild_tensor_v2 / _rebuild_parameter,
/// torch._tensor._rebuild_from_type_v2 (for torch.Tensor / Parameter) and the torch.*Storage types. Anything else
/// (e.g. posix.system) is refused when the GLOBAL opcode is read, before anything could be called.
/// </summary>
internal sealed class RestrictedUnpickler
{
    private sealed record Global(string Module, string Name)
    {
        public override string ToString() => $"{Module}.{Name}";
    }

    private sealed record Storage(Tensor Data);

    private static readonly Dictionary<string, ScalarType> StorageTypes = new()
    {
        ["FloatStorage"] = ScalarType.Float32, ["DoubleStorage"] = ScalarType.Float64, ["HalfStorage"] = ScalarType.Float16,
        ["BFloat16Storage"] = ScalarType.BFloat16, ["LongStorage"] = ScalarType.Int64, ["IntStorage"] = ScalarType.Int32,
        ["ShortStorage"] = ScalarType.Int16, ["CharStorage"] = ScalarType.Int8, ["ByteStorage"] = ScalarType.Byte,
        ["BoolStorage"] = ScalarType.Bool,
    };

    private static readonly HashSet<string> AllowedFunctions =
    [
        "collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
        "torch._tensor._rebuild_from_type_v2", "torch.Tensor", "torch.nn.parameter.Parameter",
    ];

    private readonly string _path;
    private readonly byte[] _data;
    private readonly PyTorchZipReader.StorageLoader _storages;
    private readonly List<object?> _stack = [];
    private readonly Stack<int> _marks = new();
    private readonly Dictionary<long, object?> _memo = [];
    private int _position;
    private int _created;

    public RestrictedUnpickler(string path, byte[] data, PyTorchZipReader.StorageLoader storages)
    {
        _path = path;
        _data = data;
        _storages = storages;
    }

    public object? Load()
    {
        var built = new List<Tensor>();
        try
        {
            object? result = Run(built);
            // Tensors not reachable from the result (none in a plain state dict) are freed here.
            var kept = ReachableTensors(result);
            foreach (var tensor in built.Where(t => !kept.Contains(t))) tensor.Dispose();
            return result;
        }
        catch (Exception e)
        {
            foreach (var tensor in built) tensor.Dispose();
            if (e is CheckpointException) throw;
            throw new CheckpointException(_path, "data.pkl", $"corrupt pickle at byte {_position}: {e.Message}", e);
        }
    }

    /// <summary>Containers nested deeper than this are refused: a state dict nests two or three levels.</summary>
    internal const int MaxNesting = 1000;

    /// <summary>
    /// Values, memo entries and marks a pickle may create, together: a state dict makes a few dozen per tensor, while 64 MB
    /// of one-byte "empty list" or "memoize" opcodes would otherwise build gigabytes of lists or memo.
    /// </summary>
    internal const int MaxValues = 1_000_000;

    /// <summary>
    /// The tensors reachable from <paramref name="root"/>, walked without recursion and visiting each container once, so
    /// that a list that contains itself or lists nested 300,000 deep cannot overflow the stack.
    /// </summary>
    private HashSet<Tensor> ReachableTensors(object? root)
    {
        var kept = new HashSet<Tensor>(ReferenceEqualityComparer.Instance);
        var visited = new HashSet<object>(ReferenceEqualityComparer.Instance);
        var pending = new Stack<(object? Value, int Depth)>();
        pending.Push((root, 0));
        while (pending.Count > 0)
        {
            var (value, depth) = pending.Pop();
            if (value is Tensor tensor)
            {
                kept.Add(tensor);
                continue;
            }
            IEnumerable<object?>? children = value switch
            {
                PickleDict dict => dict.Values,
                object?[] tuple => tuple,
                List<object?> list => list,
                _ => null,
            };
            if (children is null || !visited.Add(value!)) continue;
            if (depth >= MaxNesting)
                throw new CheckpointException(_path, "data.pkl", $"containers nested more than {MaxNesting} levels deep: not a tensor state dict.");
            foreach (var child in children) pending.Push((child, depth + 1));
        }
        return kept;
    }

    private object? Run(List<Tensor> built)
    {
        while (true)
        {
            int at = _position;
            byte opcode = ReadByte();
            switch (opcode)
            {
                case 0x80: ReadByte(); break;                                  // PROTO
                case 0x95: ReadBytes(8); break;                                // FRAME (length hint only)
                case (byte)'.': return Pop();                                  // STOP
                case (byte)'(': Count(); _marks.Push(_stack.Count); break;     // MARK
                case (byte)')': Push(Array.Empty<object?>()); break;           // EMPTY_TUPLE
                case (byte)'t': Push(PopMark().ToArray()); break;              // TUPLE
                case 0x85: Push(new[] { Pop() }); break;                       // TUPLE1
                case 0x86: { var b = Pop(); var a = Pop(); Push(new[] { a, b }); break; }          // TUPLE2
                case 0x87: { var c = Pop(); var b = Pop(); var a = Pop(); Push(new[] { a, b, c }); break; } // TUPLE3
                case (byte)']': Push(new List<object?>()); break;              // EMPTY_LIST
                case (byte)'l': Push(PopMark()); break;                        // LIST
                case (byte)'a': { var item = Pop(); As<List<object?>>(Peek()).Add(item); break; } // APPEND
                case (byte)'e': { var items = PopMark(); As<List<object?>>(Peek()).AddRange(items); break; } // APPENDS
                case (byte)'}': Push(new PickleDict()); break;                 // EMPTY_DICT
                case (byte)'d': { var dict = new PickleDict(); SetItems(dict, PopMark()); Push(dict); break; } // DICT
                case (byte)'s': { var value = Pop(); var key = Pop(); As<PickleDict>(Peek())[key!] = value; break; } // SETITEM
                case (byte)'u': { var items = PopMark(); SetItems(As<PickleDict>(Peek()), items); break; } // SETITEMS
                case (byte)'N': Push(null); break;                             // NONE
                case 0x88: Push(true); break;                                  // NEWTRUE
                case 0x89: Push(false); break;                                 // NEWFALSE
                case (byte)'J': Push((long)BinaryPrimitives.ReadInt32LittleEndian(ReadBytes(4))); break; // BININT
                case (byte)'K': Push((long)ReadByte()); break;                 // BININT1
                case (byte)'M': Push((long)BinaryPrimitives.ReadUInt16LittleEndian(ReadBytes(2))); break; // BININT2
                case 0x8a: Push(ReadLong(ReadByte())); break;                  // LONG1
                case 0x8b: Push(ReadLong(ReadLength(4))); break;               // LONG4
                case (byte)'G': Push(BinaryPrimitives.ReadDoubleBigEndian(ReadBytes(8))); break; // BINFLOAT
                case (byte)'X': Push(ReadString(ReadLength(4))); break;        // BINUNICODE
                case 0x8c: Push(ReadString(ReadByte())); break;                // SHORT_BINUNICODE
                case 0x8d: Push(ReadString(ReadLength(8))); break;             // BINUNICODE8
                case (byte)'B': Push(ReadBytes(ReadLength(4)).ToArray()); break; // BINBYTES
                case (byte)'C': Push(ReadBytes(ReadByte()).ToArray()); break;  // SHORT_BINBYTES
                case (byte)'q': Count(); _memo[ReadByte()] = Peek(); break;    // BINPUT
                case (byte)'r': Count(); _memo[ReadLength(4)] = Peek(); break; // LONG_BINPUT
                case 0x94: Count(); _memo[_memo.Count] = Peek(); break;        // MEMOIZE
                case (byte)'h': Push(Recall(ReadByte())); break;               // BINGET
                case (byte)'j': Push(Recall(ReadLength(4))); break;            // LONG_BINGET
                case (byte)'c': Push(Resolve(ReadLine(), ReadLine())); break;  // GLOBAL
                case 0x93: { var name = As<string>(Pop()); Push(Resolve(As<string>(Pop()), name)); break; } // STACK_GLOBAL
                case (byte)'Q': Push(PersistentLoad(Pop())); break;            // BINPERSID
                case (byte)'R': { var args = As<object?[]>(Pop()); Push(Call(As<Global>(Pop()), args, built)); break; } // REDUCE
                case 0x81: { var args = As<object?[]>(Pop()); Push(Call(As<Global>(Pop()), args, built)); break; }      // NEWOBJ
                case (byte)'b': Build(Pop(), Peek()); break;                   // BUILD
                default:
                    throw new CheckpointException(_path, "data.pkl", $"unsupported pickle opcode 0x{opcode:x2} at byte {at}: expected the opcodes of a tensor state dict.");
            }
        }
    }

    private object Resolve(string module, string name)
    {
        var global = new Global(module, name);
        if (module == "torch" && StorageTypes.ContainsKey(name)) return global;
        if (AllowedFunctions.Contains(global.ToString())) return global;
        throw new CheckpointException(_path, global.ToString(),
            "refused to unpickle this global: only tensors, numbers, strings and containers are read from a .pth file, since any other global could run code. Expected one of "
            + string.Join(", ", AllowedFunctions) + " or a torch.*Storage type.");
    }

    private object? Call(Global function, object?[] args, List<Tensor> built)
    {
        switch (function.ToString())
        {
            case "collections.OrderedDict":
                var dict = new PickleDict();
                if (args.Length == 1 && args[0] is List<object?> pairs)
                {
                    foreach (var pair in pairs.Select(As<object?[]>)) dict[pair[0]!] = pair[1];
                }
                else if (args.Length != 0) throw new InvalidDataException($"OrderedDict called with {args.Length} arguments.");
                return dict;
            case "torch._utils._rebuild_tensor_v2":
                var tensor = RebuildTensor(args);
                built.Add(tensor);
                return tensor;
            case "torch._utils._rebuild_parameter":
                return As<Tensor>(args[0]);
            case "torch._tensor._rebuild_from_type_v2":
                // (func, type, args, state): a tensor (sub)class rebuilt by func(*args); only Tensor and Parameter are allowed,
                // and func only as the tensor rebuilder itself (never this function again, which could nest without end).
                var type = As<Global>(args[1]).ToString();
                if (type is not ("torch.Tensor" or "torch.nn.parameter.Parameter"))
                    throw new CheckpointException(_path, type, "refused tensor subclass: expected torch.Tensor or torch.nn.parameter.Parameter.");
                var rebuild = As<Global>(args[0]);
                if (rebuild.ToString() != "torch._utils._rebuild_tensor_v2")
                    throw new CheckpointException(_path, rebuild.ToString(), "refused: _rebuild_from_type_v2 may only call torch._utils._rebuild_tensor_v2.");
                return Call(rebuild, As<object?[]>(args[2]), built);
            default:
                throw new CheckpointException(_path, function.ToString(), "this global is allowed only as a type, not called.");
        }
    }

    /// <summary>_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata]) as a contiguous copy.</summary>
    private Tensor RebuildTensor(object?[] args)
    {
        if (args.Length < 4) throw new InvalidDataException($"_rebuild_tensor_v2 expects at least 4 arguments, got {args.Length}.");
        var storage = As<Storage>(args[0]).Data;
        long offset = As<long>(args[1]);
        long[] size = As<object?[]>(args[2]).Select(As<long>).ToArray();
        long[] stride = As<object?[]>(args[3]).Select(As<long>).ToArray();
        if (size.Length != stride.Length || offset < 0 || size.Any(s => s < 0) || stride.Any(s => s < 0))
            throw new InvalidDataException($"tensor view size {Describe.Shape(size)}, stride {Describe.Shape(stride)}, offset {offset} is invalid.");
        if (size.All(s => s > 0))
        {
            long last = offset + size.Zip(stride, (s, st) => (s - 1) * st).Sum();
            if (last >= storage.NumberOfElements)
                throw new InvalidDataException($"tensor view {Describe.Shape(size)} at offset {offset} reaches element {last}, but its storage has {storage.NumberOfElements}.");
            // A stride-0 or overlapping view would be materialised larger than the data in the file (a 633-byte file could
            // ask for gigabytes): a saved parameter never has more elements than its storage.
            long elements = size.Aggregate(1L, (n, s) => checked(n * s));
            if (elements > storage.NumberOfElements)
                throw new InvalidDataException(
                    $"tensor view {Describe.Shape(size)} (stride {Describe.Shape(stride)}) has {elements} elements but its storage only {storage.NumberOfElements}: overlapping views are refused.");
        }
        using var view = storage.as_strided(size, stride, offset);
        return view.clone();
    }

    private Storage PersistentLoad(object? pid)
    {
        // ('storage', torch.FloatStorage, key, location, numel)
        var tuple = As<object?[]>(pid);
        if (tuple.Length < 5 || tuple[0] as string != "storage")
            throw new InvalidDataException("persistent id: expected ('storage', type, key, location, numel).");
        var type = As<Global>(tuple[1]);
        if (type.Module != "torch" || !StorageTypes.TryGetValue(type.Name, out var scalarType))
            throw new CheckpointException(_path, type.ToString(), "unsupported storage type: expected a torch.*Storage.");
        return new Storage(_storages.Load(As<string>(tuple[2]), scalarType, As<long>(tuple[4])));
    }

    private static void Build(object? state, object? target)
    {
        // A state dict's OrderedDict carries its _metadata (per-module versions) as state; it does not change the tensors.
        if (target is PickleDict) return;
        throw new InvalidDataException($"BUILD on a {PickleDict.TypeName(target)} is not part of a tensor state dict.");
    }

    private static void SetItems(PickleDict dict, List<object?> items)
    {
        if (items.Count % 2 != 0) throw new InvalidDataException("SETITEMS with an odd number of items.");
        for (int i = 0; i < items.Count; i += 2) dict[items[i]!] = items[i + 1];
    }

    private T As<T>(object? value) =>
        value is T typed ? typed : throw new InvalidDataException($"expected {typeof(T).Name}, found {PickleDict.TypeName(value)}.");

    private void Push(object? value)
    {
        Count();
        _stack.Add(value);
    }

    /// <summary>Counts one value, memo entry or mark: whatever a pickle can make grow, it makes grow through these.</summary>
    private void Count()
    {
        if (++_created > MaxValues)
            throw new CheckpointException(_path, "data.pkl", $"more than {MaxValues} values, memo entries and marks: not a tensor state dict (ViT-L's holds a few thousand).");
    }

    private object? Peek() => _stack.Count > 0 ? _stack[^1] : throw new InvalidDataException("pickle stack underflow.");

    private object? Pop()
    {
        var value = Peek();
        _stack.RemoveAt(_stack.Count - 1);
        return value;
    }

    private List<object?> PopMark()
    {
        if (_marks.Count == 0) throw new InvalidDataException("pickle MARK missing.");
        int start = _marks.Pop();
        var items = _stack.GetRange(start, _stack.Count - start);
        _stack.RemoveRange(start, _stack.Count - start);
        return items;
    }

    private object? Recall(long index) =>
        _memo.TryGetValue(index, out var value) ? value : throw new InvalidDataException($"memo entry {index} was never stored.");

    private byte ReadByte() => ReadBytes(1)[0];

    private ReadOnlySpan<byte> ReadBytes(long count)
    {
        if (count < 0 || count > _data.Length - _position)
            throw new InvalidDataException($"truncated pickle: needs {count} more bytes, {_data.Length - _position} left.");
        var span = _data.AsSpan(_position, (int)count);
        _position += (int)count;
        return span;
    }

    private long ReadLength(int width)
    {
        var bytes = ReadBytes(width);
        return width == 4 ? BinaryPrimitives.ReadUInt32LittleEndian(bytes) : checked((long)BinaryPrimitives.ReadUInt64LittleEndian(bytes));
    }

    private long ReadLong(long length)
    {
        if (length > 8) throw new InvalidDataException($"integer of {length} bytes is too large for a tensor state dict.");
        var bytes = ReadBytes(length);
        long value = 0;
        for (int i = (int)length - 1; i >= 0; i--) value = (value << 8) | bytes[i];
        // Two's complement: sign-extend from the top byte.
        if (length is > 0 and < 8 && (bytes[(int)length - 1] & 0x80) != 0) value -= 1L << (int)(8 * length);
        return value;
    }

    private string ReadString(long length) => Encoding.UTF8.GetString(ReadBytes(length));

    private string ReadLine()
    {
        int end = Array.IndexOf(_data, (byte)'\n', _position);
        if (end < 0) throw new InvalidDataException("truncated pickle: GLOBAL name without end of line.");
        string line = Encoding.UTF8.GetString(_data, _position, end - _position);
        _position = end + 1;
        return line;
    }
}
