using ScottPlot;

namespace RepAdapter.Benchmarks;

/// <summary>The reports' PNG plots (ScottPlot).</summary>
internal static class Plots
{
    private const int Width = 900, Height = 500;

    /// <summary>merged/plain and plain2/plain (the noise floor) per model and batch, with their 95 % intervals, around 1.</summary>
    public static void Ratios(string path, IReadOnlyList<LatencySuite.Row> rows)
    {
        var plot = new Plot();
        var bars = new List<Bar>();
        var ticks = new List<Tick>();
        for (int i = 0; i < rows.Count; i++)
        {
            var r = rows[i];
            bars.Add(new Bar { Position = 3 * i, Value = r.MergedRatio, ValueBase = 1, Error = (r.MergedHigh - r.MergedLow) / 2, FillColor = Colors.SteelBlue });
            bars.Add(new Bar { Position = 3 * i + 1, Value = r.NoiseRatio, ValueBase = 1, Error = (r.NoiseHigh - r.NoiseLow) / 2, FillColor = Colors.LightGray });
            ticks.Add(new Tick(3 * i + 0.5, $"{Short(r.Model)}\nb{r.Batch}"));
        }
        plot.Add.Bars(bars);
        var target = plot.Add.HorizontalLine(1.01);
        target.LinePattern = LinePattern.Dashed;
        target.LegendText = "1.01 target";
        plot.Add.HorizontalLine(0.99).LinePattern = LinePattern.Dashed;
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual([.. ticks]);
        plot.Title("Latency ratios: merged / plain (blue), plain2 / plain noise floor (gray)");
        plot.YLabel("ratio of medians per round");
        plot.SavePng(path, Width + 200, Height);
    }

    /// <summary>Test accuracy against trainable parameters (log scale), one series per task, one point per method.</summary>
    public static void AccuracyVsParameters(string path, IReadOnlyList<(string Task, string Method, long Trainable, double Accuracy)> points)
    {
        var plot = new Plot();
        var palette = new ScottPlot.Palettes.Category10();
        int series = 0;
        foreach (var task in points.GroupBy(p => p.Task))
        {
            var color = palette.GetColor(series++);
            var xs = task.Select(p => Math.Log10(Math.Max(1, p.Trainable))).ToArray();
            var ys = task.Select(p => 100 * p.Accuracy).ToArray();
            var scatter = plot.Add.ScatterPoints(xs, ys, color);
            scatter.MarkerSize = 9;
            scatter.LegendText = task.Key;
            foreach (var p in task)
            {
                var label = plot.Add.Text(p.Method, Math.Log10(Math.Max(1, p.Trainable)), 100 * p.Accuracy);
                label.LabelFontSize = 11;
                label.LabelFontColor = color;
            }
        }
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericAutomatic { LabelFormatter = x => $"{Math.Pow(10, x):G3}" };
        plot.XLabel("trainable parameters (log scale)");
        plot.YLabel("test accuracy, %");
        plot.Title("Accuracy against trainable parameters");
        plot.ShowLegend(Alignment.LowerRight);
        plot.SavePng(path, Width, Height);
    }

    /// <summary>Training loss per epoch, one line per (task, method).</summary>
    public static void Curves(string path, string title, IReadOnlyList<(string Name, double[] Values)> curves, string yLabel)
    {
        var plot = new Plot();
        foreach (var (name, values) in curves)
        {
            var line = plot.Add.Scatter(Enumerable.Range(1, values.Length).Select(i => (double)i).ToArray(), values);
            line.LegendText = name;
        }
        plot.XLabel("epoch");
        plot.YLabel(yLabel);
        plot.Title(title);
        plot.ShowLegend(Alignment.UpperRight);
        plot.SavePng(path, Width, Height);
    }

    /// <summary>Grouped bars: one group per label, one bar per series.</summary>
    public static void GroupedBars(string path, string title, string yLabel, IReadOnlyList<string> groups, IReadOnlyList<(string Series, double[] Values)> series)
    {
        var plot = new Plot();
        var palette = new ScottPlot.Palettes.Category10();
        int n = series.Count;
        for (int s = 0; s < n; s++)
        {
            var color = palette.GetColor(s);
            var bars = series[s].Values.Select((v, g) => new Bar { Position = g * (n + 1) + s, Value = v, FillColor = color }).ToList();
            plot.Add.Bars(bars).LegendText = series[s].Series;
        }
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual(
            [.. groups.Select((g, i) => new Tick(i * (n + 1) + (n - 1) / 2.0, g))]);
        plot.Axes.Margins(bottom: 0);
        plot.YLabel(yLabel);
        plot.Title(title);
        plot.ShowLegend(Alignment.UpperLeft);
        plot.SavePng(path, Width, Height);
    }

    private static string Short(string model) => model.Replace("_patch16_224", "").Replace("_patch4_window7_224", "");
}
