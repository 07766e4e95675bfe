using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Formats;
using Microsoft.ML.RepAdapter.Torch;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Backbones;

/// <summary>
/// A <see cref="PreNormBlock"/>'s shape: width, heads, MLP hidden width and activation, qkv bias, norm epsilon and
/// LayerScale (null: none).
/// </summary>
public sealed record PreNormBlockConfig(int EmbedDim, int NumHeads, int MlpHidden, bool QkvBias, double LayerNormEps, MlpActivation Activation,
    double? LayerScaleInit = null);

/// <summary>Multi-head self-attention with a fused qkv projection.</summary>
public sealed class SelfAttention : nn.Module<Tensor, Tensor>
{
    private readonly AdaptableLinear qkv;
    private readonly Linear proj;
    private readonly int _heads;

    /// <summary>Attention over <paramref name="dim"/> channels with <paramref name="heads"/> heads (which must divide it); <paramref name="qkvBias"/> gives qkv a bias.</summary>
    public SelfAttention(int dim, int heads, bool qkvBias) : base(nameof(SelfAttention))
    {
        _heads = heads;
        qkv = new AdaptableLinear(dim, dim * 3, qkvBias);
        proj = nn.Linear(dim, dim);
        RegisterComponents();
    }

    /// <summary>The fused query/key/value projection [3 D, D]: an adapter site.</summary>
    public AdaptableLinear Qkv => qkv;

    /// <summary>Scaled dot-product self-attention over tokens [B, N, D], then the output projection; returns [B, N, D].</summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        long b = x.shape[0], n = x.shape[1], c = x.shape[2];
        Tensor[] qkvParts = qkv.forward(x).reshape(b, n, 3, _heads, c / _heads).permute(2, 0, 3, 1, 4).unbind(0);
        Tensor attended = nn.functional.scaled_dot_product_attention(qkvParts[0], qkvParts[1], qkvParts[2]);
        return proj.forward(attended.transpose(1, 2).reshape(b, n, c)).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// The pre-norm transformer block of the ViT-like families (timm's <c>Block</c>: the image ViT, CLIP's image tower,
/// VideoMAE's video ViT): x + attn(norm1 x), then x + mlp(norm2 x), each behind drop path and, when configured,
/// LayerScale. Attention qkv and MLP fc1 are the RepAdapter sites.
/// </summary>
public sealed class PreNormBlock : nn.Module<Tensor, Tensor>
{
    private readonly LayerNorm norm1;
    private readonly SelfAttention attn;
    private readonly DropPath drop_path1;
    private readonly LayerNorm norm2;
    private readonly Mlp mlp;
    private readonly DropPath drop_path2;
    private readonly LayerScale? ls1, ls2;
    private readonly PreNormBlockConfig _config;

    /// <summary>A block of <paramref name="config"/>'s shape, with drop-path rate <paramref name="dropPath"/>.</summary>
    public PreNormBlock(PreNormBlockConfig config, double dropPath) : base(nameof(PreNormBlock))
    {
        _config = config;
        norm1 = nn.LayerNorm(config.EmbedDim, config.LayerNormEps);
        attn = new SelfAttention(config.EmbedDim, config.NumHeads, config.QkvBias);
        drop_path1 = new DropPath(dropPath);
        norm2 = nn.LayerNorm(config.EmbedDim, config.LayerNormEps);
        mlp = new Mlp(config.EmbedDim, config.MlpHidden, config.Activation);
        drop_path2 = new DropPath(dropPath);
        if (config.LayerScaleInit is double init) (ls1, ls2) = (new LayerScale(config.EmbedDim, init), new LayerScale(config.EmbedDim, init));
        RegisterComponents();
    }

    /// <summary>The block's self-attention (<c>attn</c>).</summary>
    public SelfAttention Attn => attn;

    /// <summary>The block's MLP (<c>mlp</c>), whose <see cref="Mlp.Fc1"/> is an adapter site.</summary>
    public Mlp Mlp => mlp;

    /// <summary>Applies the block to tokens [B, N, D]; returns [B, N, D].</summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        x = x.Plus(drop_path1.forward(Scaled(ls1, attn.forward(norm1.forward(x)))));
        x = x.Plus(drop_path2.forward(Scaled(ls2, mlp.forward(norm2.forward(x)))));
        return x.MoveToOuterDisposeScope();
    }

    private static Tensor Scaled(LayerScale? scale, Tensor branch) => scale?.forward(branch) ?? branch;

    /// <summary>Emits the block (its parameters <paramref name="name"/>.* of <paramref name="p"/>) over <paramref name="tokens"/> tokens.</summary>
    internal string Emit(OnnxGraphBuilder graph, string x, Dictionary<string, Tensor> p, string name, long tokens)
    {
        long d = _config.EmbedDim, heads = _config.NumHeads;
        string Norm(string value, string norm) => OnnxExport.LayerNorm(graph, value, p, norm, _config.LayerNormEps);
        string h = graph.Linear(Norm(x, name + ".norm1"), p[name + ".attn.qkv.weight"], p.GetValueOrDefault(name + ".attn.qkv.bias"), name + ".attn.qkv");
        string qkv = graph.Transpose(graph.Reshape(h, 0, tokens, 3, heads, d / heads), 2, 0, 3, 1, 4);
        string q = graph.Mul(graph.Select(qkv, 0, 0), graph.Scalar((float)(1 / Math.Sqrt(d / heads))));
        string k = graph.Select(qkv, 0, 1), v = graph.Select(qkv, 0, 2);
        string attention = graph.Softmax(graph.MatMul(q, graph.Transpose(k, 0, 1, 3, 2)));
        string attended = graph.Reshape(graph.Transpose(graph.MatMul(attention, v), 0, 2, 1, 3), 0, tokens, d);
        x = graph.Add(x, EmitScaled(graph, p, name + ".ls1", graph.Linear(attended, p[name + ".attn.proj.weight"], p[name + ".attn.proj.bias"], name + ".attn.proj")));
        return graph.Add(x, EmitScaled(graph, p, name + ".ls2", OnnxExport.Mlp(graph, Norm(x, name + ".norm2"), mlp, name + ".mlp")));
    }

    /// <summary>The branch times its LayerScale's gamma, when the block has one.</summary>
    private static string EmitScaled(OnnxGraphBuilder graph, Dictionary<string, Tensor> p, string scale, string branch) =>
        p.TryGetValue(scale + ".gamma", out var gamma) ? graph.Mul(branch, graph.Initializer(scale + ".gamma", gamma)) : branch;
}
