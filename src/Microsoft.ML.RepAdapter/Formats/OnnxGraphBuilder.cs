using System.Globalization;
using Microsoft.ML.RepAdapter.Torch;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Formats;

/// <summary>A dimension of a graph input or output: a fixed size, or a symbolic one (e.g. <c>batch</c>).</summary>
internal readonly record struct OnnxDim(long? Value, string? Symbol)
{
    public static implicit operator OnnxDim(long value) => new(value, null);

    public static implicit operator OnnxDim(string symbol) => new(null, symbol);

    public override string ToString() => Value?.ToString(CultureInfo.InvariantCulture) ?? Symbol ?? "?";
}

/// <summary>A graph input or output: name, element type (<see cref="OnnxFields.DataType"/>) and shape.</summary>
internal sealed record OnnxValue(string Name, int ElementType, IReadOnlyList<OnnxDim> Shape);

/// <summary>One node (of the ai.onnx domain) as written: op, inputs and outputs by value name, attributes (long, float, string or arrays of them).</summary>
internal sealed record OnnxNodeSpec(string Name, string OpType, IReadOnlyList<string> Inputs, IReadOnlyList<string> Outputs,
    IReadOnlyList<KeyValuePair<string, object>> Attributes);

/// <summary>An initializer as written: a float32, int8 or int64 tensor, owned by the builder, on the CPU, contiguous.</summary>
internal sealed record OnnxInitializer(string Name, int DataType, long[] Dims, Tensor Tensor)
{
    /// <summary>Bytes of raw data.</summary>
    public long ByteCount => Tensor.NumberOfElements * Tensor.ElementSize;
}

/// <summary>
/// Builds an ONNX graph in C# (ai.onnx opset <see cref="Opset"/>; ai.onnx.ml when a node asks for it) for
/// <see cref="OnnxWriter"/>: inputs, outputs, initializers and nodes, with helpers for the operators vision networks
/// need (convolutions, linear layers, LayerNorm, GELU, attention pieces, resizing). Value names are made unique here;
/// every helper returns the name of the value it produces. It knows operators, never a network family. Owns the
/// initializer tensors it is given copies of: dispose it after writing.
/// </summary>
internal sealed class OnnxGraphBuilder(string graphName) : IDisposable
{
    /// <summary>The ai.onnx operator set the graph is written for (LayerNormalization needs 17).</summary>
    public const int Opset = 17;

    private readonly List<OnnxNodeSpec> _nodes = [];
    private readonly List<OnnxInitializer> _initializers = [];
    private readonly List<OnnxValue> _inputs = [];
    private readonly List<OnnxValue> _outputs = [];
    private readonly HashSet<string> _names = [];
    private readonly Dictionary<string, string> _intConstants = [];
    private int _counter;

    public string GraphName { get; } = graphName;

    public IReadOnlyList<OnnxNodeSpec> Nodes => _nodes;

    public IReadOnlyList<OnnxInitializer> Initializers => _initializers;

    public IReadOnlyList<OnnxValue> Inputs => _inputs;

    public IReadOnlyList<OnnxValue> Outputs => _outputs;

    /// <summary>Model metadata (metadata_props), e.g. the input's channel order and pixel range.</summary>
    public Dictionary<string, string> Metadata { get; } = [];

    public string Input(string name, int elementType, params OnnxDim[] shape)
    {
        _inputs.Add(new OnnxValue(Claim(name), elementType, shape));
        return name;
    }

    /// <summary>Declares <paramref name="value"/> a graph output called <paramref name="name"/> (through an Identity when the names differ).</summary>
    public void Output(string value, string name, int elementType, params OnnxDim[] shape)
    {
        if (value != name) Node("Identity", [value], [Claim(name)]);
        _outputs.Add(new OnnxValue(name, elementType, shape));
    }

    /// <summary>
    /// Renames the graph's inputs and outputs by <paramref name="rename"/> wherever they are used: ML.NET's
    /// ApplyOnnxModel reads and writes columns named as the graph's inputs and outputs, so a chain gives them names no
    /// user column can have.
    /// </summary>
    public void RenameInterface(Func<string, string> rename)
    {
        var names = _inputs.Concat(_outputs).ToDictionary(v => v.Name, v => rename(v.Name));
        string Renamed(string name) => names.TryGetValue(name, out var renamed) ? renamed : name;
        foreach (string name in names.Values)
        {
            if (_names.Contains(name) && !names.ContainsKey(name)) throw new ArgumentException($"ONNX value name '{name}' is already used.", nameof(rename));
        }
        for (int i = 0; i < _nodes.Count; i++)
            _nodes[i] = _nodes[i] with { Inputs = [.. _nodes[i].Inputs.Select(Renamed)], Outputs = [.. _nodes[i].Outputs.Select(Renamed)] };
        for (int i = 0; i < _inputs.Count; i++) _inputs[i] = _inputs[i] with { Name = Renamed(_inputs[i].Name) };
        for (int i = 0; i < _outputs.Count; i++) _outputs[i] = _outputs[i] with { Name = Renamed(_outputs[i].Name) };
        foreach (string name in names.Values) _names.Add(name);
    }

