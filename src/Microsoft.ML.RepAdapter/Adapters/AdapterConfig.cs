namespace Microsoft.ML.RepAdapter.Adapters;

/// <summary>Which parameter-efficient method sits at each adapter site.</summary>
public enum AdaptationMethod
{
    /// <summary>Linear adapter in front of the projection (Luo et al. 2023); folds into it exactly.</summary>
    RepAdapter,
    /// <summary>Low-rank update added in parallel to the projection (Hu et al. 2021); folds into it exactly.</summary>
    LoRA,
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
/// Configuration of the adapters attached to a backbone. <see cref="Hidden"/> is RepAdapter's hidden size r
/// (or LoRA's rank), <see cref="Groups"/> the groups k of RepAdapter's up-projection, <see cref="Scale"/> the fixed
/// scalar s that multiplies the adapter branch. <see cref="LastBlocks"/> restricts adapters to the last blocks of the
/// trunk (null: every block, as the paper), so that the frozen blocks before them can be computed once.
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
    /// <summary>Throws a clear error for a configuration that cannot be built for channels <paramref name="channels"/>.</summary>
    public void Validate(int channels, string site)
    {
        if (Hidden <= 0) throw new ArgumentOutOfRangeException(nameof(Hidden), Hidden, "Adapter hidden size must be positive.");
        if (!float.IsFinite(Scale)) throw new ArgumentOutOfRangeException(nameof(Scale), Scale, "Adapter scale must be finite.");
        if (Dropout is < 0 or >= 1) throw new ArgumentOutOfRangeException(nameof(Dropout), Dropout, "Adapter dropout must be in [0, 1).");
        if (LastBlocks is <= 0) throw new ArgumentOutOfRangeException(nameof(LastBlocks), LastBlocks, "LastBlocks must be positive (or null for every block).");
        if (Method != AdaptationMethod.RepAdapter) return;
        if (Groups <= 0 || Hidden % Groups != 0)
            throw new ArgumentException($"RepAdapter groups ({Groups}) must divide the hidden size ({Hidden}).", nameof(Groups));
        if (channels % Groups != 0)
            throw new ArgumentException($"RepAdapter groups ({Groups}) must divide the {channels} channels of adapter site '{site}'.", nameof(Groups));
    }
}
