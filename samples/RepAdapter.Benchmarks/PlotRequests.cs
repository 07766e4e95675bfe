using System.Text.Json;
using System.Text.Json.Serialization;

namespace RepAdapter.Benchmarks;

/// <summary>What a plot shows; RepAdapter.Benchmarks.Plots draws each kind.</summary>
public enum PlotKind
{
    /// <summary>Ratios around 1 with 95 % intervals: series 0 the measured ratio, series 1 the noise floor, one group each.</summary>
    Ratios,
    /// <summary>One point per (series, label) at (X, value), X on a log scale.</summary>
    LogScatter,
    /// <summary>One line per series over epochs 1..n.</summary>
    Curves,
    /// <summary>One bar per series in each group.</summary>
    GroupedBars,
}

/// <summary>One named series: values, and per kind their point labels, X positions or interval bounds.</summary>
public sealed record PlotSeries(string Name, double[] Values, string[]? Labels = null, double[]? X = null, double[]? Low = null, double[]? High = null);

/// <summary>
/// A PNG plot a benchmark report asks for. ScottPlot needs SkiaSharp 3 and ML.NET's ImageAnalytics (which the accuracy
/// suite's ML.NET pipeline and the trainer's image loading use) SkiaSharp 2.88; the two cannot load in one process, so
/// the suites write requests and RepAdapter.Benchmarks.Plots renders them in its own.
/// </summary>
public sealed record PlotRequest(PlotKind Kind, string Path, string Title, string XLabel, string YLabel, string[] Groups, PlotSeries[] Series)
{
    /// <summary>How requests travel between the two processes (NaN: a value not measured).</summary>
    public static readonly JsonSerializerOptions Json = new()
    {
        Converters = { new JsonStringEnumConverter() },
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };
}
