using ScottPlot;

namespace RepAdapter.Benchmarks;

/// <summary>Draws each <see cref="PlotKind"/> with ScottPlot.</summary>
internal static class Plots
{
    private const int Width = 900, Height = 500;

    public static void Render(PlotRequest request)
    {
        var plot = new Plot();
        int width = Width;
        switch (request.Kind)
        {
            case PlotKind.Ratios: Ratios(plot, request); width += 200; break;
            case PlotKind.LogScatter: LogScatter(plot, request); break;
            case PlotKind.Curves: Curves(plot, request); break;
            case PlotKind.GroupedBars: GroupedBars(plot, request); break;
            default: throw new ArgumentException($"Unknown plot kind {request.Kind} for {request.Path}.");
        }
        plot.Title(request.Title);
        plot.XLabel(request.XLabel);
        plot.YLabel(request.YLabel);
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(request.Path))!);
        plot.SavePng(request.Path, width, Height);
    }

    /// <summary>Series 0 (blue) and 1 (gray, the noise floor) per group as bars from 1, with their 95 % intervals; 0.99 and 1.01 dashed.</summary>
    private static void Ratios(Plot plot, PlotRequest request)
    {
        var colors = new[] { Colors.SteelBlue, Colors.LightGray };
        var bars = new List<Bar>();
        for (int s = 0; s < request.Series.Length; s++)
        {
            var series = request.Series[s];
            for (int g = 0; g < series.Values.Length; g++)
            {
                double error = series.Low is null || series.High is null ? 0 : (series.High[g] - series.Low[g]) / 2;
                bars.Add(new Bar { Position = 3 * g + s, Value = series.Values[g], ValueBase = 1, Error = error, FillColor = colors[s % colors.Length] });
            }
        }
        plot.Add.Bars(bars);
        var target = plot.Add.HorizontalLine(1.01);
        target.LinePattern = LinePattern.Dashed;
        target.LegendText = "1.01 target";
        plot.Add.HorizontalLine(0.99).LinePattern = LinePattern.Dashed;
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual([.. request.Groups.Select((g, i) => new Tick(3 * i + 0.5, g))]);
    }

    /// <summary>One colour per series, one labelled point per value at log10(X).</summary>
    private static void LogScatter(Plot plot, PlotRequest request)
    {
        var palette = new ScottPlot.Palettes.Category10();
        for (int s = 0; s < request.Series.Length; s++)
        {
            var series = request.Series[s];
            var color = palette.GetColor(s);
            var xs = (series.X ?? throw new ArgumentException($"{request.Path}: series {series.Name} has no X.")).Select(x => Math.Log10(Math.Max(1, x))).ToArray();
            var scatter = plot.Add.ScatterPoints(xs, series.Values, color);
            scatter.MarkerSize = 9;
            scatter.LegendText = series.Name;
            for (int i = 0; i < xs.Length && series.Labels is not null; i++)
            {
                var label = plot.Add.Text(series.Labels[i], xs[i], series.Values[i]);
                label.LabelFontSize = 11;
                label.LabelFontColor = color;
            }
        }
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericAutomatic { LabelFormatter = x => $"{Math.Pow(10, x):G3}" };
        plot.Axes.Margins(horizontal: 0.12, vertical: 0.1); // room for the labels right of the outermost points
        plot.ShowLegend(Alignment.LowerRight);
    }

    private static void Curves(Plot plot, PlotRequest request)
    {
        foreach (var series in request.Series)
            plot.Add.Scatter(Enumerable.Range(1, series.Values.Length).Select(i => (double)i).ToArray(), series.Values).LegendText = series.Name;
        plot.ShowLegend(Alignment.UpperRight);
    }

    private static void GroupedBars(Plot plot, PlotRequest request)
    {
        var palette = new ScottPlot.Palettes.Category10();
        int n = request.Series.Length;
        for (int s = 0; s < n; s++)
        {
            var color = palette.GetColor(s);
            var bars = request.Series[s].Values.Select((v, g) => (v, g)).Where(b => double.IsFinite(b.v)) // NaN: nothing measured
                .Select(b => new Bar { Position = b.g * (n + 1) + s, Value = b.v, FillColor = color }).ToList();
            plot.Add.Bars(bars).LegendText = request.Series[s].Name;
        }
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual([.. request.Groups.Select((g, i) => new Tick(i * (n + 1) + (n - 1) / 2.0, g))]);
        plot.Axes.Margins(bottom: 0);
        plot.ShowLegend(Alignment.UpperLeft);
    }
}
