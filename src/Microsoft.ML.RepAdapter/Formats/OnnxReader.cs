using System.Buffers.Binary;
using System.Text;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Formats;

/// <summary>An ONNX graph as far as checkpoint import needs it: nodes (for mapping weights by topology), inputs, outputs.</summary>
internal sealed record OnnxGraph(
    string Name,
    string ProducerName,
    long IrVersion,
    long OpsetVersion,
    IReadOnlyList<OnnxNode> Nodes,
    IReadOnlyList<OnnxValueInfo> Inputs,
    IReadOnlyList<OnnxValueInfo> Outputs);

/// <summary>One graph node; <see cref="Attributes"/> keeps the scalar and list attributes (tensor attributes are omitted).</summary>
internal sealed record OnnxNode(string Name, string OpType, IReadOnlyList<string> Inputs, IReadOnlyList<string> Outputs, IReadOnlyDictionary<string, OnnxAttribute> Attributes)
{
    public IReadOnlyList<long> Ints(string name) => Attributes.TryGetValue(name, out var a) ? a.Ints : [];

    public long? Int(string name) => Attributes.TryGetValue(name, out var a) ? a.Int : null;

    public float? Float(string name) => Attributes.TryGetValue(name, out var a) ? a.Float : null;

    public override string ToString() => $"{OpType} '{Name}'";
}

/// <summary>One node attribute: whichever of the scalar, string and list fields it has (the others null or empty).</summary>
internal sealed record OnnxAttribute(string Name, float? Float, long? Int, string? String, IReadOnlyList<long> Ints, IReadOnlyList<float> Floats);

/// <summary>A graph input or output with its static shape (null where a dimension is symbolic).</summary>
internal sealed record OnnxValueInfo(string Name, IReadOnlyList<long?> Shape);

/// <summary>
/// A small reader for the ONNX protobuf (onnx.proto): ModelProto -> GraphProto -> nodes, initializers (TensorProto
/// dims / data_type / raw_data / float_data / int64_data ...), inputs and outputs. Only the fields above are decoded;
/// the rest is skipped by wire type. Every length is checked against the bytes that remain.
/// </summary>
internal static class OnnxReader
{
    /// <summary>
    /// Whether <paramref name="prefix"/> starts like a ModelProto: field 1 (ir_version, varint) with a small value,
    /// then another ModelProto field tag. ONNX has no magic bytes; the full parse validates the rest.
    /// </summary>
    public static bool Sniff(ReadOnlySpan<byte> prefix) =>
        prefix.Length >= 3 && prefix[0] == 0x08 && prefix[1] is >= 1 and <= 32 && (prefix[2] >> 3) is >= 2 and <= 20 && (prefix[2] & 7) is 0 or 2;

    public static TensorCheckpoint Read(string path)
    {
        byte[] bytes = File.ReadAllBytes(path);
        var tensors = new OrderedDictionary<string, Tensor>();
        try
        {
            var graph = ParseModel(new ProtoReader(bytes, 0, bytes.Length), tensors);
            return new TensorCheckpoint(path, CheckpointFormat.Onnx, tensors, graph: graph);
        }
        catch (Exception e)
        {
            foreach (var tensor in tensors.Values) tensor.Dispose();
            if (e is BadInitializer bad) throw new CheckpointException(path, bad.Key, bad.Message, bad);
            throw new CheckpointException(path, null, $"corrupt ONNX protobuf: {e.Message}", e);
        }
    }

    private static OnnxGraph ParseModel(ProtoReader model, OrderedDictionary<string, Tensor> tensors)
    {
        long irVersion = 0, opset = 0;
        string producer = "";
        OnnxGraph? graph = null;
        while (model.Next(out int field, out int wire))
        {
            switch (field)
            {
                case 1 when wire == 0: irVersion = model.Varint(); break;
                case 2 when wire == 2: producer = model.String(); break;
                case 7 when wire == 2: graph = ParseGraph(model.Message(), tensors, producer, irVersion); break;
                case 8 when wire == 2:
                    var opsetReader = model.Message();
                    while (opsetReader.Next(out int f, out int w))
                    {
                        if (f == 2 && w == 0) opset = Math.Max(opset, opsetReader.Varint());
                        else opsetReader.Skip(w);
                    }
                    break;
                default: model.Skip(wire); break;
            }
        }
        if (graph is null) throw new InvalidDataException("ModelProto has no graph (field 7): expected an ONNX model.");
        return graph with { OpsetVersion = opset, IrVersion = irVersion, ProducerName = producer };
    }

