namespace Microsoft.ML.RepAdapter.Adapters;

/// <summary>
/// RLRR (Dong et al. 2024): residual low-rank rescaling of the frozen weight (<see cref="RlrrLayer"/>). The official
/// code adapts every linear layer of a ViT (and SSF-style scales around its norms); here it sits at the family's adapter
/// sites, as the other methods do.
/// </summary>
public sealed class RlrrMethod : AdapterMethod
{
    /// <inheritdoc/>
    public override AdaptationMethod Id => AdaptationMethod.RLRR;

    /// <inheritdoc/>
    /// <remarks>False: RLRR trains its scales whole.</remarks>
    public override bool UsesScale => false;

    /// <inheritdoc/>
    public override ProjectionAdapter Create(AdapterConfig config, AdaptableLayer layer) => new RlrrLayer(layer);
}
