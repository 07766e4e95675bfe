using Microsoft.ML.RepAdapter.Torch;
using Microsoft.ML.RepAdapter.Adapters;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Backbones;

/// <summary>The MLP's activation: GELU (ViT, Swin, ConvNeXt), or OpenAI CLIP's QuickGELU x * sigmoid(1.702 x).</summary>
public enum MlpActivation
{
    /// <summary>GELU (erf form).</summary>
    Gelu,
    /// <summary>x * sigmoid(1.702 x), as OpenAI's CLIP.</summary>
    QuickGelu,
}

/// <summary>
/// timm's two-layer MLP (fc1, activation, fc2) on the last axis. Its fc1 is an <see cref="AdaptableLinear"/>: the
/// "in front of the MLP" adapter site of every transformer and ConvNeXt block.
/// </summary>
public sealed class Mlp : nn.Module<Tensor, Tensor>
{
    private readonly AdaptableLinear fc1;
    private readonly nn.Module<Tensor, Tensor> act;
    private readonly Linear fc2;

    /// <summary>An MLP <paramref name="dim"/> -> <paramref name="hidden"/> -> <paramref name="dim"/>.</summary>
    public Mlp(int dim, int hidden, MlpActivation activation = MlpActivation.Gelu) : base(nameof(Mlp))
    {
        Activation = activation;
        fc1 = new AdaptableLinear(dim, hidden);
        act = activation == MlpActivation.QuickGelu ? new QuickGelu() : nn.GELU();
        fc2 = nn.Linear(hidden, dim);
        RegisterComponents();
    }

    /// <summary>The first projection, an adapter site.</summary>
    public AdaptableLinear Fc1 => fc1;

    /// <summary>The second projection.</summary>
    internal Linear Fc2 => fc2;

    /// <summary>The activation between fc1 and fc2.</summary>
    internal MlpActivation Activation { get; }

    /// <inheritdoc/>
    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        return fc2.forward(act.forward(fc1.forward(x))).MoveToOuterDisposeScope();
    }

    /// <summary>OpenAI CLIP's activation: x * sigmoid(1.702 x).</summary>
    private sealed class QuickGelu() : nn.Module<Tensor, Tensor>(nameof(QuickGelu))
    {
        public override Tensor forward(Tensor x)
        {
            using var scope = NewDisposeScope();
            return (x * x.Times(1.702).sigmoid()).MoveToOuterDisposeScope();
        }
    }
}