    private static OnnxGraph ParseGraph(ProtoReader graph, OrderedDictionary<string, Tensor> tensors, string producer, long irVersion)
    {
        var nodes = new List<OnnxNode>();
        var inputs = new List<OnnxValueInfo>();
        var outputs = new List<OnnxValueInfo>();
        string name = "";
        while (graph.Next(out int field, out int wire))
        {
            switch (field)
            {
                case 1 when wire == 2: nodes.Add(ParseNode(graph.Message())); break;
                case 2 when wire == 2: name = graph.String(); break;
                case 5 when wire == 2:
                    var (tensorName, tensor) = ParseTensor(graph.Message());
                    if (!tensors.TryAdd(tensorName, tensor))
                    {
                        tensor.Dispose();
                        throw new BadInitializer(tensorName, "initializer appears twice.");
                    }
                    break;
                case 11 when wire == 2: inputs.Add(ParseValueInfo(graph.Message())); break;
                case 12 when wire == 2: outputs.Add(ParseValueInfo(graph.Message())); break;
                default: graph.Skip(wire); break;
            }
        }
        return new OnnxGraph(name, producer, irVersion, 0, nodes, inputs, outputs);
    }

    private static OnnxNode ParseNode(ProtoReader node)
    {
        var inputs = new List<string>();
        var outputs = new List<string>();
        var attributes = new Dictionary<string, OnnxAttribute>();
        string name = "", opType = "";
        while (node.Next(out int field, out int wire))
        {
            switch (field)
            {
                case 1 when wire == 2: inputs.Add(node.String()); break;
                case 2 when wire == 2: outputs.Add(node.String()); break;
                case 3 when wire == 2: name = node.String(); break;
                case 4 when wire == 2: opType = node.String(); break;
                case 5 when wire == 2:
                    var attribute = ParseAttribute(node.Message());
                    attributes[attribute.Name] = attribute;
                    break;
                default: node.Skip(wire); break;
            }
        }
        return new OnnxNode(name, opType, inputs, outputs, attributes);
    }

    private static OnnxAttribute ParseAttribute(ProtoReader attribute)
    {
        string name = "";
        float? f = null;
        long? i = null;
        string? s = null;
        var ints = new List<long>();
        var floats = new List<float>();
        while (attribute.Next(out int field, out int wire))
        {
            switch (field)
            {
                case 1 when wire == 2: name = attribute.String(); break;
                case 2 when wire == 5: f = attribute.Fixed32Float(); break;
                case 3 when wire == 0: i = attribute.Varint(); break;
                case 4 when wire == 2: s = attribute.String(); break;
                case 7: attribute.RepeatedFloat(wire, floats); break;
                case 8: attribute.RepeatedVarint(wire, ints); break;
                default: attribute.Skip(wire); break;
            }
        }
        return new OnnxAttribute(name, f, i, s, ints, floats);
    }

    private static OnnxValueInfo ParseValueInfo(ProtoReader valueInfo)
    {
        string name = "";
        var shape = new List<long?>();
        while (valueInfo.Next(out int field, out int wire))
        {
            if (field == 1 && wire == 2) name = valueInfo.String();
            else if (field == 2 && wire == 2)
            {
                // TypeProto.tensor_type (1) -> TensorShapeProto shape (2) -> dim (1) -> dim_value (1) | dim_param (2)
                var type = valueInfo.Message();
                while (type.Next(out int tf, out int tw))
                {
                    if (tf != 1 || tw != 2) { type.Skip(tw); continue; }
                    var tensorType = type.Message();
                    while (tensorType.Next(out int sf, out int sw))
                    {
                        if (sf != 2 || sw != 2) { tensorType.Skip(sw); continue; }
                        var shapeProto = tensorType.Message();
                        while (shapeProto.Next(out int df, out int dw))
                        {
                            if (df != 1 || dw != 2) { shapeProto.Skip(dw); continue; }
                            var dim = shapeProto.Message();
                            long? value = null;
                            while (dim.Next(out int vf, out int vw))
                            {
                                if (vf == 1 && vw == 0) value = dim.Varint();
                                else dim.Skip(vw);
                            }
                            shape.Add(value);
                        }
                    }
                }
            }
            else valueInfo.Skip(wire);
        }
        return new OnnxValueInfo(name, shape);
    }

