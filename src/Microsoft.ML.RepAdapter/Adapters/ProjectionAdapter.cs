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
    /// Creates the adapter that <paramref name="config"/> describes for <paramref name="layer"/> (its method's
    /// <see cref="AdapterMethod.Create"/>), after <see cref="AdapterConfig.Validate"/>.
    /// </summary>
    /// <param name="config">Method, hidden size, groups, scale and dropout.</param>
    /// <param name="layer">The projection the adapter will be attached to (not attached here).</param>
    /// <param name="site">The site's module path, for error messages.</param>
    public static ProjectionAdapter Create(AdapterConfig config, AdaptableLayer layer, string site)
    {
        config.Validate(layer, site);
        return config.Implementation.Create(config, layer);
    }

    /// <summary><paramref name="weight"/> ([out, ...]) with each output channel's slice multiplied by <paramref name="perChannel"/> [out].</summary>
    protected static Tensor ScaleOutputChannels(Tensor weight, Tensor perChannel) =>
        weight.mul(perChannel.view([-1, .. Enumerable.Repeat(1L, (int)weight.dim() - 1)]));
}
