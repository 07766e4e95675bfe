using Microsoft.ML.RepAdapter.Formats;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Backbones;

/// <summary>
/// Maps an ONNX ResNet with BasicBlocks (ML.NET's DnnImageFeaturizer ResNet-18, a CNTK export) onto torchvision names
/// by walking the graph: stem conv -> BN -> ReLU -> max-pool, then residual blocks (conv -> BN -> ReLU -> conv -> BN,
/// + shortcut, ReLU) up to the final average pool. The stage layout and widths come from the graph. Each node's
/// attributes are checked against what <see cref="Backbones.ResNet"/> computes; anything else is refused by name.
/// </summary>
internal static class OnnxResNetImport
{
    public sealed record Result(OrderedDictionary<string, Tensor> Weights, int[] Layers, int[] Widths, int ImageSize);

    // torchvision's BatchNorm2d epsilon; CNTK stores it as the float 1e-5.
    private const double BatchNormEpsilon = 1e-5;

    public static Result Convert(TensorCheckpoint checkpoint)
    {
        var graph = checkpoint.Graph ?? throw new CheckpointException(checkpoint.Path, null, "expected an ONNX model.");
        var walker = new GraphWalker(checkpoint);
        var weights = new OrderedDictionary<string, Tensor>();

        var input = walker.SoleGraphInput();
        if (input.Shape.Count != 4 || input.Shape[1] != 3 || input.Shape[2] is not long height || input.Shape[3] != height)
            throw walker.Error(input.Name, $"graph input shape: expected [N, 3, S, S], found [{string.Join(", ", input.Shape.Select(d => d?.ToString() ?? "?"))}].");
        int imageSize = (int)height;
        // CNTK pads one less at the end of stride-2 windows; that row/column is never read when every strided layer
        // sees an even extent, i.e. when the image size is a multiple of 32. Then the graph is exactly torchvision's.
        if (imageSize % 32 != 0) throw walker.Error(input.Name, $"image size: expected a multiple of 32 (even extents at every stride-2 layer), found {imageSize}.");

        var stem = walker.Sole(input.Name, "Conv");
        walker.Conv(stem, weights, "conv1", kernel: 7, stride: 2);
        var x = walker.BatchNorm(walker.Sole(stem.Outputs[0], "BatchNormalization"), weights, "bn1");
        x = walker.Sole(x, "Relu").Outputs[0];
        var pool = walker.Sole(x, "MaxPool");
        walker.ExpectWindow(pool, kernel: 3, stride: 2);
        x = pool.Outputs[0];

        var layers = new List<int>();
        var widths = new List<int>();
        while (true)
        {
            var consumers = walker.Consumers(x);
            if (consumers.Count == 1 && consumers[0].OpType is "AveragePool" or "GlobalAveragePool")
            {
                CheckFinalPool(walker, consumers[0], graph, imageSize);
                break;
            }
            var convs = consumers.Where(n => n.OpType == "Conv").ToList();
            var main = convs.SingleOrDefault(n => walker.KernelOf(n) == 3)
                ?? throw walker.Error(x, $"expected a residual block (a 3x3 Conv) or the final AveragePool after '{x}', found {string.Join(", ", consumers)}.");
            var shortcut = convs.SingleOrDefault(n => walker.KernelOf(n) == 1);
            if (convs.Count != (shortcut is null ? 1 : 2))
                throw walker.Error(x, $"expected a 3x3 Conv and at most one 1x1 downsample Conv after '{x}', found {string.Join(", ", convs)}.");
            // A stage starts with the first block and with every strided (downsampling) block.
            if (layers.Count == 0 || shortcut is not null && walker.StrideOf(shortcut) == 2)
            {
                layers.Add(0);
                widths.Add(main.Inputs.Count > 1 && checkpoint.Tensors.TryGetValue(main.Inputs[1], out var w) ? (int)w.shape[0] : 0);
            }
            string block = $"layer{layers.Count}.{layers[^1]}";
            int stride = shortcut is null ? 1 : (int)walker.StrideOf(shortcut);
            x = Block(walker, weights, block, x, main, shortcut, stride);
            layers[^1]++;
        }
        walker.ThrowIfAnyInitializerUnused();
        if (layers.Count != 4) throw walker.Error(graph.Name, $"stages: expected the four stages of a ResNet, found {layers.Count}.");
        return new Result(weights, [.. layers], [.. widths], imageSize);
    }

