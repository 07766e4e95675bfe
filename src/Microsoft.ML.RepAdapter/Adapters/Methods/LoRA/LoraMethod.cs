namespace Microsoft.ML.RepAdapter.Adapters;

/// <summary>LoRA (Hu et al. 2021; peft's <c>tuners/lora</c>): a low-rank update in parallel to the projection, linear or convolution.</summary>
public sealed class LoraMethod : AdapterMethod
{
    /// <inheritdoc/>
    public override AdaptationMethod Id => AdaptationMethod.LoRA;

    /// <inheritdoc/>
    public override ProjectionAdapter Create(AdapterConfig config, AdaptableLayer layer) => new LoraLayer(layer, config);
}
