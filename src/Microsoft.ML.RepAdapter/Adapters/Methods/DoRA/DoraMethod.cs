namespace Microsoft.ML.RepAdapter.Adapters;

/// <summary>DoRA (Liu et al. 2024): magnitude and direction, LoRA on the direction (<see cref="DoraLayer"/>); linear layers and convolutions.</summary>
public sealed class DoraMethod : AdapterMethod
{
    /// <inheritdoc/>
    public override AdaptationMethod Id => AdaptationMethod.DoRA;

    /// <inheritdoc/>
    public override ProjectionAdapter Create(AdapterConfig config, AdaptableLayer layer) => new DoraLayer(layer, config);
}