    /// <summary>A float32, int8 or int64 initializer holding a copy of <paramref name="value"/> (float64 is stored as float32).</summary>
    public string Initializer(string hint, Tensor value)
    {
        using var scope = NewDisposeScope();
        var owned = value.detach().cpu();
        if (owned.dtype == ScalarType.Float64) owned = owned.to(ScalarType.Float32);
        int dataType = owned.dtype switch
        {
            ScalarType.Float32 => OnnxFields.DataType.Float,
            ScalarType.Int64 => OnnxFields.DataType.Int64,
            ScalarType.Int8 => OnnxFields.DataType.Int8,
            _ => throw new NotSupportedException($"ONNX initializer '{hint}': {owned.dtype} is not exported (float32, int8 and int64 are)."),
        };
        // The builder's own copy: contiguous() makes one of a strided tensor (e.g. a transposed weight), clone() of the rest.
        owned = (owned.is_contiguous() ? owned.clone() : owned.contiguous()).DetachFromDisposeScope();
        string name = Unique(hint);
        _initializers.Add(new OnnxInitializer(name, dataType, owned.shape, owned));
        return name;
    }

    public string Floats(string hint, float[] values, params long[] dims)
    {
        using var scope = NewDisposeScope();
        return Initializer(hint, tensor(values).reshape(dims.Length == 0 && values.Length == 1 ? [] : dims.Length == 0 ? [values.Length] : dims));
    }

    public string Scalar(float value) => Floats("scalar", [value]);

    /// <summary>A 1-D int64 constant (shapes, axes, indices), shared between nodes that use the same values.</summary>
    public string Ints(params long[] values)
    {
        string key = string.Join(",", values);
        if (_intConstants.TryGetValue(key, out var existing)) return existing;
        using var scope = NewDisposeScope();
        return _intConstants[key] = Initializer("ints", tensor(values));
    }

    /// <summary>A 0-d int64 constant (a Gather index that drops the axis).</summary>
    public string IntScalar(long value)
    {
        string key = $"scalar:{value}";
        if (_intConstants.TryGetValue(key, out var existing)) return existing;
        using var scope = NewDisposeScope();
        return _intConstants[key] = Initializer("index", tensor(value));
    }

    /// <summary>A node with one output; returns that output's name.</summary>
    public string Node(string opType, IReadOnlyList<string> inputs, params (string Name, object Value)[] attributes) =>
        Node(opType, inputs, [Unique(opType.ToLowerInvariant())], attributes)[0];

    /// <summary>A node with the given outputs.</summary>
    public IReadOnlyList<string> Node(string opType, IReadOnlyList<string> inputs, IReadOnlyList<string> outputs,
        params (string Name, object Value)[] attributes)
    {
        foreach (var (name, value) in attributes)
        {
            if (value is not (long or int or float or double or string or long[] or int[] or float[] or string[]))
                throw new ArgumentException($"{opType}: attribute '{name}' of type {value?.GetType().Name} cannot be written.");
        }
        _nodes.Add(new OnnxNodeSpec(Unique($"{opType}_{_nodes.Count}"), opType, inputs, outputs,
            [.. attributes.Select(a => new KeyValuePair<string, object>(a.Name, a.Value))]));
        return outputs;
    }

    /// <summary>A fresh value name starting with <paramref name="hint"/>.</summary>
    private string Unique(string hint)
    {
        string name = hint;
        while (!_names.Add(name)) name = $"{hint}_{++_counter}";
        return name;
    }

    private string Claim(string name)
    {
        if (!_names.Add(name)) throw new ArgumentException($"ONNX value name '{name}' is already used.", nameof(name));
        return name;
    }

    // Operators.

    public string Add(string a, string b) => Node("Add", [a, b]);


    public string Mul(string a, string b) => Node("Mul", [a, b]);


    public string MatMul(string a, string b) => Node("MatMul", [a, b]);

    public string Relu(string x) => Node("Relu", [x]);

    public string Sigmoid(string x) => Node("Sigmoid", [x]);

    public string Tanh(string x) => Node("Tanh", [x]);

    public string Softmax(string x, long axis = -1) => Node("Softmax", [x], ("axis", axis));

    public string Transpose(string x, params long[] perm) => Node("Transpose", [x], ("perm", perm));

