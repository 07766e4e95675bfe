using System.Diagnostics;
using System.Text.Json;

namespace RepAdapter.Benchmarks;

/// <summary>
/// The reports' PNG plots, asked for as <see cref="PlotRequest"/>s and drawn by RepAdapter.Benchmarks.Plots (ScottPlot) in
/// a child process when the report is written (see PlotRequests.cs for why not in this one).
/// </summary>
internal static class Plots
{
    private static readonly List<PlotRequest> Pending = [];

    /// <summary>merged/plain and plain2/plain (the noise floor) per model and batch, with their 95 % intervals, around 1.</summary>
    public static void Ratios(string path, IReadOnlyList<LatencySuite.Row> rows) => Pending.Add(new(PlotKind.Ratios, path,
        "Latency ratios: merged / plain (blue), plain2 / plain noise floor (gray)", "", "median of per-round ratios",
        [.. rows.Select(r => $"{BenchmarkModels.DisplayName(r.Model).Replace(' ', '\n')}\nbatch {r.Batch}")],
        [
            new("merged / plain", [.. rows.Select(r => r.MergedRatio)], Low: [.. rows.Select(r => r.MergedLow)], High: [.. rows.Select(r => r.MergedHigh)]),
            new("plain2 / plain", [.. rows.Select(r => r.NoiseRatio)], Low: [.. rows.Select(r => r.NoiseLow)], High: [.. rows.Select(r => r.NoiseHigh)]),
        ]));

    /// <summary>Test accuracy (%) against trainable parameters (log scale), one series per task, one labelled point per method.</summary>
    public static void AccuracyVsParameters(string path, IReadOnlyList<(string Task, string Method, long Trainable, double Accuracy)> points) =>
        Pending.Add(new(PlotKind.LogScatter, path, "Accuracy against trainable parameters", "trainable parameters (log scale)", "test accuracy, %", [],
            [.. points.GroupBy(p => p.Task).Select(task => new PlotSeries(task.Key, [.. task.Select(p => 100 * p.Accuracy)],
                Labels: [.. task.Select(p => p.Method)], X: [.. task.Select(p => (double)p.Trainable)]))]));

    /// <summary>A value per epoch, one line per (task, method).</summary>
    public static void Curves(string path, string title, IReadOnlyList<(string Name, double[] Values)> curves, string yLabel) =>
        Pending.Add(new(PlotKind.Curves, path, title, "epoch", yLabel, [], [.. curves.Select(c => new PlotSeries(c.Name, c.Values))]));

    /// <summary>Grouped bars: one group per label, one bar per series, with an optional range per bar (Low, High: e.g. min-max over seeds).</summary>
    public static void GroupedBars(string path, string title, string yLabel, IReadOnlyList<string> groups,
        IReadOnlyList<(string Series, double[] Values)> series, IReadOnlyList<(double[] Low, double[] High)>? ranges = null) =>
        Pending.Add(new(PlotKind.GroupedBars, path, title, "", yLabel, [.. groups],
            [.. series.Select((s, i) => new PlotSeries(s.Series, s.Values, Low: ranges?[i].Low, High: ranges?[i].High))]));

    /// <summary>Draws the plots asked for so far (dotnet run of RepAdapter.Benchmarks.Plots); a failure is reported, not thrown.</summary>
    public static void RenderPending()
    {
        if (Pending.Count == 0) return;
        string requests = Path.Combine(Path.GetTempPath(), $"repadapter-plots-{Environment.ProcessId}.json");
        File.WriteAllText(requests, JsonSerializer.Serialize(Pending, PlotRequest.Json));
        Pending.Clear();
        string project = Path.Combine(Report.RepoRoot(), "samples", "RepAdapter.Benchmarks.Plots");
        var start = new ProcessStartInfo("dotnet", ["run", "-c", "Release", "--project", project, "--", requests]) { UseShellExecute = false };
        using var process = Process.Start(start)!;
        process.WaitForExit();
        if (process.ExitCode != 0) Console.Error.WriteLine($"Plots were not drawn (exit code {process.ExitCode}); the requests are in {requests}.");
        else File.Delete(requests);
    }

}
