using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Torch;

/// <summary>
/// Numbers handed to libtorch, kept alive while it reads them. TorchSharp 0.107 wraps a number in a <see cref="Scalar"/>
/// (a native object its finalizer frees) and passes only the handle to libtorch, so a garbage collection during the
/// call can free the Scalar libtorch is reading ("Unknown scalar type", a wrong value, a crash). Implicit conversions
/// (<c>x * 0.5</c>, <c>x.eq(255)</c>) and the overloads that make their own (<c>a + b</c> passes a temporary alpha
/// of 1) all do this; the library uses these instead, and a test reads its IL to keep it so.
/// </summary>
internal static class Scalars
{
    // Alive for the process: the alpha of tensor addition, and the byte range.
    private static readonly Scalar One = 1.ToScalar(), Zero = 0.ToScalar(), ByteMax = 255.ToScalar();

    /// <summary><paramref name="a"/> + <paramref name="b"/> (broadcast).</summary>
    public static Tensor Plus(this Tensor a, Tensor b) => a.add(b, One);

    /// <summary>In place: <paramref name="a"/> += <paramref name="b"/>.</summary>
    public static Tensor PlusInPlace(this Tensor a, Tensor b) => a.add_(b, One);

    /// <summary><paramref name="a"/> plus the number <paramref name="value"/>.</summary>
    public static Tensor Plus(this Tensor a, double value) => With(value, s => a.add(s, One));

    /// <summary>In place: <paramref name="a"/> += the number <paramref name="value"/>.</summary>
    public static Tensor PlusInPlace(this Tensor a, double value) => With(value, s => a.add_(s, One));

    /// <summary><paramref name="a"/> times the number <paramref name="factor"/>.</summary>
    public static Tensor Times(this Tensor a, double factor) => With(factor, a.mul);

    /// <summary>Pixel values clamped to 0..255 as bytes (round them first).</summary>
    public static Tensor ClampToBytes(this Tensor x) => x.clamp(Zero, ByteMax).to(ScalarType.Byte);

    /// <summary>Symmetric int8 values: clamped to -<paramref name="levels"/>..<paramref name="levels"/> as sbytes (round them first).</summary>
    public static Tensor ClampToInt8(this Tensor x, int levels)
    {
        using Scalar low = (-levels).ToScalar(), high = levels.ToScalar();
        return x.clamp(low, high).to(ScalarType.Int8);
    }

    /// <summary>The result of <paramref name="use"/> given <paramref name="value"/> as a Scalar that lives until it returns.</summary>
    public static T With<T>(double value, Func<Scalar, T> use)
    {
        using var scalar = value.ToScalar();
        return use(scalar);
    }

    /// <summary>As <see cref="With{T}(double, Func{Scalar, T})"/>, for an integer (integer tensors keep their type).</summary>
    public static T With<T>(long value, Func<Scalar, T> use)
    {
        using var scalar = value.ToScalar();
        return use(scalar);
    }
}
