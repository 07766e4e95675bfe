namespace Microsoft.ML.RepAdapter.Adapters;

/// <summary>
/// SSF (Lian et al. 2022): scale and shift of the projection's output (<see cref="SsfLayer"/>). The official code puts
/// one after every operation of a block; here it sits at the family's adapter sites, as the other methods do, so that the
/// methods are compared at the same places.
/// </summary>
public sealed class SsfMethod : AdapterMethod
{
    /// <inheritdoc/>
    public override AdaptationMethod Id => AdaptationMethod.SSF;

    /// <inheritdoc/>
    /// <remarks>False: SSF trains its scale whole.</remarks>
    public override bool UsesScale => false;

    /// <inheritdoc/>
    public override ProjectionAdapter Create(AdapterConfig config, AdaptableLayer layer) => new SsfLayer(layer);
}
