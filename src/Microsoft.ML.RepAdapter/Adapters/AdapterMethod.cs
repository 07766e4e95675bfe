using System.Reflection;

namespace Microsoft.ML.RepAdapter.Adapters;

/// <summary>
/// One parameter-efficient method, as data (peft's tuner folder): which configuration it takes, the adapter it builds
/// for a host layer, and, in that adapter, its trainable parameters under their checkpoint names, its forward and its
/// exact merge through <see cref="AdaptableLayer.Rewrite"/>. A method lives in <c>Adapters/Methods/&lt;Name&gt;/</c>;
/// adding one is that folder and its line in <see cref="AdaptationMethod"/>, which names the folder's method.
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

/// <summary>Names the <see cref="AdapterMethod"/> that implements an <see cref="AdaptationMethod"/> value.</summary>
[AttributeUsage(AttributeTargets.Field)]
internal sealed class ImplementedByAttribute(Type method) : Attribute
{
    public Type Method { get; } = method;
}

/// <summary>The registry: every adaptation method, read from the <see cref="AdaptationMethod"/> lines that name them.</summary>
public static class AdapterMethods
{
    /// <summary>Every method, in the enum's order.</summary>
    public static IReadOnlyList<AdapterMethod> All { get; } = [.. Enum.GetValues<AdaptationMethod>().Select(Implementation)];

    /// <summary>The implementation of <paramref name="method"/>.</summary>
    public static AdapterMethod Of(AdaptationMethod method) =>
        All.FirstOrDefault(m => m.Id == method)
        ?? throw new ArgumentOutOfRangeException(nameof(method), method, $"No such adaptation method. Known: {string.Join(", ", All.Select(m => m.Id))}.");

    private static AdapterMethod Implementation(AdaptationMethod id)
    {
        var type = typeof(AdaptationMethod).GetField(id.ToString())!.GetCustomAttribute<ImplementedByAttribute>()?.Method
            ?? throw new InvalidOperationException($"AdaptationMethod.{id} names no implementation ([ImplementedBy(typeof(...))]).");
        var method = (AdapterMethod)Activator.CreateInstance(type)!;
        return method.Id == id ? method : throw new InvalidOperationException($"AdaptationMethod.{id} names {type.Name}, whose Id is {method.Id}.");
    }
}