    /// <summary>Reshape to <paramref name="shape"/> (0 copies the input's dimension, -1 is inferred: use it for the batch).</summary>
    public string Reshape(string x, params long[] shape) => Node("Reshape", [x, Ints(shape)]);

    public string Flatten(string x, long axis = 1) => Node("Flatten", [x], ("axis", axis));

    public string Concat(long axis, params string[] values) => Node("Concat", values, ("axis", axis));

    /// <summary>Elements <paramref name="index"/> along <paramref name="axis"/>, dropping that axis.</summary>
    public string Select(string x, long axis, long index) => Node("Gather", [x, IntScalar(index)], ("axis", axis));

    public string Slice(string x, long axis, long start, long end) => Node("Slice", [x, Ints(start), Ints(end), Ints(axis)]);

    public string ReduceMean(string x, long[] axes, bool keepDims) => Node("ReduceMean", [x], ("axes", axes), ("keepdims", keepDims ? 1L : 0L));

    public string Shape(string x) => Node("Shape", [x]);

    public string Expand(string x, string shape) => Node("Expand", [x, shape]);

    public string ArgMax(string x, long axis, bool keepDims) => Node("ArgMax", [x], ("axis", axis), ("keepdims", keepDims ? 1L : 0L));

    public string Cast(string x, int dataType) => Node("Cast", [x], ("to", (long)dataType));

    /// <summary>
    /// A 2-D convolution (NCHW, OIHW weights) with symmetric zero padding <paramref name="padding"/> on each side.
    /// </summary>
    public string Conv(string x, string weight, string? bias, long kernel, long stride = 1, long padding = 0, long groups = 1) =>
        Node("Conv", bias is null ? [x, weight] : [x, weight, bias],
            ("kernel_shape", new[] { kernel, kernel }), ("strides", new[] { stride, stride }),
            ("pads", new[] { padding, padding, padding, padding }), ("dilations", new[] { 1L, 1L }), ("group", groups));

    /// <summary>A convolution over as many spatial axes as <paramref name="kernel"/> has, stride = kernel, no padding (patch and tubelet embeddings).</summary>
    public string PatchConv(string x, string weight, string? bias, long[] kernel) =>
        Node("Conv", bias is null ? [x, weight] : [x, weight, bias],
            ("kernel_shape", kernel), ("strides", kernel), ("pads", new long[2 * kernel.Length]), ("dilations", kernel.Select(_ => 1L).ToArray()), ("group", 1L));

    public string MaxPool(string x, long kernel, long stride, long padding) =>
        Node("MaxPool", [x], ("kernel_shape", new[] { kernel, kernel }), ("strides", new[] { stride, stride }),
            ("pads", new[] { padding, padding, padding, padding }));

    /// <summary>x W^T + b on the last axis, for a PyTorch weight [out, in] (transposed here) and optional bias [out].</summary>
    public string Linear(string x, Tensor weight, Tensor? bias, string hint)
    {
        using var scope = NewDisposeScope();
        string y = MatMul(x, Initializer(hint + ".weight_t", weight.detach().t()));
        return bias is null ? y : Add(y, Initializer(hint + ".bias", bias));
    }

    /// <summary>LayerNorm over the last axis (LayerNormalization, opset 17).</summary>
    public string LayerNorm(string x, Tensor weight, Tensor bias, double eps, string hint) =>
        Node("LayerNormalization", [x, Initializer(hint + ".weight", weight), Initializer(hint + ".bias", bias)],
            ("axis", -1L), ("epsilon", (float)eps));

    /// <summary>Exact (erf) GELU: 0.5 x (1 + erf(x / sqrt 2)); the Gelu operator needs opset 20.</summary>
    public string Gelu(string x)
    {
        string erf = Node("Erf", [Mul(x, Scalar((float)(1 / Math.Sqrt(2))))]);
        return Mul(Mul(x, Add(erf, Scalar(1f))), Scalar(0.5f));
    }

    /// <summary>OpenAI CLIP's QuickGELU: x * sigmoid(1.702 x).</summary>
    public string QuickGelu(string x) => Mul(x, Sigmoid(Mul(x, Scalar(1.702f))));

    /// <summary>
    /// Bilinear resize of an NCHW map to <paramref name="height"/> x <paramref name="width"/> with half-pixel centres
    /// (PyTorch's <c>interpolate(mode: bilinear, align_corners: false)</c>, no antialiasing). The batch stays dynamic.
    /// </summary>
    public string ResizeBilinear(string x, long height, long width)
    {
        string sizes = Concat(0, Slice(Shape(x), 0, 0, 2), Ints(height, width));
        return Node("Resize", [x, "", "", sizes], ("mode", "linear"), ("coordinate_transformation_mode", "half_pixel"));
    }

