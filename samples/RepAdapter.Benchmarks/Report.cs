using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;

namespace RepAdapter.Benchmarks;

/// <summary>
/// What one suite writes: docs/benchmarks/&lt;suite&gt;.md (the machine, versions, settings and command, then the
/// tables), &lt;suite&gt;.json (the same figures, machine-readable) and the PNG plots the suite adds.
/// </summary>
internal sealed class Report(string suite, string settings)
{
    private readonly StringBuilder _markdown = new();
    private readonly Dictionary<string, object> _json = new();

    public static string OutputFolder { get; set; } = Path.Combine(RepoRoot(), "docs", "benchmarks");

    public string Suite { get; } = suite;

    /// <summary>A paragraph or a heading of the Markdown report.</summary>
    public void Text(string text) => _markdown.AppendLine(text).AppendLine();

    /// <summary>A Markdown table (printed to the console too) and its rows in the JSON under <paramref name="key"/>.</summary>
    public void Table(string key, string[] header, IEnumerable<object[]> rows)
    {
        var all = rows.ToList();
        _markdown.AppendLine("| " + string.Join(" | ", header) + " |");
        _markdown.AppendLine("|" + string.Concat(header.Select(_ => "---|")));
        foreach (var row in all) _markdown.AppendLine("| " + string.Join(" | ", row.Select(Format)) + " |");
        _markdown.AppendLine();
        Console.WriteLine(string.Join("  ", header));
        foreach (var row in all) Console.WriteLine(string.Join("  ", row.Select(Format)));
        Console.WriteLine();
        _json[key] = all.Select(row => header.Zip(row).ToDictionary(p => p.First, p => p.Second)).ToList();
    }

    /// <summary>Any other figures for the JSON.</summary>
    public void Data(string key, object value) => _json[key] = value;

    /// <summary>The path of a plot of this suite, named <paramref name="name"/>, referenced from the Markdown.</summary>
    public string Plot(string name, string caption)
    {
        string file = $"{Suite}-{name}.png";
        _markdown.AppendLine($"![{caption}]({file})").AppendLine();
        return Path.Combine(OutputFolder, file);
    }

    public void Write()
    {
        Directory.CreateDirectory(OutputFolder);
        var machine = Machine.Describe();
        var head = new StringBuilder();
        head.AppendLine($"# Benchmark: {Suite}").AppendLine();
        head.AppendLine($"Command: `dotnet run -c Release --project samples/RepAdapter.Benchmarks -- {Suite} {settings}`".TrimEnd('`', ' ') + "`").AppendLine();
        head.AppendLine($"Machine: {machine.Cpu}, {machine.Cores} cores, {machine.MemoryGb:F0} GB; {machine.Os}; .NET {machine.DotNet}; "
            + $"TorchSharp {machine.TorchSharp} (libtorch {machine.LibTorch}), {machine.TorchThreads} torch threads; ML.NET {machine.MLNet}; "
            + $"CPU features: {machine.Features}; commit {machine.Commit}; {machine.Date}.").AppendLine();
        File.WriteAllText(Path.Combine(OutputFolder, $"{Suite}.md"), head.ToString() + _markdown);
        _json["machine"] = machine;
        _json["command"] = $"{Suite} {settings}".Trim();
        File.WriteAllText(Path.Combine(OutputFolder, $"{Suite}.json"), JsonSerializer.Serialize(_json, new JsonSerializerOptions { WriteIndented = true }));
        Plots.RenderPending();
        Console.WriteLine($"Wrote {Path.Combine(OutputFolder, Suite)}.md, .json and plots.");
    }

    public static string Format(object value) => value switch
    {
        double d => d.ToString(Math.Abs(d) >= 100 ? "F1" : Math.Abs(d) >= 1 ? "F3" : "G3", CultureInfo.InvariantCulture),
        float f => Format((double)f),
        IFormattable x => x.ToString(null, CultureInfo.InvariantCulture),
        _ => value?.ToString() ?? "",
    };

    public static string RepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Microsoft.ML.RepAdapter.sln"))) return dir.FullName;
        return Directory.GetCurrentDirectory();
    }
}

/// <summary>The machine and versions a report was measured with.</summary>
internal sealed record Machine(string Cpu, int Cores, double MemoryGb, string Os, string DotNet, string TorchSharp, string LibTorch,
    int TorchThreads, string MLNet, string Features, string Commit, string Date)
{
    public static Machine Describe()
    {
        string cpuinfo = File.Exists("/proc/cpuinfo") ? File.ReadAllText("/proc/cpuinfo") : "";
        string Field(string name) => cpuinfo.Split('\n').FirstOrDefault(l => l.StartsWith(name))?.Split(':', 2)[1].Trim() ?? "";
        var flags = Field("flags").Split(' ');
        string features = string.Join(" ", new[] { "avx2", "avx512f", "avx512_bf16", "amx_bf16" }.Where(flags.Contains));
        double memory = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes / 1e9;
        return new Machine(Field("model name") is { Length: > 0 } cpu ? cpu : RuntimeInformation.ProcessArchitecture.ToString(), Environment.ProcessorCount,
            memory, RuntimeInformation.OSDescription, Environment.Version.ToString(), typeof(global::TorchSharp.torch).Assembly.GetName().Version?.ToString() ?? "?",
            "2.10.0", global::TorchSharp.torch.get_num_threads(), MLNetVersion(),
            features.Length > 0 ? features : "none of avx2/avx512", Git("rev-parse --short HEAD"), DateTime.UtcNow.ToString("yyyy-MM-dd HH:mm 'UTC'"));
    }

    /// <summary>The package version (the assembly version of Microsoft.ML stays 1.0.0.0).</summary>
    private static string MLNetVersion() =>
        typeof(Microsoft.ML.MLContext).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion.Split('+')[0] ?? "?";

    private static string Git(string arguments)
    {
        try
        {
            var start = new ProcessStartInfo("git", arguments) { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = Report.RepoRoot() };
            using var process = Process.Start(start)!;
            string output = process.StandardOutput.ReadToEnd().Trim();
            process.WaitForExit();
            return process.ExitCode == 0 ? output : "?";
        }
        catch (Exception)
        {
            return "?";
        }
    }
}

/// <summary>Medians, confidence intervals and process memory.</summary>
internal static class Stats
{
    public static double Median(IReadOnlyList<double> values)
    {
        var sorted = values.Order().ToArray();
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
    }

    /// <summary>A 95 % bootstrap confidence interval of the median (2,000 resamples, fixed seed).</summary>
    public static (double Low, double High) MedianInterval(IReadOnlyList<double> values, int seed = 0)
    {
        var random = new Random(seed);
        var medians = new double[2000];
        var sample = new double[values.Count];
        for (int b = 0; b < medians.Length; b++)
        {
            for (int i = 0; i < sample.Length; i++) sample[i] = values[random.Next(values.Count)];
            medians[b] = Median(sample);
        }
        Array.Sort(medians);
        return (medians[49], medians[1949]);
    }

    /// <summary>Peak resident memory of this process (VmHWM), in MB; <paramref name="reset"/> restarts the peak from now (Linux).</summary>
    public static double PeakResidentMb(bool reset = false)
    {
        if (!File.Exists("/proc/self/status")) return double.NaN;
        if (reset) File.WriteAllText("/proc/self/clear_refs", "5");
        string line = File.ReadLines("/proc/self/status").First(l => l.StartsWith("VmHWM:"));
        return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) / 1024.0;
    }
}