    private static string Block(GraphWalker walker, OrderedDictionary<string, Tensor> weights, string block, string x, OnnxNode conv1, OnnxNode? downsample, int stride)
    {
        walker.Conv(conv1, weights, $"{block}.conv1", kernel: 3, stride: stride);
        string y = walker.BatchNorm(walker.Sole(conv1.Outputs[0], "BatchNormalization"), weights, $"{block}.bn1");
        y = walker.Sole(y, "Relu").Outputs[0];
        var conv2 = walker.Sole(y, "Conv");
        walker.Conv(conv2, weights, $"{block}.conv2", kernel: 3, stride: 1);
        y = walker.BatchNorm(walker.Sole(conv2.Outputs[0], "BatchNormalization"), weights, $"{block}.bn2");
        var add = walker.Sole(y, "Add");
        string expectedShortcut = x;
        if (downsample is not null)
        {
            walker.Conv(downsample, weights, $"{block}.downsample.0", kernel: 1, stride: stride);
            expectedShortcut = walker.BatchNorm(walker.Sole(downsample.Outputs[0], "BatchNormalization"), weights, $"{block}.downsample.1");
        }
        string other = add.Inputs[0] == y ? add.Inputs[1] : add.Inputs[0];
        if (add.Inputs.Count != 2 || other != expectedShortcut)
            throw walker.Error(add.Name, $"shortcut of {block}: expected '{expectedShortcut}', found [{string.Join(", ", add.Inputs)}].");
        return walker.Sole(add.Outputs[0], "Relu").Outputs[0];
    }

    private static void CheckFinalPool(GraphWalker walker, OnnxNode pool, OnnxGraph graph, int imageSize)
    {
        // ResNet's global average pool: a 7x7 average at 224 (stride 32 overall) covers the whole map.
        if (pool.OpType == "AveragePool")
        {
            long side = imageSize / 32;
            if (!pool.Ints("kernel_shape").SequenceEqual([side, side]) || pool.Ints("pads").Any(p => p != 0))
                throw walker.Error(pool.Name, $"final pooling: expected a {side}x{side} unpadded AveragePool (global), found kernel [{string.Join(", ", pool.Ints("kernel_shape"))}].");
        }
        if (graph.Outputs.Count != 1 || graph.Outputs[0].Name != pool.Outputs[0] || walker.Consumers(pool.Outputs[0]).Count > 0)
            throw walker.Error(pool.Name, $"expected the pooled features to be the graph's only output, found outputs [{string.Join(", ", graph.Outputs.Select(o => o.Name))}].");
    }

    /// <summary>Reads nodes by the values they consume, checks attributes, and records which initializers were used.</summary>
    private sealed class GraphWalker
    {
        private readonly TensorCheckpoint _checkpoint;
        private readonly ILookup<string, OnnxNode> _consumers;
        private readonly HashSet<string> _used = [];

        public GraphWalker(TensorCheckpoint checkpoint)
        {
            _checkpoint = checkpoint;
            _consumers = checkpoint.Graph!.Nodes.SelectMany(n => n.Inputs.Select(i => (Input: i, Node: n))).ToLookup(p => p.Input, p => p.Node);
        }

        public CheckpointException Error(string key, string message) => new(_checkpoint.Path, key, message);

        public OnnxValueInfo SoleGraphInput()
        {
            // IR version 3 lists initializers among the graph inputs too.
            var inputs = _checkpoint.Graph!.Inputs.Where(i => !_checkpoint.Tensors.ContainsKey(i.Name)).ToList();
            if (inputs.Count != 1) throw Error(_checkpoint.Graph.Name, $"graph inputs: expected one image input, found [{string.Join(", ", inputs.Select(i => i.Name))}].");
            return inputs[0];
        }

        public IReadOnlyList<OnnxNode> Consumers(string value) => _consumers[value].ToList();

        public OnnxNode Sole(string value, string opType)
        {
            var consumers = Consumers(value);
            if (consumers.Count != 1 || consumers[0].OpType != opType)
                throw Error(value, $"expected one {opType} node reading this value, found [{string.Join(", ", consumers)}].");
            return consumers[0];
        }

        public long KernelOf(OnnxNode conv) => conv.Ints("kernel_shape") is [var h, var w] && h == w ? h : -1;

        public long StrideOf(OnnxNode node) => node.Ints("strides") is [var h, var w] && h == w ? h : -1;

        public void Conv(OnnxNode conv, OrderedDictionary<string, Tensor> weights, string name, int kernel, int stride)
        {
            if (conv.Inputs.Count != 2) throw Error(conv.Name, $"{name}: expected a Conv without bias (2 inputs), found {conv.Inputs.Count} inputs.");
            if ((conv.Int("group") ?? 1) != 1 || conv.Ints("dilations").Any(d => d != 1))
                throw Error(conv.Name, $"{name}: expected group 1 and dilation 1, found group {conv.Int("group")} and dilations [{string.Join(", ", conv.Ints("dilations"))}].");
            ExpectWindow(conv, kernel, stride);
            var weight = Initializer(conv.Inputs[1], name + ".weight");
            if (weight.dim() != 4 || weight.shape[2] != kernel || weight.shape[3] != kernel)
                throw Error(conv.Inputs[1], $"{name}.weight: expected [out, in, {kernel}, {kernel}], found {Describe.ShapeOf(weight)}.");
            weights.Add(name + ".weight", weight);
        }

