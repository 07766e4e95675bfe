using Microsoft.ML.RepAdapter.Formats;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Backbones;

// The Swin family's ONNX emitter (the Backbone export contract). The patch embedding is an unpadded conv: the input
// normalisation folds into it exactly. The relative position bias is gathered from its table at export time (a
// constant per block), the cyclic shift is two Slice + Concat per axis (ONNX has no Roll), and the shift's attention
// mask is a constant.
public sealed partial class SwinTransformer
{
    internal override string EmitFeatures(OnnxGraphBuilder graph, string pixels)
    {
        string x = EmitStages(graph, pixels)[^1];
        return graph.ReduceMean(OnnxExport.LayerNorm(graph, x, norm, "norm"), [1, 2], keepDims: false);
    }

    internal override IReadOnlyList<string> EmitIntermediates(OnnxGraphBuilder graph, string pixels) =>
        [.. EmitStages(graph, pixels).Select(graph.ToChannelsFirst)];

    /// <summary>The stages' outputs, NHWC.</summary>
    private List<string> EmitStages(OnnxGraphBuilder graph, string pixels)
    {
        var p = OnnxExport.Parameters(this);
        var modules = named_modules().ToDictionary(m => m.name, m => m.module);
        string x = OnnxExport.NormalizedConv(graph, pixels, Input, p["patch_embed.proj.weight"], p["patch_embed.proj.bias"],
            Config.PatchSize, Config.PatchSize, 0, "patch_embed.proj");
        x = OnnxExport.LayerNorm(graph, graph.ToChannelsLast(x), (LayerNorm)modules["patch_embed.norm"], "patch_embed.norm");
        var outputs = new List<string>();
        for (int s = 0; s < layers.Count; s++)
        {
            if (layers[s].Downsample is not null)
            {
                // timm's PatchMerging: 2x2 neighbourhoods concatenated in (row offset, column offset) order, LayerNorm, reduction.
                long h = Config.Resolution(s), c = Config.Dim(s - 1);
                x = graph.Reshape(graph.Transpose(graph.Reshape(x, -1, h, 2, h, 2, c), 0, 1, 3, 4, 2, 5), -1, h, h, 4 * c);
                x = OnnxExport.LayerNorm(graph, x, (LayerNorm)modules[$"layers.{s}.downsample.norm"], $"layers.{s}.downsample.norm");
                x = graph.Linear(x, p[$"layers.{s}.downsample.reduction.weight"], null, $"layers.{s}.downsample.reduction");
            }
            for (int b = 0; b < layers[s].Blocks.Count; b++)
                x = layers[s].Blocks[b].Emit(graph, x, $"layers.{s}.blocks.{b}", Config.Resolution(s));
            outputs.Add(x);
        }
        return outputs;
    }

    internal sealed partial class Block
    {
        /// <summary>The block on NHWC tokens of a <paramref name="resolution"/>-sided map.</summary>
        public string Emit(OnnxGraphBuilder graph, string x, string name, long resolution)
        {
            long c = norm1.weight!.shape[0], w = _window, r = resolution;
            string y = OnnxExport.LayerNorm(graph, x, norm1, name + ".norm1");
            if (_shift > 0) y = graph.Roll(graph.Roll(y, -_shift, 1, r), -_shift, 2, r);
            // Window partition: [B, H, W, C] -> [B * nW, w * w, C].
            string windows = graph.Reshape(graph.Transpose(graph.Reshape(y, -1, r / w, w, r / w, w, c), 0, 1, 3, 2, 4, 5), -1, w * w, c);
            y = attn.Emit(graph, windows, _mask?.On(CPU), name + ".attn");
            y = graph.Reshape(graph.Transpose(graph.Reshape(y, -1, r / w, r / w, w, w, c), 0, 1, 3, 2, 4, 5), -1, r, r, c);
            if (_shift > 0) y = graph.Roll(graph.Roll(y, _shift, 1, r), _shift, 2, r);
            x = graph.Add(x, y);
            return graph.Add(x, OnnxExport.Mlp(graph, OnnxExport.LayerNorm(graph, x, norm2, name + ".norm2"), mlp, name + ".mlp"));
        }
    }

    internal sealed partial class WindowAttention
    {
        /// <summary>Attention within windows [B * nW, N, C]; <paramref name="mask"/> [nW, N, N] for shifted windows.</summary>
        public string Emit(OnnxGraphBuilder graph, string x, Tensor? mask, string name)
        {
            using var scope = NewDisposeScope();
            long n = _window * _window, c = qkv.weight.shape[1], heads = _heads;
            string h = graph.Linear(x, qkv.weight, qkv.bias, name + ".qkv");
            string parts = graph.Transpose(graph.Reshape(h, -1, n, 3, heads, c / heads), 2, 0, 3, 1, 4);
            string q = graph.Mul(graph.Select(parts, 0, 0), graph.Scalar((float)Math.Pow(c / heads, -0.5)));
            string attention = graph.MatMul(q, graph.Transpose(graph.Select(parts, 0, 1), 0, 1, 3, 2));
            var bias = relative_position_bias_table.detach().index_select(0, _relativePositionIndex.On(CPU)).view(n, n, heads).permute(2, 0, 1).unsqueeze(0);
            attention = graph.Add(attention, graph.Initializer(name + ".relative_position_bias", bias));
            if (mask is not null)
            {
                long windows = mask.shape[0];
                attention = graph.Add(graph.Reshape(attention, -1, windows, heads, n, n), graph.Initializer(name + ".shift_mask", mask.unsqueeze(1).unsqueeze(0)));
                attention = graph.Reshape(attention, -1, heads, n, n);
            }
            string attended = graph.MatMul(graph.Softmax(attention), graph.Select(parts, 0, 2));
            attended = graph.Reshape(graph.Transpose(attended, 0, 2, 1, 3), -1, n, c);
            var projection = OnnxExport.Parameters(proj);
            return graph.Linear(attended, projection["weight"], projection["bias"], name + ".proj");
        }
    }
}
