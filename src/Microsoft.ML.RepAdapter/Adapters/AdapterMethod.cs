namespace Microsoft.ML.RepAdapter.Adapters;

/// <summary>
/// One parameter-efficient method, as data (peft's tuner folder): which configuration it takes, the adapter it builds
/// for a host layer, and, in that adapter, its trainable parameters under their checkpoint names, its forward and its
/// exact merge through <see cref="AdaptableLayer.Rewrite"/>. A method lives in <c>Adapters/Methods/&lt;Name&gt;/</c>;
/// adding one is that folder and a line in <see cref="AdapterMethods"/>.
/// </summary>
public abstract class AdapterMethod
{
    /// <summary>The value that names the method in options, saved models and adapter checkpoints.</summary>
    public abstract AdaptationMethod Id { get; }

    /// <summary>
    /// Whether the update is multiplied by the fixed scale s (<see cref="AdapterConfig.Scale"/>): true where the method's
    /// paper has one (RepAdapter's s, LoRA's alpha / r); otherwise s must be 1 and the recipe search leaves it alone.
    /// </summary>
    public virtual bool UsesScale => true;

    /// <summary>Throws a clear error, naming <paramref name="site"/>, when <paramref name="config"/> cannot be built at <paramref name="layer"/>.</summary>
    public virtual void Validate(AdapterConfig config, AdaptableLayer layer, string site) { }

    /// <summary>The adapter for <paramref name="layer"/>, initialised as the method's reference code does (not attached).</summary>
    public abstract ProjectionAdapter Create(AdapterConfig config, AdaptableLayer layer);
}

/// <summary>The registry: every adaptation method, one line each.</summary>
public static class AdapterMethods
{
    /// <summary>Every method.</summary>
    public static IReadOnlyList<AdapterMethod> All { get; } =
    [
        new RepAdapterMethod(),
        new LoraMethod(),
        new DoraMethod(),
        new SsfMethod(),
        new RlrrMethod(),
    ];

    /// <summary>The implementation of <paramref name="method"/>.</summary>
    public static AdapterMethod Of(AdaptationMethod method) =>
        All.FirstOrDefault(m => m.Id == method)
        ?? throw new ArgumentOutOfRangeException(nameof(method), method, $"No such adaptation method. Known: {string.Join(", ", All.Select(m => m.Id))}.");
}
