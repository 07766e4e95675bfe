using System.Reflection;

namespace Microsoft.ML.RepAdapter.Formats;

/// <summary>
/// Writes an <see cref="OnnxGraphBuilder"/>'s graph as an ONNX ModelProto (IR version 8) with the field numbers of
/// <see cref="OnnxFields"/>. Tensor bytes go from the tensors straight to the stream. A protobuf message cannot exceed
/// 2 GB, so when the weights would not fit (or <c>externalDataThreshold</c> says so) the large tensors are written to
/// a side file (<c>model.onnx.data</c>, ONNX's external data: location, offset, length), which ONNX Runtime reads when
/// the model is loaded from its path.
/// </summary>
internal static class OnnxWriter
{
    /// <summary>IR version 8 goes with opset 17.</summary>
    public const long IrVersion = 8;

    /// <summary>protobuf's limit on a message, minus room for everything that is not weights.</summary>
    public const long InlineLimitBytes = int.MaxValue - (64L << 20);

    /// <summary>Tensors smaller than this stay inline even when the others go to external data.</summary>
    private const long ExternalMinimumBytes = 1024;

    /// <summary>Writes the model into <paramref name="stream"/>; throws when the weights do not fit in one protobuf (use a path).</summary>
    public static void Write(OnnxGraphBuilder graph, Stream stream)
    {
        long weights = graph.Initializers.Sum(i => i.ByteCount);
        if (weights > InlineLimitBytes)
            throw new InvalidOperationException(
                $"The model's {weights / (1 << 20)} MB of weights exceed protobuf's 2 GB limit for one message: export to a file path, which writes them as ONNX external data.");
        var model = Model(graph, external: null);
        model.WriteTo(stream);
    }

    /// <summary>
    /// Writes the model to <paramref name="path"/>; tensors go to external data (<c>path + ".data"</c>) when the weights
    /// exceed <paramref name="externalDataThreshold"/> bytes (default: when they would not fit in one protobuf).
    /// Returns the external data file, or null when everything is inline.
    /// </summary>
    public static string? Write(OnnxGraphBuilder graph, string path, long? externalDataThreshold = null)
    {
        long weights = graph.Initializers.Sum(i => i.ByteCount);
        string dataPath = path + ".data";
        bool external = weights > (externalDataThreshold ?? InlineLimitBytes);
        if (File.Exists(dataPath)) File.Delete(dataPath);
        if (!external)
        {
            using var file = File.Create(path);
            Write(graph, file);
            return null;
        }
        var locations = new Dictionary<string, (long Offset, long Length)>();
        using (var data = File.Create(dataPath))
        {
            foreach (var initializer in graph.Initializers)
            {
                if (initializer.ByteCount < ExternalMinimumBytes) continue;
                // Page-aligned offsets let ONNX Runtime map the file instead of reading it.
                long offset = (data.Position + 4095) / 4096 * 4096;
                data.SetLength(offset);
                data.Position = offset;
                data.Write(initializer.Tensor.bytes);
                locations[initializer.Name] = (offset, initializer.ByteCount);
            }
        }
        using (var file = File.Create(path))
        {
            Model(graph, (Path.GetFileName(dataPath), locations)).WriteTo(file);
        }
        return dataPath;
    }

    private static ProtoWriter Model(OnnxGraphBuilder graph, (string File, Dictionary<string, (long Offset, long Length)> Locations)? external)
    {
        var model = new ProtoWriter()
            .Varint(OnnxFields.Model.IrVersion, IrVersion)
            .String(OnnxFields.Model.ProducerName, "Microsoft.ML.RepAdapter")
            .String(OnnxFields.Model.ProducerVersion, typeof(OnnxWriter).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "")
            .Message(OnnxFields.Model.Graph, Graph(graph, external))
            .Message(OnnxFields.Model.OpsetImport, new ProtoWriter().String(OnnxFields.OperatorSet.Domain, "").Varint(OnnxFields.OperatorSet.Version, OnnxGraphBuilder.Opset));
        foreach (var (key, value) in graph.Metadata)
            model.Message(OnnxFields.Model.MetadataProps, new ProtoWriter().String(OnnxFields.Entry.Key, key).String(OnnxFields.Entry.Value, value));
        return model;
    }

    private static ProtoWriter Graph(OnnxGraphBuilder graph, (string File, Dictionary<string, (long Offset, long Length)> Locations)? external)
    {
        var proto = new ProtoWriter();
        foreach (var node in graph.Nodes) proto.Message(OnnxFields.Graph.Node, Node(node));
        proto.String(OnnxFields.Graph.Name, graph.GraphName);
        foreach (var initializer in graph.Initializers)
        {
            (long Offset, long Length)? location = external is { } e && e.Locations.TryGetValue(initializer.Name, out var l) ? l : null;
            proto.Message(OnnxFields.Graph.Initializer, Tensor(initializer, external?.File, location));
        }
        foreach (var input in graph.Inputs) proto.Message(OnnxFields.Graph.Input, ValueInfo(input));
        foreach (var output in graph.Outputs) proto.Message(OnnxFields.Graph.Output, ValueInfo(output));
        return proto;
    }

