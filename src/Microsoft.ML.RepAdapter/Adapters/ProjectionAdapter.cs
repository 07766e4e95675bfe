using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Adapters;

/// <summary>
/// An adapter attached to one <see cref="AdaptableLayer"/>: it decides how the adapted layer runs during training and
/// how it folds into the layer's own weights afterwards (structural re-parameterisation).
/// </summary>
public abstract class ProjectionAdapter : nn.Module
{
    /// <summary>Creates the adapter as a TorchSharp module called <paramref name="name"/>.</summary>
    protected ProjectionAdapter(string name) : base(name) { }

    /// <summary>Whether the adapter has a constant term (which padded convolutions cannot absorb exactly).</summary>
    public abstract bool HasInputBias { get; }

    /// <summary>The adapted layer's output for <paramref name="input"/>.</summary>
    public abstract Tensor Forward(Tensor input, AdaptableLayer layer);

    /// <summary>Rewrites <paramref name="layer"/>'s weights so that the plain layer equals the adapted one (eval mode).</summary>
    internal abstract void MergeInto(AdaptableLayer layer);

    /// <summary>
    /// Creates the adapter that <paramref name="config"/> describes for <paramref name="layer"/>: a
    /// <see cref="RepAdapterLayer"/> (with biases only where the layer can absorb them exactly) or a <see cref="LoraLayer"/>.
    /// Throws when the configuration does not fit the layer (see <see cref="AdapterConfig.Validate"/>) and
    /// <see cref="NotSupportedException"/> for LoRA on a convolution.
    /// </summary>
    /// <param name="config">Method, hidden size, groups, scale and dropout.</param>
    /// <param name="layer">The projection the adapter will be attached to (not attached here).</param>
    /// <param name="site">The site's module path, for error messages.</param>
    public static ProjectionAdapter Create(AdapterConfig config, AdaptableLayer layer, string site)
    {
        config.Validate((int)layer.InChannels, site);
        return config.Method switch
        {
            AdaptationMethod.RepAdapter => new RepAdapterLayer((int)layer.InChannels, config, withBias: layer.InputBiasFoldsExactly && layer.bias is not null),
            AdaptationMethod.LoRA => layer is AdaptableLinear
                ? new LoraLayer((int)layer.InChannels, (int)layer.OutChannels, config)
                : throw new NotSupportedException($"LoRA is defined for linear layers; site '{site}' is a {layer.GetType().Name}."),
            _ => throw new ArgumentOutOfRangeException(nameof(config), config.Method, "Unknown adaptation method."),
        };
    }
}
