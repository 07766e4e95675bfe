using Microsoft.ML.RepAdapter.Formats;
using Microsoft.ML.RepAdapter.Torch;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Backbones;

// The video ViT's ONNX emitter (the Backbone export contract): raw clips in, [batch, 3, T, S, S]. The tubelet embedding
// is an unpadded 3-D convolution, so the input normalisation folds into it exactly, as the image ViT's does.
public sealed partial class VideoVisionTransformer
{
    internal override string EmitPixelsInput(OnnxGraphBuilder graph, OnnxDim batch)
    {
        var c = Config;
        graph.Metadata["input"] = $"{OnnxExport.PixelsName}: float [batch, 3, {c.Frames}, {c.ImageSize}, {c.ImageSize}], raw pixel values 0..255, "
            + $"channels {Input.Order.ToString().ToUpperInvariant()}, then frames (NCTHW)";
        graph.Metadata["normalization"] = $"(pixel * {Input.PixelScale:R} - mean) / std, mean [{string.Join(", ", Input.Mean)}], std [{string.Join(", ", Input.Std)}], in the graph";
        return graph.Input(OnnxExport.PixelsName, OnnxFields.DataType.Float, batch, 3, c.Frames, c.ImageSize, c.ImageSize);
    }

    internal override string EmitFeatures(OnnxGraphBuilder graph, string pixels)
    {
        var p = OnnxExport.Parameters(this);
        var c = Config;
        string x;
        using (var scope = NewDisposeScope())
        {
            // (pixel * a - mean) / std per channel folded into the convolution: W' = W a / std, b' = b - sum(W mean / std).
            var scale = tensor(Input.Std.Select(s => Input.PixelScale / s).ToArray()).view(1, 3, 1, 1, 1);
            var shift = tensor(Input.Mean.Zip(Input.Std, (m, s) => -m / s).ToArray()).view(1, 3, 1, 1, 1);
            var w = p["patch_embed.proj.weight"].detach().to(float32);
            var b = p["patch_embed.proj.bias"].detach().to(float32).Plus(w.mul(shift).sum([1, 2, 3, 4]));
            x = graph.PatchConv(pixels, graph.Initializer("patch_embed.proj.weight", w.mul(scale)), graph.Initializer("patch_embed.proj.bias", b),
                [c.TubeletSize, c.PatchSize, c.PatchSize]);
        }
        x = graph.Transpose(graph.Reshape(x, 0, c.EmbedDim, c.Tokens), 0, 2, 1);
        using (var table = PositionTable) x = graph.Add(x, graph.Initializer("pos_table", table));
        for (int i = 0; i < blocks.Count; i++) x = blocks[i].Emit(graph, x, p, $"blocks.{i}", c.Tokens);
        return graph.LayerNorm(graph.ReduceMean(x, [1], keepDims: false), p["fc_norm.weight"], p["fc_norm.bias"], c.FcNormEps, "fc_norm");
    }
}
