using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Torch;

/// <summary>
/// How a precision choice made from a timing is made, for scoring (<c>ScoringPrecision.Auto</c>) and the frozen prefix
/// alike: each run once as a warm-up (kernels set themselves up on their first call), then the faster of two timed runs;
/// bfloat16 is kept only when it takes at most <see cref="MaxTimeRatio"/> of float32's time, so that noise does not flip it.
/// </summary>
internal static class PrecisionTrial
{
    /// <summary>The largest bfloat16 / float32 time ratio for which bfloat16 is kept.</summary>
    public const double MaxTimeRatio = 0.9;

    /// <summary>Milliseconds of <paramref name="run"/>: the faster of two runs after a warm-up.</summary>
    public static double Milliseconds(Func<Tensor> run)
    {
        using (NewDisposeScope()) run();
        return Enumerable.Range(0, 2).Min(_ =>
        {
            using var scope = NewDisposeScope();
            var clock = System.Diagnostics.Stopwatch.StartNew();
            run();
            return clock.Elapsed.TotalMilliseconds;
        });
    }

    /// <summary>Whether bfloat16's time pays against float32's.</summary>
    public static bool Pays(double float32Milliseconds, double bfloat16Milliseconds) => bfloat16Milliseconds <= MaxTimeRatio * float32Milliseconds;
}
