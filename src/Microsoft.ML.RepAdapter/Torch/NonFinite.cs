using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Torch;

/// <summary>
/// Finds NaN and infinity in named tensors, so that a model with non-finite weights is reported by name instead of
/// being trained on, returned, saved or loaded.
/// </summary>
internal static class NonFinite
{
    /// <summary>The name of the first tensor holding a NaN or an infinity, or null when every value is finite.</summary>
    public static string? FirstIn(IEnumerable<(string name, Tensor tensor)> tensors)
    {
        using var scope = NewDisposeScope();
        var floating = tensors.Where(t => t.tensor.is_floating_point()).ToList();
        // One synchronising check for the common case; the per-tensor search runs only when something is wrong.
        if (floating.Count == 0 || stack(floating.Select(t => t.tensor.isfinite().all()).ToArray()).all().item<bool>()) return null;
        return floating.First(t => !t.tensor.isfinite().all().item<bool>()).name;
    }

    /// <summary>The first parameter or buffer of <paramref name="module"/> that is not finite, or null.</summary>
    public static string? FirstIn(nn.Module module) =>
        FirstIn(module.named_parameters().Select(p => (p.name, (Tensor)p.parameter)).Concat(module.named_buffers()));

    /// <summary>Throws <see cref="InvalidDataException"/> naming the first non-finite tensor of <paramref name="module"/>.</summary>
    /// <param name="module">The module whose parameters and buffers are checked.</param>
    /// <param name="what">What the module is, for the message (e.g. "the merged model").</param>
    public static void ThrowIfAny(nn.Module module, string what)
    {
        if (FirstIn(module) is string name)
            throw new InvalidDataException($"{what} has non-finite values (NaN or infinity) in '{name}'.");
    }
}
