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
            case PlotKind.Ratios: Ratios(plot, request); width = Math.Max(Width, 115 * request.Groups.Length + 300); break;
            case PlotKind.LogScatter: LogScatter(plot, request); break;
            case PlotKind.Curves: Curves(plot, request); break;
            case PlotKind.GroupedBars: GroupedBars(plot, request); width = Math.Max(Width, 160 * request.Groups.Length + 250); break;
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
        foreach (double bound in new[] { 0.99, 1.01 })
        {
            var line = plot.Add.HorizontalLine(bound, color: Colors.DarkOrange);
            line.LinePattern = LinePattern.Dashed;
        }
        // Bars carry no legend of their own: one entry per series colour, one for the band.
        for (int s = 0; s < request.Series.Length; s++)
            plot.Legend.ManualItems.Add(new LegendItem { LabelText = request.Series[s].Name, FillColor = colors[s % colors.Length], OutlineColor = Colors.Black });
        plot.Legend.ManualItems.Add(new LegendItem { LabelText = "within 1 % (0.99-1.01)", LineColor = Colors.DarkOrange, LinePattern = LinePattern.Dashed, LineWidth = 2 });
        plot.ShowLegend(Edge.Right);
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
        // Ticks at whole powers of ten, written out ("10,000", not "1E+04").
        var all = request.Series.SelectMany(s => s.X ?? []).Where(x => x > 0).Select(Math.Log10).ToList();
        int low = (int)Math.Floor(all.Min()), high = (int)Math.Ceiling(all.Max());
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual(
            [.. Enumerable.Range(low, high - low + 1).Select(k => new Tick(k, Math.Pow(10, k).ToString("N0", System.Globalization.CultureInfo.InvariantCulture)))]);
        plot.Axes.Margins(horizontal: 0.12, vertical: 0.1); // room for the labels right of the outermost points
        plot.ShowLegend(Edge.Right);
    }

    private static void Curves(Plot plot, PlotRequest request)
    {
        foreach (var series in request.Series)
            plot.Add.Scatter(Enumerable.Range(1, series.Values.Length).Select(i => (double)i).ToArray(), series.Values).LegendText = series.Name;
        plot.ShowLegend(Edge.Right);
    }

    /// <summary>One bar per series in each group, its value written on it; Low/High, when given, drawn as a black range (e.g. min-max over seeds).</summary>
    private static void GroupedBars(Plot plot, PlotRequest request)
    {
        var palette = new ScottPlot.Palettes.Category10();
        int n = request.Series.Length;
        for (int s = 0; s < n; s++)
        {
            var series = request.Series[s];
            var color = palette.GetColor(s);
            var bars = series.Values.Select((v, g) => (v, g)).Where(b => double.IsFinite(b.v)) // NaN: nothing measured
                .Select(b => new Bar { Position = b.g * (n + 1) + s, Value = b.v, FillColor = color, Label = b.v.ToString("G3", System.Globalization.CultureInfo.InvariantCulture) })
                .ToList();
            var plotted = plot.Add.Bars(bars);
            plotted.LegendText = series.Name;
            plotted.ValueLabelStyle.FontSize = 10;
            for (int g = 0; series.Low is not null && series.High is not null && g < series.Values.Length; g++)
            {
                if (!double.IsFinite(series.Low[g]) || !double.IsFinite(series.High[g]) || series.Low[g] == series.High[g]) continue;
                var range = plot.Add.Line(g * (n + 1) + s, series.Low[g], g * (n + 1) + s, series.High[g]);
                range.Color = Colors.Black;
                range.LineWidth = 2;
            }
        }
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual([.. request.Groups.Select((g, i) => new Tick(i * (n + 1) + (n - 1) / 2.0, g))]);
        plot.Axes.Margins(bottom: 0, top: 0.12);
        plot.ShowLegend(Edge.Right);
    }
}