        /// <summary>
        /// Kernel, stride and padding as torchvision's: begin padding kernel/2; end padding kernel/2, or one less for
        /// stride 2 (CNTK's "same" padding), which reads the same pixels when the extent is even.
        /// </summary>
        public void ExpectWindow(OnnxNode node, int kernel, int stride)
        {
            long half = kernel / 2;
            var pads = node.Ints("pads") is { Count: 4 } p ? p : [0, 0, 0, 0];
            bool padsOk = pads[0] == half && pads[1] == half
                && pads.Skip(2).All(end => end == half || (stride == 2 && end == half - 1 && end >= 0));
            string autoPad = node.Attributes.TryGetValue("auto_pad", out var a) ? a.String ?? "NOTSET" : "NOTSET";
            if (KernelOf(node) != kernel || StrideOf(node) != stride || !padsOk || autoPad != "NOTSET")
                throw Error(node.Name, $"{node.OpType} window: expected kernel {kernel}, stride {stride}, pads [{half}, {half}, {half} or {half - 1}, ...], found kernel [{string.Join(", ", node.Ints("kernel_shape"))}], "
                    + $"strides [{string.Join(", ", node.Ints("strides"))}], pads [{string.Join(", ", pads)}], auto_pad {autoPad}.");
        }

        /// <summary>Maps BatchNormalization(X, scale, B, mean, var) onto weight / bias / running_mean / running_var.</summary>
        public string BatchNorm(OnnxNode node, OrderedDictionary<string, Tensor> weights, string name)
        {
            double epsilon = node.Float("epsilon") ?? 1e-5;
            if (Math.Abs(epsilon - BatchNormEpsilon) > 1e-9)
                throw Error(node.Name, $"{name}: BatchNorm epsilon: expected {BatchNormEpsilon} (torchvision), found {epsilon}.");
            if (node.Inputs.Count != 5 || node.Outputs.Count < 1)
                throw Error(node.Name, $"{name}: expected BatchNormalization(X, scale, B, mean, var), found {node.Inputs.Count} inputs.");
            string[] fields = ["weight", "bias", "running_mean", "running_var"];
            for (int i = 0; i < 4; i++) weights.Add($"{name}.{fields[i]}", Initializer(node.Inputs[i + 1], $"{name}.{fields[i]}"));
            return node.Outputs[0];
        }

        private Tensor Initializer(string value, string target)
        {
            if (!_checkpoint.Tensors.TryGetValue(value, out var tensor))
                throw Error(value, $"{target}: expected a constant initializer, found a computed value.");
            if (!_used.Add(value)) throw Error(value, $"{target}: this initializer is shared with another layer; expected one per layer.");
            return tensor;
        }

        public void ThrowIfAnyInitializerUnused()
        {
            var unused = _checkpoint.Tensors.Keys.Where(k => !_used.Contains(k)).ToList();
            if (unused.Count > 0) throw Error(unused[0], $"initializers not used by the ResNet mapping: {Describe.Keys(unused)}.");
        }
    }

    /// <summary>
    /// The preprocessing graph of ML.NET's ResNet-18 (ResNetPreprocess.onnx): Split(RGB planes) -> Concat(B, G, R) ->
    /// Sub(MeanImage). Returns the mean image [1, 3, S, S] in the network's BGR channel order, checking that structure.
    /// </summary>
    public static Tensor ReadMeanImage(TensorCheckpoint preprocess, int imageSize)
    {
        var graph = preprocess.Graph ?? throw new CheckpointException(preprocess.Path, null, "expected an ONNX model.");
        CheckpointException Error(string key, string message) => new(preprocess.Path, key, message);
        var ops = graph.Nodes.Select(n => n.OpType).ToList();
        if (!ops.SequenceEqual(["Split", "Concat", "Sub"]))
            throw Error(graph.Name, $"preprocessing graph: expected nodes Split, Concat, Sub, found {string.Join(", ", ops)}.");
        var (split, concat, sub) = (graph.Nodes[0], graph.Nodes[1], graph.Nodes[2]);
        if (split.Int("axis") != 1 || split.Outputs.Count != 3 || concat.Int("axis") != 1
            || !concat.Inputs.SequenceEqual(split.Outputs.Reverse()) || sub.Inputs.Count != 2 || sub.Inputs[0] != concat.Outputs[0])
            throw Error(graph.Name, "preprocessing graph: expected Split(axis 1) into R, G, B planes, Concat(B, G, R) on axis 1, then Sub(concatenated, mean).");
        var mean = preprocess[sub.Inputs[1]];
        if (!mean.shape.SequenceEqual([1L, 3, imageSize, imageSize]) || mean.dtype != ScalarType.Float32)
            throw Error(sub.Inputs[1], $"mean image: expected float32 [1, 3, {imageSize}, {imageSize}], found {mean.dtype} {Describe.ShapeOf(mean)}.");
        return mean;
    }
}
