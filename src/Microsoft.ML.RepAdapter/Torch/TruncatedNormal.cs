using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Torch;

/// <summary>
/// Truncated normal initialisation, as PyTorch's <c>nn.init.trunc_normal_</c> (and timm's): N(mean, std^2) restricted to
/// [a, b], drawn by inverting the normal CDF on a uniform sample. TorchSharp 0.107's own <c>trunc_normal_</c> is broken
/// (it fills the tensor with the constant std, and NaN where the draw hits a bound), so the library uses this one.
/// </summary>
internal static class TruncatedNormal
{
    /// <summary>Fills <paramref name="tensor"/> in place; like timm, <paramref name="a"/> and <paramref name="b"/> are absolute bounds.</summary>
    public static Tensor Fill(Tensor tensor, double std = 1, double mean = 0, double a = -2, double b = 2, Generator? generator = null)
    {
        if (!(std > 0) || !double.IsFinite(std)) throw new ArgumentOutOfRangeException(nameof(std), std, "Standard deviation must be positive and finite.");
        if (!(a < b)) throw new ArgumentException($"Bounds must satisfy a < b, got [{a}, {b}].");
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        double low = 2 * NormalCdf((a - mean) / std) - 1, high = 2 * NormalCdf((b - mean) / std) - 1;
        // erfinv(+-1) is infinite: keep the uniform draw strictly inside (-1, 1) so that every value is finite.
        double limit = 1 - 1e-6;
        tensor.uniform_(Math.Max(low, -limit), Math.Min(high, limit), generator);
        Scalars.With(std * Math.Sqrt(2), tensor.erfinv_().mul_);
        tensor.PlusInPlace(mean);
        Scalars.With(a, low => Scalars.With(b, high => tensor.clamp_(low, high)));
        return tensor;
    }

    private static double NormalCdf(double x) => 0.5 * (1 + Erf(x / Math.Sqrt(2)));

    /// <summary>erf to 1.5e-7 (Abramowitz and Stegun 7.1.26); only the bounds of the uniform draw need it.</summary>
    private static double Erf(double x)
    {
        double t = 1 / (1 + 0.3275911 * Math.Abs(x));
        double y = 1 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * Math.Exp(-x * x);
        return Math.Sign(x) * y;
    }
}
