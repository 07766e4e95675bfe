using System.Globalization;

namespace RepAdapterWebService;

/// <summary>
/// GET /health: what is served and how busy the service is, with its resident memory (to watch it stay flat), the
/// managed heap's share of it and the process's threads (native memory grows with the threads libtorch is called from).
/// </summary>
public sealed record Health(string Status, string Kind, string Input, IReadOnlyList<string> Labels, long Scoring, long Queued, long ResidentBytes,
    long ManagedHeapBytes, int Threads);

internal static class HealthEndpoint
{
    public static Health Read(ImageClassifier classifier, ScoringGate gate) =>
        new("ok", classifier.Kind.ToString().ToLowerInvariant(), classifier.Input, classifier.Labels, gate.Scoring, gate.Queued, ResidentBytes(),
            GC.GetGCMemoryInfo().HeapSizeBytes, System.Diagnostics.Process.GetCurrentProcess().Threads.Count);

    /// <summary>VmRSS from /proc/self/status on Linux (what `ps` and the OOM killer see); elsewhere the working set.</summary>
    private static long ResidentBytes()
    {
        const string Status = "/proc/self/status";
        if (File.Exists(Status))
        {
            foreach (string line in File.ReadLines(Status))
            {
                // "VmRSS:     123456 kB"
                if (line.StartsWith("VmRSS:", StringComparison.Ordinal)
                    && long.TryParse(line["VmRSS:".Length..].Trim().Split(' ')[0], NumberStyles.Integer, CultureInfo.InvariantCulture, out long kilobytes))
                    return kilobytes * 1024;
            }
        }
        return Environment.WorkingSet;
    }
}
