using System.Buffers.Binary;
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
                case OnnxFields.Model.IrVersion when wire == 0: irVersion = model.Varint(); break;
                case OnnxFields.Model.ProducerName when wire == 2: producer = model.String(); break;
                case OnnxFields.Model.Graph when wire == 2: graph = ParseGraph(model.Message(), tensors, producer, irVersion); break;
                case OnnxFields.Model.OpsetImport when wire == 2:
                    var opsetReader = model.Message();
                    while (opsetReader.Next(out int f, out int w))
                    {
                        if (f == OnnxFields.OperatorSet.Version && w == 0) opset = Math.Max(opset, opsetReader.Varint());
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
                case OnnxFields.Graph.Node when wire == 2: nodes.Add(ParseNode(graph.Message())); break;
                case OnnxFields.Graph.Name when wire == 2: name = graph.String(); break;
                case OnnxFields.Graph.Initializer when wire == 2:
                    var (tensorName, tensor) = ParseTensor(graph.Message());
                    if (!tensors.TryAdd(tensorName, tensor))
                    {
                        tensor.Dispose();
                        throw new BadInitializer(tensorName, "initializer appears twice.");
                    }
                    break;
                case OnnxFields.Graph.Input when wire == 2: inputs.Add(ParseValueInfo(graph.Message())); break;
                case OnnxFields.Graph.Output when wire == 2: outputs.Add(ParseValueInfo(graph.Message())); break;
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
                case OnnxFields.Node.Input when wire == 2: inputs.Add(node.String()); break;
                case OnnxFields.Node.Output when wire == 2: outputs.Add(node.String()); break;
                case OnnxFields.Node.Name when wire == 2: name = node.String(); break;
                case OnnxFields.Node.OpType when wire == 2: opType = node.String(); break;
                case OnnxFields.Node.Attribute when wire == 2:
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
                case OnnxFields.Attribute.Name when wire == 2: name = attribute.String(); break;
                case OnnxFields.Attribute.Float when wire == 5: f = attribute.Fixed32Float(); break;
                case OnnxFields.Attribute.Int when wire == 0: i = attribute.Varint(); break;
                case OnnxFields.Attribute.String when wire == 2: s = attribute.String(); break;
                case OnnxFields.Attribute.Floats: attribute.RepeatedFloat(wire, floats); break;
                case OnnxFields.Attribute.Ints: attribute.RepeatedVarint(wire, ints); break;
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
            if (field == OnnxFields.ValueInfo.Name && wire == 2) name = valueInfo.String();
            else if (field == OnnxFields.ValueInfo.Type && wire == 2)
            {
                // TypeProto.tensor_type (1) -> TensorShapeProto shape (2) -> dim (1) -> dim_value (1) | dim_param (2)
                var type = valueInfo.Message();
                while (type.Next(out int tf, out int tw))
                {
                    if (tf != OnnxFields.Type.TensorType || tw != 2) { type.Skip(tw); continue; }
                    var tensorType = type.Message();
                    while (tensorType.Next(out int sf, out int sw))
                    {
                        if (sf != OnnxFields.Type.Shape || sw != 2) { tensorType.Skip(sw); continue; }
                        var shapeProto = tensorType.Message();
                        while (shapeProto.Next(out int df, out int dw))
                        {
                            if (df != OnnxFields.Type.Dim || dw != 2) { shapeProto.Skip(dw); continue; }
                            var dim = shapeProto.Message();
                            long? value = null;
                            while (dim.Next(out int vf, out int vw))
                            {
                                if (vf == OnnxFields.Type.DimValue && vw == 0) value = dim.Varint();
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
    private const int Float = OnnxFields.DataType.Float, Int32 = OnnxFields.DataType.Int32, Int64 = OnnxFields.DataType.Int64, Double = OnnxFields.DataType.Double;

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
                case OnnxFields.Tensor.Dims: proto.RepeatedVarint(wire, dims); break;
                case OnnxFields.Tensor.DataType when wire == 0: dataType = (int)proto.Varint(); break;
                case OnnxFields.Tensor.FloatData: proto.RepeatedFloat(wire, floats); break;
                case OnnxFields.Tensor.Int32Data: proto.RepeatedVarint(wire, longs); break;
                case OnnxFields.Tensor.Int64Data: proto.RepeatedVarint(wire, longs); break;
                case OnnxFields.Tensor.Name when wire == 2: name = proto.String(); break;
                case OnnxFields.Tensor.RawData when wire == 2: raw = proto.Message(); break;
                case OnnxFields.Tensor.DoubleData: proto.RepeatedDouble(wire, doubles); break;
                case OnnxFields.Tensor.ExternalData: throw new BadInitializer(name, "external tensor data is not supported: expected the weights inside the .onnx file.");
                case OnnxFields.Tensor.DataLocation when wire == 0:
                    if (proto.Varint() == OnnxFields.Tensor.External) throw new BadInitializer(name, "external tensor data is not supported: expected the weights inside the .onnx file.");
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
}