    // TensorProto.DataType values this reader materialises.
    private const int Float = 1, Int32 = 6, Int64 = 7, Double = 11;

    private static (string Name, Tensor Tensor) ParseTensor(ProtoReader proto)
    {
        var dims = new List<long>();
        int dataType = 0;
        string name = "";
        ProtoReader? raw = null;
        var floats = new List<float>();
        var longs = new List<long>();
        var doubles = new List<double>();
        while (proto.Next(out int field, out int wire))
        {
            switch (field)
            {
                case 1: proto.RepeatedVarint(wire, dims); break;
                case 2 when wire == 0: dataType = (int)proto.Varint(); break;
                case 4: proto.RepeatedFloat(wire, floats); break;
                case 5: proto.RepeatedVarint(wire, longs); break;   // int32_data
                case 7: proto.RepeatedVarint(wire, longs); break;   // int64_data
                case 8 when wire == 2: name = proto.String(); break;
                case 9 when wire == 2: raw = proto.Message(); break;
                case 10: proto.RepeatedDouble(wire, doubles); break;
                case 13: throw new BadInitializer(name, "external tensor data is not supported: expected the weights inside the .onnx file.");
                case 14 when wire == 0:
                    if (proto.Varint() == 1) throw new BadInitializer(name, "external tensor data is not supported: expected the weights inside the .onnx file.");
                    break;
                default: proto.Skip(wire); break;
            }
        }
        var (type, size) = dataType switch
        {
            Float => (ScalarType.Float32, 4),
            Double => (ScalarType.Float64, 8),
            Int32 => (ScalarType.Int32, 4),
            Int64 => (ScalarType.Int64, 8),
            _ => throw new BadInitializer(name, $"unsupported initializer data_type: expected FLOAT, DOUBLE, INT32 or INT64, found {dataType}."),
        };
        if (dims.Any(d => d < 0)) throw new BadInitializer(name, $"initializer dims: expected non-negative sizes, found {Describe.Shape(dims)}.");
        long count = dims.Aggregate(1L, (a, b) => checked(a * b));
        // Sizes come from the file: check them against the data present before allocating anything.
        long found = raw is { } r ? r.Remaining / size : type switch
        {
            ScalarType.Float32 => floats.Count,
            ScalarType.Float64 => doubles.Count,
            _ => longs.Count,
        };
        if (found != count || (raw is { } rr && rr.Remaining % size != 0))
            throw new BadInitializer(name, $"initializer data: expected {count} elements for {Describe.Shape(dims)}, found {found}.");
        var tensor = empty(dims.ToArray(), type);
        try
        {
            if (count == 0) return (name, tensor);
            var target = tensor.bytes;
            if (raw is { } bytes) bytes.Rest.CopyTo(target);
            else if (type == ScalarType.Float32) for (int i = 0; i < count; i++) BinaryPrimitives.WriteSingleLittleEndian(target[(i * 4)..], floats[i]);
            else if (type == ScalarType.Float64) for (int i = 0; i < count; i++) BinaryPrimitives.WriteDoubleLittleEndian(target[(i * 8)..], doubles[i]);
            else if (type == ScalarType.Int32) for (int i = 0; i < count; i++) BinaryPrimitives.WriteInt32LittleEndian(target[(i * 4)..], (int)longs[i]);
            else for (int i = 0; i < count; i++) BinaryPrimitives.WriteInt64LittleEndian(target[(i * 8)..], longs[i]);
            return (name, tensor);
        }
        catch
        {
            tensor.Dispose();
            throw;
        }
    }

