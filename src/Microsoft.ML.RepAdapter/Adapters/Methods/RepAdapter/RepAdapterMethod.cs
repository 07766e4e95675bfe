namespace Microsoft.ML.RepAdapter.Adapters;

/// <summary>
/// RepAdapter (Luo et al. 2023, luogen1996/RepAdapter): a linear bottleneck in front of the projection,
/// z + s (W_B dropout(W_A z + b_A) + b_B), W_B grouped; folded into the projection's input side. The adapter is
/// bias-free in front of a zero-padded convolution, where a constant would not fold exactly.
/// </summary>
public sealed class RepAdapterMethod : AdapterMethod
{
    /// <inheritdoc/>
    public override AdaptationMethod Id => AdaptationMethod.RepAdapter;

    /// <inheritdoc/>
    public override void Validate(AdapterConfig config, AdaptableLayer layer, string site) => CheckGroups(config, (int)layer.InChannels, site);

    /// <inheritdoc/>
    public override ProjectionAdapter Create(AdapterConfig config, AdaptableLayer layer) =>
        new RepAdapterLayer((int)layer.InChannels, config, withBias: layer.InputBiasFoldsExactly && layer.bias is not null);

    /// <summary>Groups k must divide the hidden size and the site's channels.</summary>
    internal static void CheckGroups(AdapterConfig config, int channels, string site)
    {
        if (config.Groups <= 0 || config.Hidden % config.Groups != 0)
            throw new ArgumentException($"RepAdapter groups ({config.Groups}) must divide the hidden size ({config.Hidden}).", nameof(config.Groups));
        if (channels % config.Groups != 0)
            throw new ArgumentException($"RepAdapter groups ({config.Groups}) must divide the {channels} channels of adapter site '{site}'.", nameof(config.Groups));
    }
}
