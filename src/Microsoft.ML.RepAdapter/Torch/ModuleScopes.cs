using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Torch;

/// <summary>
/// TorchSharp gives a parameter created inside a dispose scope to that scope, which disposes it when it ends, so a
/// module built inside a caller's <c>NewDisposeScope</c> would be unusable afterwards. Engine methods that build
/// modules (presets, descriptors, heads, adapters, checkpoint loaders) do it through <see cref="Unscoped{T}"/>.
/// </summary>
internal static class ModuleScopes
{
    /// <summary>Runs <paramref name="create"/> so that no enclosing dispose scope owns the tensors it creates.</summary>
    public static T Unscoped<T>(Func<T> create)
    {
        using var scope = NewDisposeScope();
        var result = create();
        scope.Detach(scope.DisposablesView.ToList());
        return result;
    }

    /// <inheritdoc cref="Unscoped{T}"/>
    public static void Unscoped(Action build) => Unscoped(() =>
    {
        build();
        return 0;
    });
}
