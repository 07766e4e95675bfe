using System.Globalization;

namespace RepAdapterWebService.LoadTest;

/// <summary>
/// Settings of a load test run. Every phase is bounded twice: by its request count and by <see cref="PhaseLimit"/>
/// (a phase cut short says so in the report).
/// </summary>
/// <param name="ModelFolder">model.zip and model.onnx.zip to serve; null: train them first.</param>
/// <param name="Kinds">The model kinds to serve, in turn.</param>
/// <param name="Epochs">Training epochs of the model trained first (the recipe search is off).</param>
/// <param name="ImageSize">Its input resolution (ML.NET's ResNet-18).</param>
/// <param name="LevelRequests">Good requests at each concurrency level.</param>
/// <param name="Levels">Concurrent clients of the throughput and latency phases.</param>
/// <param name="LongRequests">Requests of the long run (bad ones included), at <see cref="LongClients"/> clients.</param>
/// <param name="BadFraction">Share of bad bodies in the long run and the restart run.</param>
/// <param name="RestartRequests">Requests of the run during which the server is killed, then stopped, and restarted.</param>
/// <param name="ServerConcurrency">The server's --concurrency (null: its default, one per core).</param>
/// <param name="ServerQueue">The server's --queue.</param>
internal sealed record LoadTestArguments(string? ModelFolder, IReadOnlyList<string> Kinds, int Epochs, int ImageSize, int LevelRequests,
    IReadOnlyList<int> Levels, int LongRequests, int LongClients, double BadFraction, int RestartRequests, int? ServerConcurrency, int ServerQueue,
    TimeSpan PhaseLimit)
{
    public const string Usage =
        "usage: RepAdapterWebService.LoadTest [--model-folder DIR] [--kinds torch,onnx] [--epochs 2] [--image-size 112] [--level-requests 400]\n" +
        "       [--levels 1,4,16] [--long-requests 10000] [--long-clients 4] [--bad-fraction 0.1] [--restart-requests 1000]\n" +
        "       [--server-concurrency N] [--server-queue 64] [--phase-limit SECONDS]";

    public static LoadTestArguments Parse(IReadOnlyList<string> args)
    {
        var a = new LoadTestArguments(null, ["torch", "onnx"], 2, 112, 400, [1, 4, 16], 10_000, 4, 0.1, 1_000, null, 64,
            TimeSpan.FromMinutes(5));
        for (int i = 0; i < args.Count; i += 2)
        {
            string name = args[i];
            string value = i + 1 < args.Count ? args[i + 1] : throw new ArgumentException($"{name} needs a value.");
            a = name switch
            {
                "--model-folder" => a with { ModelFolder = value },
                "--kinds" => a with { Kinds = [.. value.Split(',').Select(k => k.Trim().ToLowerInvariant())] },
                "--epochs" => a with { Epochs = Integer(name, value) },
                "--image-size" => a with { ImageSize = Integer(name, value) },
                "--level-requests" => a with { LevelRequests = Integer(name, value) },
                "--levels" => a with { Levels = [.. value.Split(',').Select(l => Integer(name, l))] },
                "--long-requests" => a with { LongRequests = Integer(name, value) },
                "--long-clients" => a with { LongClients = Integer(name, value) },
                "--bad-fraction" => a with { BadFraction = double.Parse(value, CultureInfo.InvariantCulture) },
                "--restart-requests" => a with { RestartRequests = Integer(name, value) },
                "--server-concurrency" => a with { ServerConcurrency = Integer(name, value) },
                "--server-queue" => a with { ServerQueue = Integer(name, value) },
                "--phase-limit" => a with { PhaseLimit = TimeSpan.FromSeconds(double.Parse(value, CultureInfo.InvariantCulture)) },
                _ => throw new ArgumentException($"Unknown option '{name}'."),
            };
        }
        if (a.Kinds.Count == 0 || a.Kinds.Any(k => k is not ("torch" or "onnx"))) throw new ArgumentException($"--kinds lists torch and/or onnx, not '{string.Join(",", a.Kinds)}'.");
        if (a.Levels.Any(l => l < 1) || a.LongClients < 1) throw new ArgumentException("Client counts must be at least 1.");
        if (a.BadFraction is < 0 or > 1) throw new ArgumentException($"--bad-fraction must be within 0..1, not {a.BadFraction}.");
        return a;
    }

    /// <summary>The arguments the server is started with.</summary>
    public IEnumerable<string> ServerArguments(string modelPath, string kind, Uri address)
    {
        string[] common = ["--model", modelPath, "--kind", kind, "--urls", address.ToString().TrimEnd('/'),
            "--queue", ServerQueue.ToString(CultureInfo.InvariantCulture)];
        return ServerConcurrency is int n ? [.. common, "--concurrency", n.ToString(CultureInfo.InvariantCulture)] : common;
    }

    private static int Integer(string name, string value) =>
        int.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out int parsed) ? parsed : throw new ArgumentException($"{name} needs an integer, not '{value}'.");
}
