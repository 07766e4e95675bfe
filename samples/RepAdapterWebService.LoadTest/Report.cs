using System.Globalization;
using System.Text;

namespace RepAdapterWebService.LoadTest;

/// <summary>The measured figures as Markdown tables, and the checks that failed.</summary>
internal sealed class Report
{
    private readonly StringBuilder _levels = new("| model | clients | requests | time s | requests/s | p50 ms | p95 ms | p99 ms | not 200 |\n|---|---|---|---|---|---|---|---|---|\n");
    private readonly StringBuilder _long = new("| model | requests (bad) | clients | time s | requests/s | good -> 200 | bad -> 400 | 5xx | other | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    private readonly StringBuilder _memory = new();
    private readonly StringBuilder _restart = new("| model | requests (bad) | SIGKILL after | back after s | SIGTERM after | exit code | drained in s | back after s | retried requests | most attempts | max latency ms | not as expected |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");

    public List<string> Failures { get; } = [];

    public void Check(bool ok, string failure)
    {
        if (!ok) Failures.Add(failure);
    }

    public void Level(string kind, int clients, int requests, LoadResult result, IReadOnlyCollection<string> labels)
    {
        int not200 = result.Count(o => o.Status != 200);
        _levels.AppendLine(Row(kind, clients, Cut(requests, result), F(result.Elapsed.TotalSeconds, 1), F(result.Throughput, 1),
            F(result.Percentile(50), 1), F(result.Percentile(95), 1), F(result.Percentile(99), 1), not200));
        CheckAll($"[{kind}] {clients} clients", result, labels);
    }

    public void LongRun(string kind, int requests, int clients, LoadResult result, IReadOnlyList<MemorySample> memory, IReadOnlyCollection<string> labels)
    {
        int bad = result.Count(o => o.Kind != BodyKind.Good);
        int good200 = result.Count(o => o.Kind == BodyKind.Good && o.Status == 200);
        int bad400 = result.Count(o => o.Kind != BodyKind.Good && o.Status == 400);
        int server = result.Count(o => o.Status >= 500);
        _long.AppendLine(Row(kind, $"{Cut(requests, result)} ({bad})", clients, F(result.Elapsed.TotalSeconds, 1), F(result.Throughput, 1),
            $"{good200} of {result.Outcomes.Count - bad}", $"{bad400} of {bad}", server, result.Outcomes.Count - good200 - bad400 - server,
            F(result.Percentile(50), 1), F(result.Percentile(99), 1)));
        if (memory.Count > 0)
        {
            double first = memory[0].Bytes / 1048576.0, last = memory[^1].Bytes / 1048576.0;
            _memory.AppendLine($"- {kind}: " + string.Join(", ", memory.Select(m => $"{m.Completed}: {m.Bytes / 1048576.0:F0}")) +
                $" MiB (requests answered: resident memory); last - first {last - first:+0;-0} MiB, max {memory.Max(m => m.Bytes) / 1048576.0:F0} MiB; "
                + $"managed heap {memory[0].ManagedBytes / 1048576.0:F0} -> {memory[^1].ManagedBytes / 1048576.0:F0} MiB, threads {memory[0].Threads} -> {memory[^1].Threads}");
        }
        Check(server == 0, $"[{kind}] long run: {server} responses 5xx");
        CheckAll($"[{kind}] long run", result, labels);
    }

    public void Restart(string kind, int requests, LoadResult result, IReadOnlyCollection<string> labels, RestartTimes times)
    {
        int bad = result.Count(o => o.Kind != BodyKind.Good);
        _restart.AppendLine(Row(kind, $"{Cut(requests, result)} ({bad})", times.KilledAt, F(times.KilledDownSeconds, 1), times.StoppedAt, times.StopExitCode,
            F(times.DrainSeconds, 1), F(times.StoppedDownSeconds, 1), result.Count(o => o.Attempts > 1), result.Outcomes.Max(o => o.Attempts),
            F(result.Outcomes.Max(o => o.Milliseconds), 0), result.Count(o => !o.AsExpected)));
        CheckAll($"[{kind}] restart run", result, labels);
    }

    public string ToMarkdown() =>
        $"### Throughput and latency (good images only)\n\n{_levels}\n### {LongTitle}\n\n{_long}\nResident memory of the server (VmRSS from its /health):\n\n{_memory}\n" +
        $"### Killed and restarted mid-load (clients retry with back-off)\n\n{_restart}";

    private const string LongTitle = "Long run with bad bodies (truncated images, random bytes, empty bodies in turn)";

    private void CheckAll(string what, LoadResult result, IReadOnlyCollection<string> labels)
    {
        Check(!result.CutShort, $"{what}: cut short by the time limit after {result.Outcomes.Count} requests");
        foreach (var problem in result.Problems(labels)) Failures.Add($"{what}: {problem}");
    }

    private static string Cut(int requests, LoadResult result) => result.CutShort ? $"{result.Outcomes.Count} of {requests} (time limit)" : requests.ToString(CultureInfo.InvariantCulture);

    private static string F(double value, int decimals) => value.ToString($"F{decimals}", CultureInfo.InvariantCulture);

    private static string Row(params object[] cells) => $"| {string.Join(" | ", cells.Select(c => Convert.ToString(c, CultureInfo.InvariantCulture)))} |";
}

/// <summary>The server's state after <see cref="Completed"/> answers: resident memory, its managed heap, its threads.</summary>
internal sealed record MemorySample(int Completed, long Bytes, long ManagedBytes, int Threads);
