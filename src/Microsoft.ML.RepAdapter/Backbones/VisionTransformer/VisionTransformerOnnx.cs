using Microsoft.ML.RepAdapter.Formats;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Backbones;

// The Vision Transformer family's ONNX emitter (the Backbone export contract), which CLIP's image encoders use too (they
// are VisionTransformers: pre-norm, QuickGELU, image projection). The patch embedding is an unpadded conv, so the input
// normalisation folds into it exactly.
public sealed partial class VisionTransformer
{
    internal override string EmitFeatures(OnnxGraphBuilder graph, string pixels)
    {
        var p = OnnxExport.Parameters(this);
        string x = EmitEmbedding(graph, pixels, p);
        for (int i = 0; i < blocks.Count; i++) x = EmitBlock(graph, x, p, i);
        string normed = Norm(graph, x, p, "norm");
        // A distilled model pools the class and distillation tokens side by side.
        string cls = dist_token is null ? graph.Select(normed, axis: 1, index: 0)
            : graph.Reshape(graph.Slice(normed, axis: 1, start: 0, end: 2), 0, Config.PooledDim);
        if (pre_logits is not null) cls = graph.Tanh(graph.Linear(cls, p["pre_logits.fc.weight"], p["pre_logits.fc.bias"], "pre_logits.fc"));
        if (proj is not null) cls = graph.Linear(cls, p["proj.weight"], null, "proj");
        return cls;
    }

    internal override IReadOnlyList<string> EmitIntermediates(OnnxGraphBuilder graph, string pixels)
    {
        var p = OnnxExport.Parameters(this);
        var wanted = IntermediateBlocks.ToHashSet();
        var maps = new List<string>();
        string x = EmitEmbedding(graph, pixels, p);
        for (int i = 0; i < blocks.Count && maps.Count < wanted.Count; i++)
        {
            x = EmitBlock(graph, x, p, i);
            if (!wanted.Contains(i)) continue;
            // Patch tokens [B, prefix + g*g, D] (prefix tokens dropped) as a [B, D, g, g] map.
            string tokens = graph.Slice(Norm(graph, x, p, "norm"), axis: 1, start: Config.PrefixTokens, end: Config.Tokens);
            maps.Add(graph.Reshape(graph.Transpose(tokens, 0, 2, 1), 0, Config.EmbedDim, Config.GridSize, Config.GridSize));
        }
        return maps;
    }

    private string Norm(OnnxGraphBuilder graph, string x, Dictionary<string, Tensor> p, string name) =>
        OnnxExport.LayerNorm(graph, x, p, name, Config.LayerNormEps);

    private string EmitEmbedding(OnnxGraphBuilder graph, string pixels, Dictionary<string, Tensor> p)
    {
        int d = Config.EmbedDim;
        string x = OnnxExport.NormalizedConv(graph, pixels, Input, p["patch_embed.proj.weight"], p.GetValueOrDefault("patch_embed.proj.bias"),
            Config.PatchSize, Config.PatchSize, 0, "patch_embed.proj");
        x = graph.Transpose(graph.Reshape(x, 0, d, Config.NumPatches), 0, 2, 1);
        string batch = graph.Slice(graph.Shape(x), 0, 0, 1);
        string Token(string name, long count) => graph.Expand(graph.Initializer(name, p[name]), graph.Concat(0, batch, graph.Ints(count, d)));
        var prefix = new List<string> { Token("cls_token", 1) };
        if (dist_token is not null) prefix.Add(Token("dist_token", 1));
        if (reg_token is not null) prefix.Add(Token("reg_token", Config.RegisterTokens));
        string pos = graph.Initializer("pos_embed", p["pos_embed"]);
        // As Embed: without position embeddings for the prefix (no_embed_class), the patches get theirs first.
        x = Config.NoEmbedClass ? graph.Concat(1, [.. prefix, graph.Add(x, pos)]) : graph.Add(graph.Concat(1, [.. prefix, x]), pos);
        return norm_pre is null ? x : Norm(graph, x, p, "norm_pre");
    }

    private string EmitBlock(OnnxGraphBuilder graph, string x, Dictionary<string, Tensor> p, int i) => blocks[i].Emit(graph, x, p, $"blocks.{i}", Config.Tokens);
}
