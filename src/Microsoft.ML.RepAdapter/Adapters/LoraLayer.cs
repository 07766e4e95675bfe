using Microsoft.ML.RepAdapter.Torch;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Adapters;

/// <summary>
/// LoRA: W z + b + s * B A dropout(z), with A [r, in] (kaiming init) and B [out, r] (zero init), in parallel to a
/// linear layer. Merges as W' = W + s B A. Offered on the same sites as RepAdapter, for comparison.
/// </summary>
public sealed class LoraLayer : ProjectionAdapter
{
    private readonly Linear lora_A;
    private readonly Linear lora_B;
    private readonly Dropout dropout;

    /// <summary>
    /// A rank-<see cref="AdapterConfig.Hidden"/> update for an <paramref name="inFeatures"/> -> <paramref name="outFeatures"/>
    /// linear layer, with <paramref name="config"/>'s scale and dropout; B starts at zero, so the layer is unchanged at first.
    /// Throws when <paramref name="config"/> is invalid.
    /// </summary>
    public LoraLayer(int inFeatures, int outFeatures, AdapterConfig config) : base(nameof(LoraLayer))
    {
        config.Validate(inFeatures, nameof(LoraLayer));
        Scale = config.Scale;
        lora_A = nn.Linear(inFeatures, config.Hidden, hasBias: false);
        lora_B = nn.Linear(config.Hidden, outFeatures, hasBias: false);
        dropout = nn.Dropout(config.Dropout);
        nn.init.kaiming_uniform_(lora_A.weight, Math.Sqrt(5));
        nn.init.zeros_(lora_B.weight);
        RegisterComponents();
    }

    /// <summary>The fixed scale s of the low-rank branch; merging uses the same value.</summary>
    public float Scale { get; }

    /// <inheritdoc/>
    /// <remarks>Always false: LoRA has no constant term.</remarks>
    public override bool HasInputBias => false;

    /// <inheritdoc/>
    public override Tensor Forward(Tensor input, AdaptableLayer layer)
    {
        using var scope = NewDisposeScope();
        Tensor update = lora_B.forward(lora_A.forward(dropout.forward(input))).Times(Scale);
        return layer.Project(input).Plus(update).MoveToOuterDisposeScope();
    }

    internal override void MergeInto(AdaptableLayer layer)
    {
        using var delta = lora_B.weight.matmul(lora_A.weight).Times(Scale);
        layer.AddWeightDelta(delta);
    }
}
