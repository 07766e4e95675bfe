namespace Microsoft.ML.RepAdapter.Adapters;

/// <summary>
/// Which parameter-efficient method sits at each adapter site. Every one folds into the projection it adapts, so the
/// merged model is the plain architecture. Each is implemented in its own folder under <c>Adapters/Methods</c>; its
/// line here, naming that implementation, is the registry (<see cref="AdapterMethods"/>).
/// </summary>
public enum AdaptationMethod
{
    /// <summary>Linear adapter in front of the projection (Luo et al. 2023).</summary>
    [ImplementedBy(typeof(RepAdapterMethod))] RepAdapter,
    /// <summary>Low-rank update added in parallel to the projection (Hu et al. 2021); on a convolution, peft's form (k x k down, 1 x 1 up).</summary>
    [ImplementedBy(typeof(LoraMethod))] LoRA,
    /// <summary>Weight decomposed into magnitude and direction, LoRA on the direction (Liu et al. 2024).</summary>
    [ImplementedBy(typeof(DoraMethod))] DoRA,
    /// <summary>Per-channel scale and shift of the projection's output (Lian et al. 2022).</summary>
    [ImplementedBy(typeof(SsfMethod))] SSF,
    /// <summary>Residual low-rank rescaling of the frozen weight by a row and a column scale vector (Dong et al. 2024).</summary>
    [ImplementedBy(typeof(RlrrMethod))] RLRR,
}

/// <summary>Where adapters go. Each backbone maps a placement to its own mergeable sites.</summary>
public enum AdapterPlacement
{
    /// <summary>"repblock": in front of the attention qkv and the MLP fc1 of every block (ResNet: every residual block's first conv).</summary>
    Block,
    /// <summary>"repattn": in front of the attention qkv only.</summary>
    Attention,
}

/// <summary>Which parameters a training run updates; everything else is frozen.</summary>
public enum TrainableParameters
{
    /// <summary>Adapters and the new head (the paper's default).</summary>
    AdaptersAndHead,
    /// <summary>Head only: the linear-probe baseline. No adapters are attached.</summary>
    HeadOnly,
    /// <summary>Everything: the full fine-tuning baseline. No adapters are attached.</summary>
    All,
    /// <summary>Adapters, head and every bias of the backbone (the paper's segmentation setting).</summary>
    AdaptersHeadAndBiases,
}

/// <summary>
/// Configuration of the adapters attached to a backbone, saved whole with a trained model and with adapter checkpoints.
/// <see cref="Hidden"/> is RepAdapter's hidden size r (LoRA's and DoRA's rank), <see cref="Groups"/> the groups k of
/// RepAdapter's up-projection, <see cref="Scale"/> the fixed scalar s that multiplies the trained update (methods
/// without one, SSF and RLRR, take 1). <see cref="LastBlocks"/> restricts adapters to the last blocks of the trunk
/// (null: every block, as the paper), so that the frozen blocks before them can be computed once. What a method does
/// not use (groups for LoRA, hidden size for SSF) is ignored.
/// </summary>
public sealed record AdapterConfig(
    AdaptationMethod Method = AdaptationMethod.RepAdapter,
    AdapterPlacement Placement = AdapterPlacement.Block,
    int Hidden = 8,
    int Groups = 2,
    float Scale = 1f,
    double Dropout = 0.1,
    int? LastBlocks = null)
{
    /// <summary>The method's implementation (<see cref="AdapterMethods"/>); not part of the saved configuration.</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public AdapterMethod Implementation => AdapterMethods.Of(Method);

    /// <summary>
    /// Throws a clear error for a configuration that cannot be built at <paramref name="layer"/> (module path
    /// <paramref name="site"/>): the settings every method shares, then the method's own.
    /// </summary>
    public void Validate(AdaptableLayer layer, string site)
    {
        if (Hidden <= 0) throw new ArgumentOutOfRangeException(nameof(Hidden), Hidden, "Adapter hidden size must be positive.");
        if (!float.IsFinite(Scale)) throw new ArgumentOutOfRangeException(nameof(Scale), Scale, "Adapter scale must be finite.");
        if (!Implementation.UsesScale && Scale != 1f)
            throw new ArgumentOutOfRangeException(nameof(Scale), Scale, $"{Method} has no scale s (its update is trained whole): leave it at 1.");
        if (Dropout is < 0 or >= 1) throw new ArgumentOutOfRangeException(nameof(Dropout), Dropout, "Adapter dropout must be in [0, 1).");
        if (LastBlocks is <= 0) throw new ArgumentOutOfRangeException(nameof(LastBlocks), LastBlocks, "LastBlocks must be positive (or null for every block).");
        Implementation.Validate(this, layer, site);
    }
}
