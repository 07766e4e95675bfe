using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Formats;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Segmentation;

// ONNX export of a segmentation network: the backbone's multi-level features (its family's emitter), then the decode
// head's own nodes (BatchNorm folded into its convolutions), then the bilinear upsampling to the input size.
public sealed partial class SegmentationNetwork
{
    /// <summary>
    /// Writes the merged network as a standard ONNX model (opset 17, dynamic batch): input <c>pixels</c>, float
    /// [batch, 3, S, S], raw pixel values 0..255 in the backbone's channel order (normalisation in the graph); output
    /// <c>logits</c> [batch, NumClasses, S, S]. BatchNorm is folded. Throws <see cref="InvalidOperationException"/> for a
    /// network with unmerged adapters.
    /// </summary>
    /// <param name="stream">Where the model is written.</param>
    public void ExportOnnx(Stream stream) => OnnxExport.Write(OnnxGraph(), stream);

    /// <summary>Writes the network as <see cref="ExportOnnx(Stream)"/> does, with <paramref name="options"/> (e.g. int8 weights).</summary>
    public void ExportOnnx(Stream stream, OnnxExportOptions options) => OnnxExport.Write(OnnxGraph(), stream, options);

    /// <summary>Writes the model as <see cref="ExportOnnx(Stream)"/> does, to a file (large weights as ONNX external data next to it).</summary>
    /// <param name="path">The .onnx file to write.</param>
    /// <param name="options">External data and quantization settings; null for the defaults.</param>
    public void ExportOnnx(string path, OnnxExportOptions? options = null) => OnnxExport.Write(OnnxGraph(), path, options);

    private OnnxGraphBuilder OnnxGraph()
    {
        int size = backbone.Input.ImageSize;
        return OnnxGraph("batch", (graph, logits) => graph.Output(logits, "logits", OnnxFields.DataType.Float, "batch", NumClasses, size, size));
    }

    /// <summary>
    /// The network's graph with <paramref name="batch"/> as the input's first dimension; <paramref name="outputs"/>
    /// declares the outputs from the logits; <paramref name="source"/>: see <see cref="OnnxExport.Build"/>.
    /// </summary>
    internal OnnxGraphBuilder OnnxGraph(OnnxDim batch, Action<OnnxGraphBuilder, string> outputs, (int Width, int Height)? source = null) =>
        OnnxExport.Build($"{backbone.Architecture}_segmentation", this, backbone.Input, batch, EmitLogits, outputs, source);

    /// <summary>Per-pixel logits [batch, K, S, S] from raw pixels: what <see cref="forward"/> computes.</summary>
    internal string EmitLogits(OnnxGraphBuilder graph, string pixels)
    {
        int size = backbone.Input.ImageSize;
        // The levels' sizes at this resolution, as the backbone computes them (one pass over a blank image).
        IReadOnlyList<long[]> shapes;
        using (var scope = NewDisposeScope())
            shapes = [.. backbone.ForwardIntermediates(zeros(1, 3, size, size)).Select(map => map.shape[2..])];
        var levels = backbone.EmitIntermediates(graph, pixels);
        string logits = ((IOnnxDecodeHead)decode_head).Emit(graph, levels, shapes);
        return graph.ResizeBilinear(logits, size, size);
    }
}

/// <summary>A decode head that emits its own ONNX nodes.</summary>
internal interface IOnnxDecodeHead
{
    /// <summary>Logits at the head's resolution from the level maps <paramref name="levels"/> of spatial sizes <paramref name="sizes"/>.</summary>
    string Emit(OnnxGraphBuilder graph, IReadOnlyList<string> levels, IReadOnlyList<long[]> sizes);
}

internal static class DecodeHeadOnnx
{
    /// <summary>mmseg's ConvModule: conv (BatchNorm folded), ReLU.</summary>
    public static string ConvBnRelu(OnnxGraphBuilder graph, string x, Sequential module, string name)
    {
        var layers = module.named_children().ToDictionary(c => c.name, c => c.module);
        var conv = (Conv2d)layers["conv"];
        long kernel = conv.weight.shape[2];
        return graph.Relu(OnnxExport.ConvNorm(graph, x, conv.weight, conv.bias, layers["bn"], 1, kernel / 2, name));
    }

    public static string Classifier(OnnxGraphBuilder graph, string x, Conv2d conv, string name) =>
        graph.Conv(x, graph.Initializer(name + ".weight", conv.weight), graph.Initializer(name + ".bias", conv.bias!), 1);
}

internal sealed partial class NaiveHead : IOnnxDecodeHead
{
    public string Emit(OnnxGraphBuilder graph, IReadOnlyList<string> levels, IReadOnlyList<long[]> sizes) =>
        DecodeHeadOnnx.Classifier(graph, DecodeHeadOnnx.ConvBnRelu(graph, levels[^1], conv, "decode_head.conv"), conv_seg, "decode_head.conv_seg");
}

internal sealed partial class MultiLevelHead : IOnnxDecodeHead
{
    public string Emit(OnnxGraphBuilder graph, IReadOnlyList<string> levels, IReadOnlyList<long[]> sizes)
    {
        var laterals = levels.Select((x, i) => DecodeHeadOnnx.ConvBnRelu(graph, x, lateral_convs[i], $"decode_head.lateral_convs.{i}")).ToArray();
        for (int i = laterals.Length - 2; i >= 0; i--)
            laterals[i] = graph.Add(laterals[i], Resize(graph, laterals[i + 1], sizes[i + 1], sizes[i]));
        var outputs = laterals.Select((x, i) =>
            Resize(graph, DecodeHeadOnnx.ConvBnRelu(graph, x, fpn_convs[i], $"decode_head.fpn_convs.{i}"), sizes[i], sizes[0])).ToArray();
        string fused = DecodeHeadOnnx.ConvBnRelu(graph, graph.Concat(1, outputs), fpn_bottleneck, "decode_head.fpn_bottleneck");
        return DecodeHeadOnnx.Classifier(graph, fused, conv_seg, "decode_head.conv_seg");
    }

    private static string Resize(OnnxGraphBuilder graph, string x, long[] from, long[] to) =>
        from.SequenceEqual(to) ? x : graph.ResizeBilinear(x, to[0], to[1]);
}