    /// <summary>[N, C, H, W] to [N, H, W, C].</summary>
    public string ToChannelsLast(string x) => Transpose(x, 0, 2, 3, 1);

    /// <summary>[N, H, W, C] to [N, C, H, W].</summary>
    public string ToChannelsFirst(string x) => Transpose(x, 0, 3, 1, 2);

    /// <summary>
    /// PyTorch's <c>roll</c> of <paramref name="shift"/> along <paramref name="axis"/> of extent <paramref name="size"/>
    /// (ONNX has no Roll): the last <c>shift</c> elements moved to the front.
    /// </summary>
    public string Roll(string x, long shift, long axis, long size)
    {
        shift = ((shift % size) + size) % size;
        if (shift == 0) return x;
        return Concat(axis, Slice(x, axis, size - shift, size), Slice(x, axis, 0, size - shift));
    }

    /// <summary>The largest quantized weight magnitude (7 bits; see <see cref="QuantizeLinearWeights"/>).</summary>
    public const int Int8WeightLevels = 63;

    /// <summary>
    /// Rewrites every MatMul by a constant 2-D weight (the linear layers: <see cref="Linear"/>) as ONNX Runtime's dynamic
    /// quantization does (<c>quantize_dynamic</c>, weight type QInt8, per channel, <c>reduce_range</c>): the weight becomes
    /// int8, symmetric per output column with 7-bit range (scale max |w| / 63, zero point 0); the activation is quantized to uint8 per tensor at run time
    /// (DynamicQuantizeLinear); MatMulInteger multiplies, and Cast and Mul by the activation's scale times the column
    /// scales restore float32. This is the node pattern ONNX Runtime fuses into its int8 kernel (MatMulIntegerToFloat,
    /// DynamicQuantizeMatMul). MatMuls of two activations (attention's scores and values) and convolutions stay float32.
    /// Returns how many layers were quantized.
    /// </summary>
    /// <remarks>
    /// Why 7 bits: without VNNI, ONNX Runtime's x86 kernel adds pairs of uint8 x int8 products in int16 (vpmaddubsw),
    /// which saturates once a pair exceeds 32,767 (255 x 127 x 2 does). Measured on an AMD EPYC without VNNI, full-range
    /// weights made the tiny models' error 5-10x larger than 7-bit ones (OnnxInt8Tests). The file does not know the CPU
    /// it will run on, so it uses the range that is exact everywhere (255 x 63 x 2 fits), as ONNX Runtime advises.
    /// </remarks>
    public int QuantizeLinearWeights()
    {
        var weights = _initializers.Where(i => i.DataType == OnnxFields.DataType.Float && i.Dims.Length == 2).ToDictionary(i => i.Name);
        var nodes = _nodes.ToList();
        var replaced = new HashSet<string>();
        _nodes.Clear();
        foreach (var node in nodes)
        {
            if (node.OpType != "MatMul" || !weights.TryGetValue(node.Inputs[1], out var weight) || weights.ContainsKey(node.Inputs[0]))
            {
                _nodes.Add(node);
                continue;
            }
            using var scope = NewDisposeScope();
            var w = weight.Tensor;
            // An all-zero column gets a tiny scale instead of 0, so that it quantizes to zeros rather than NaN.
            var scale = Scalars.With(1e-30, tiny => w.abs().amax([0]).Times(1.0 / Int8WeightLevels).clamp_min(tiny));
            string quantized = Initializer(weight.Name + ".int8", w.div(scale).round().ClampToInt8(Int8WeightLevels));
            string scales = Initializer(weight.Name + ".scale", scale);
            var activation = Node("DynamicQuantizeLinear", [node.Inputs[0]], [Unique(node.Inputs[0] + ".uint8"), Unique("scale"), Unique("zero_point")]);
            string product = Node("MatMulInteger", [activation[0], quantized, activation[2]]);
            Node("Mul", [Cast(product, OnnxFields.DataType.Float), Mul(activation[1], scales)], [node.Outputs[0]]);
            replaced.Add(weight.Name);
        }
        // Float weights that no node reads any more are dropped (a weight shared with another node is kept).
        var read = _nodes.SelectMany(n => n.Inputs).ToHashSet();
        foreach (var dropped in _initializers.Where(i => replaced.Contains(i.Name) && !read.Contains(i.Name)).ToList())
        {
            dropped.Tensor.Dispose();
            _initializers.Remove(dropped);
        }
        return replaced.Count;
    }

    /// <summary>Frees the initializer tensors.</summary>
    public void Dispose()
    {
        foreach (var initializer in _initializers) initializer.Tensor?.Dispose();
        _initializers.Clear();
    }
}
