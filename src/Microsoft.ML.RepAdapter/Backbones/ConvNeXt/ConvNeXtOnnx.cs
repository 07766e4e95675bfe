using Microsoft.ML.RepAdapter.Formats;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Backbones;

// The ConvNeXt family's ONNX emitter (the Backbone export contract). The 4x4 patchify stem is an unpadded conv: the
// input normalisation folds into it exactly. LayerNorm2d is LayerNormalization between two transposes.
public sealed partial class ConvNeXt
{
    internal override string EmitFeatures(OnnxGraphBuilder graph, string pixels)
    {
        var p = OnnxExport.Parameters(this);
        string pooled = graph.ReduceMean(EmitStages(graph, pixels, p)[^1], [2, 3], keepDims: false);
        return OnnxExport.LayerNorm(graph, pooled, p, "head.norm", Config.LayerNormEps);
    }

    internal override IReadOnlyList<string> EmitIntermediates(OnnxGraphBuilder graph, string pixels) =>
        EmitStages(graph, pixels, OnnxExport.Parameters(this));

    /// <summary>The stages' outputs, NCHW.</summary>
    private List<string> EmitStages(OnnxGraphBuilder graph, string pixels, Dictionary<string, Tensor> p)
    {
        string x = OnnxExport.NormalizedConv(graph, pixels, Input, p["stem.0.weight"], p["stem.0.bias"], 4, 4, 0, "stem.0");
        x = EmitLayerNorm2d(graph, x, p, "stem.1");
        var outputs = new List<string>();
        for (int s = 0; s < stages.Count; s++)
        {
            string stage = $"stages.{s}";
            if (stages[s].Downsample is not null)
            {
                x = EmitLayerNorm2d(graph, x, p, stage + ".downsample.0");
                x = OnnxExport.ConvNorm(graph, x, p[stage + ".downsample.1.weight"], p[stage + ".downsample.1.bias"], null, stride: 2, padding: 0,
                    stage + ".downsample.1");
            }
            for (int b = 0; b < stages[s].Blocks.Count; b++)
            {
                string name = $"{stage}.blocks.{b}";
                string y = OnnxExport.ConvNorm(graph, x, p[name + ".conv_dw.weight"], p[name + ".conv_dw.bias"], null, stride: 1, padding: 3,
                    name + ".conv_dw", groups: Config.Dims[s]);
                y = OnnxExport.LayerNorm(graph, graph.ToChannelsLast(y), p, name + ".norm", Config.LayerNormEps);
                y = graph.Mul(OnnxExport.Mlp(graph, y, stages[s].Blocks[b].Mlp, name + ".mlp"), graph.Initializer(name + ".gamma", p[name + ".gamma"]));
                x = graph.Add(x, graph.ToChannelsFirst(y));
            }
            outputs.Add(x);
        }
        return outputs;
    }

    private string EmitLayerNorm2d(OnnxGraphBuilder graph, string x, Dictionary<string, Tensor> p, string name) =>
        graph.ToChannelsFirst(OnnxExport.LayerNorm(graph, graph.ToChannelsLast(x), p, name, Config.LayerNormEps));
}
