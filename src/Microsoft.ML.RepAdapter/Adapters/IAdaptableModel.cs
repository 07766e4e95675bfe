namespace Microsoft.ML.RepAdapter.Adapters;

/// <summary>
/// A network whose projections can host adapters: a backbone, or a task network around one. It names its mergeable
/// sites per placement and its task head, which every training policy trains.
/// </summary>
public interface IAdaptableModel
{
    /// <summary>The mergeable projections for <paramref name="placement"/>, named by their module path.</summary>
    IReadOnlyList<AdapterSite> AdapterSites(AdapterPlacement placement);

    /// <summary>Whether the named parameter belongs to the task head (trained in every policy).</summary>
    bool IsHeadParameter(string parameterName);

    /// <summary>
    /// When true, normalisation statistics of the frozen part (BatchNorm running stats) stay as they are in training
    /// mode, as they must when that part is frozen.
    /// </summary>
    bool FreezeNormStatistics { get; set; }
}

/// <summary>One place where an adapter can be attached and merged: the projection at module path <paramref name="Name"/>.</summary>
/// <param name="Name">The projection's module path.</param>
/// <param name="Layer">The projection.</param>
/// <param name="Block">The trunk block (ViT block, residual block, ...) the projection belongs to, counted from 0 over the whole trunk.</param>
public sealed record AdapterSite(string Name, AdaptableLayer Layer, int Block);
