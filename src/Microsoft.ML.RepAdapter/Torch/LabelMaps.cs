using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Torch;

/// <summary>Per-pixel class maps (segmentation masks).</summary>
internal static class LabelMaps
{
    /// <summary>
    /// A [H, W] class map resized to [size, size] as int64. Nearest neighbour keeps class indices (never a blend of two
    /// classes); "exact" centres pixels as the image resize does. align_corners is passed (and ignored by nearest-exact)
    /// because libtorch's C++ interpolate otherwise warns on every call that bilinear's default changed in 0.4.
    /// </summary>
    public static Tensor Resize(Tensor labels, long size)
    {
        using var scope = NewDisposeScope();
        var resized = nn.functional.interpolate(labels.view(1, 1, labels.shape[0], labels.shape[1]).to(ScalarType.Float32), [size, size],
            mode: InterpolationMode.NearestExact, align_corners: false);
        return resized.view(size, size).to(ScalarType.Int64).MoveToOuterDisposeScope();
    }
}