    private static ProtoWriter Node(OnnxNodeSpec node)
    {
        var proto = new ProtoWriter();
        foreach (string input in node.Inputs) proto.String(OnnxFields.Node.Input, input);
        foreach (string output in node.Outputs) proto.String(OnnxFields.Node.Output, output);
        proto.String(OnnxFields.Node.Name, node.Name).String(OnnxFields.Node.OpType, node.OpType);
        foreach (var (name, value) in node.Attributes) proto.Message(OnnxFields.Node.Attribute, Attribute(name, value));
        return proto;
    }

    private static ProtoWriter Attribute(string name, object value)
    {
        var proto = new ProtoWriter().String(OnnxFields.Attribute.Name, name);
        return value switch
        {
            long i => proto.Varint(OnnxFields.Attribute.Int, i).Varint(OnnxFields.Attribute.Type, OnnxFields.AttributeType.Int),
            int i => proto.Varint(OnnxFields.Attribute.Int, i).Varint(OnnxFields.Attribute.Type, OnnxFields.AttributeType.Int),
            float f => proto.Float(OnnxFields.Attribute.Float, f).Varint(OnnxFields.Attribute.Type, OnnxFields.AttributeType.Float),
            double d => proto.Float(OnnxFields.Attribute.Float, (float)d).Varint(OnnxFields.Attribute.Type, OnnxFields.AttributeType.Float),
            string s => proto.String(OnnxFields.Attribute.String, s).Varint(OnnxFields.Attribute.Type, OnnxFields.AttributeType.String),
            long[] ints => proto.PackedVarints(OnnxFields.Attribute.Ints, ints).Varint(OnnxFields.Attribute.Type, OnnxFields.AttributeType.Ints),
            int[] ints => proto.PackedVarints(OnnxFields.Attribute.Ints, ints.Select(i => (long)i)).Varint(OnnxFields.Attribute.Type, OnnxFields.AttributeType.Ints),
            float[] floats => proto.PackedFloats(OnnxFields.Attribute.Floats, floats).Varint(OnnxFields.Attribute.Type, OnnxFields.AttributeType.Floats),
            string[] strings => Strings(proto, strings).Varint(OnnxFields.Attribute.Type, OnnxFields.AttributeType.Strings),
            _ => throw new ArgumentException($"attribute '{name}': {value.GetType().Name} cannot be written."),
        };
    }

    private static ProtoWriter Strings(ProtoWriter proto, string[] strings)
    {
        foreach (string s in strings) proto.String(OnnxFields.Attribute.Strings, s);
        return proto;
    }

    private static ProtoWriter Tensor(OnnxInitializer initializer, string? externalFile, (long Offset, long Length)? location)
    {
        var proto = new ProtoWriter()
            .PackedVarints(OnnxFields.Tensor.Dims, initializer.Dims)
            .Varint(OnnxFields.Tensor.DataType, initializer.DataType);
        proto.String(OnnxFields.Tensor.Name, initializer.Name);
        var tensor = initializer.Tensor;
        if (location is { } at)
        {
            Entry(proto, OnnxFields.Tensor.ExternalData, "location", externalFile!);
            Entry(proto, OnnxFields.Tensor.ExternalData, "offset", at.Offset.ToString(System.Globalization.CultureInfo.InvariantCulture));
            Entry(proto, OnnxFields.Tensor.ExternalData, "length", at.Length.ToString(System.Globalization.CultureInfo.InvariantCulture));
            return proto.Varint(OnnxFields.Tensor.DataLocation, OnnxFields.Tensor.External);
        }
        return proto.Bytes(OnnxFields.Tensor.RawData, initializer.ByteCount, s => s.Write(tensor.bytes));
    }

    private static void Entry(ProtoWriter proto, int field, string key, string value) =>
        proto.Message(field, new ProtoWriter().String(OnnxFields.Entry.Key, key).String(OnnxFields.Entry.Value, value));

    private static ProtoWriter ValueInfo(OnnxValue value)
    {
        var shape = new ProtoWriter();
        foreach (var dim in value.Shape)
        {
            var d = new ProtoWriter();
            if (dim.Value is long size) d.Varint(OnnxFields.Type.DimValue, size);
            else d.String(OnnxFields.Type.DimParam, dim.Symbol ?? "?");
            shape.Message(OnnxFields.Type.Dim, d);
        }
        // An empty shape message marks a scalar (rank 0), which ML.NET maps to a scalar column.
        var tensorType = new ProtoWriter().Varint(OnnxFields.Type.ElemType, value.ElementType).Message(OnnxFields.Type.Shape, shape);
        return new ProtoWriter()
            .String(OnnxFields.ValueInfo.Name, value.Name)
            .Message(OnnxFields.ValueInfo.Type, new ProtoWriter().Message(OnnxFields.Type.TensorType, tensorType));
    }
}