    /// <summary>A problem with one named initializer; <see cref="Read"/> adds the file name.</summary>
    private sealed class BadInitializer(string key, string message) : Exception(message)
    {
        public string Key { get; } = key;
    }

    /// <summary>Reads protobuf wire format from a byte range; throws on anything that runs past its end.</summary>
    private sealed class ProtoReader(byte[] data, int start, int end)
    {
        private int _position = start;

        public long Remaining => end - _position;

        public ReadOnlySpan<byte> Rest => data.AsSpan(_position, end - _position);

        public bool Next(out int field, out int wire)
        {
            field = wire = 0;
            if (_position >= end) return false;
            ulong tag = (ulong)Varint();
            field = (int)(tag >> 3);
            wire = (int)(tag & 7);
            if (field == 0) throw new InvalidDataException($"field number 0 at byte {_position}.");
            return true;
        }

        public long Varint()
        {
            ulong value = 0;
            for (int shift = 0; shift < 64; shift += 7)
            {
                if (_position >= end) throw new InvalidDataException("truncated varint.");
                byte b = data[_position++];
                value |= (ulong)(b & 0x7f) << shift;
                if (b < 0x80) return (long)value;
            }
            throw new InvalidDataException("varint longer than 10 bytes.");
        }

        public ProtoReader Message()
        {
            long length = Varint();
            if (length < 0 || length > end - _position)
                throw new InvalidDataException($"truncated file: a field of {length} bytes at byte {_position}, but only {end - _position} bytes remain.");
            var sub = new ProtoReader(data, _position, _position + (int)length);
            _position += (int)length;
            return sub;
        }

        public string String()
        {
            var sub = Message();
            return Encoding.UTF8.GetString(sub.Rest);
        }

        public float Fixed32Float() => BinaryPrimitives.ReadSingleLittleEndian(Take(4));

        public void RepeatedVarint(int wire, List<long> values)
        {
            if (wire == 0) { values.Add(Varint()); return; }
            if (wire != 2) throw new InvalidDataException($"wire type {wire} for a repeated integer.");
            var packed = Message();
            while (packed.Remaining > 0) values.Add(packed.Varint());
        }

        public void RepeatedFloat(int wire, List<float> values)
        {
            if (wire == 5) { values.Add(Fixed32Float()); return; }
            if (wire != 2) throw new InvalidDataException($"wire type {wire} for a repeated float.");
            var packed = Message();
            if (packed.Remaining % 4 != 0) throw new InvalidDataException("packed floats not a multiple of 4 bytes.");
            var span = packed.Rest;
            values.EnsureCapacity(values.Count + span.Length / 4);
            for (int i = 0; i < span.Length; i += 4) values.Add(BinaryPrimitives.ReadSingleLittleEndian(span[i..]));
        }

        public void RepeatedDouble(int wire, List<double> values)
        {
            if (wire == 1) { values.Add(BinaryPrimitives.ReadDoubleLittleEndian(Take(8))); return; }
            if (wire != 2) throw new InvalidDataException($"wire type {wire} for a repeated double.");
            var packed = Message();
            var span = packed.Rest;
            for (int i = 0; i + 8 <= span.Length; i += 8) values.Add(BinaryPrimitives.ReadDoubleLittleEndian(span[i..]));
        }

        public void Skip(int wire)
        {
            switch (wire)
            {
                case 0: Varint(); break;
                case 1: Take(8); break;
                case 2: Message(); break;
                case 5: Take(4); break;
                default: throw new InvalidDataException($"unsupported wire type {wire} at byte {_position}.");
            }
        }

        private ReadOnlySpan<byte> Take(int count)
        {
            if (count > end - _position) throw new InvalidDataException($"truncated file: {count} bytes needed at byte {_position}, {end - _position} remain.");
            var span = data.AsSpan(_position, count);
            _position += count;
            return span;
        }
    }
}
