using Microsoft.ML.RepAdapter.Formats;
using Microsoft.ML.RepAdapter.Torch;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Backbones;

// The ResNet family's ONNX emitter (the Backbone export contract): every BatchNorm folded into the conv before it. The
// stem's 7x7 conv is zero-padded, so only the input scale folds into it; the per-channel mean (and ML.NET's per-pixel
// input_offset) is one Add in front of it (see OnnxExport.NormalizedConv).
public sealed partial class ResNet
{
    internal override string EmitFeatures(OnnxGraphBuilder graph, string pixels) =>
        graph.Flatten(graph.Node("GlobalAveragePool", [EmitStages(graph, pixels)[^1]]));

    internal override IReadOnlyList<string> EmitIntermediates(OnnxGraphBuilder graph, string pixels) => EmitStages(graph, pixels);

    private List<string> EmitStages(OnnxGraphBuilder graph, string pixels)
    {
        using var scope = NewDisposeScope();
        (Tensor weight, Tensor? bias) = bn1 is BatchNorm2d bn ? BatchNormFolding.Fold(conv1.weight, conv1.bias, bn) : (conv1.weight, conv1.bias);
        string x = OnnxExport.NormalizedConv(graph, pixels, Input, weight, bias, kernel: 7, stride: 2, padding: 3, "conv1", input_offset);
        x = graph.MaxPool(graph.Relu(x), kernel: 3, stride: 2, padding: 1);
        var maps = new List<string>();
        foreach (var (stageName, stage) in Stages())
        {
            foreach (var (blockName, block) in stage.named_children())
                x = ((ResidualBlock)block).Emit(graph, x, $"{stageName}.{blockName}");
            maps.Add(x);
        }
        return maps;
    }

    internal abstract partial class ResidualBlock
    {
        /// <summary>Emits the block (BatchNorm folded) on <paramref name="x"/>; <paramref name="name"/> prefixes its initializers.</summary>
        public abstract string Emit(OnnxGraphBuilder graph, string x, string name);

        /// <summary>The shortcut: the input itself, or the downsample's 1x1 conv with its BatchNorm folded.</summary>
        protected string EmitShortcut(OnnxGraphBuilder graph, string x, Sequential? downsample, string name)
        {
            if (downsample is null) return x;
            var layers = downsample.named_children().ToDictionary(c => c.name, c => c.module);
            var conv = (Conv2d)layers["0"];
            return OnnxExport.ConvNorm(graph, x, conv.weight, conv.bias, layers["1"], Stride, 0, name + ".downsample.0");
        }
    }

    internal sealed partial class BasicBlock
    {
        public override string Emit(OnnxGraphBuilder graph, string x, string name)
        {
            string y = graph.Relu(OnnxExport.ConvNorm(graph, x, conv1.weight, conv1.bias, bn1, Stride, 1, name + ".conv1"));
            y = OnnxExport.ConvNorm(graph, y, conv2.weight, conv2.bias, bn2, 1, 1, name + ".conv2");
            return graph.Relu(graph.Add(y, EmitShortcut(graph, x, downsample, name)));
        }
    }

    internal sealed partial class Bottleneck
    {
        public override string Emit(OnnxGraphBuilder graph, string x, string name)
        {
            string y = graph.Relu(OnnxExport.ConvNorm(graph, x, conv1.weight, conv1.bias, bn1, 1, 0, name + ".conv1"));
            y = graph.Relu(OnnxExport.ConvNorm(graph, y, conv2.weight, conv2.bias, bn2, Stride, 1, name + ".conv2"));
            y = OnnxExport.ConvNorm(graph, y, conv3.weight, conv3.bias, bn3, 1, 0, name + ".conv3");
            return graph.Relu(graph.Add(y, EmitShortcut(graph, x, downsample, name)));
        }
    }
}
