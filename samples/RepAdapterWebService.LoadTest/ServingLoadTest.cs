using System.Diagnostics;

namespace RepAdapterWebService.LoadTest;

/// <summary>
/// The phases run against one model kind, on one server process (restarted in the last phase): throughput and latency
/// at each concurrency level, a long run with bad bodies watching resident memory, and a run during which the server is
/// killed (SIGKILL), then stopped (SIGTERM), and each time restarted on the same port while the clients retry.
/// </summary>
internal sealed class ServingLoadTest(LoadTestArguments arguments, string serverDll, HttpClient client, IReadOnlyList<byte[]> images, Report report)
{
    private static readonly TimeSpan StartTimeout = TimeSpan.FromMinutes(2);
    // Longer than the server's own shutdown timeout (30 s): its drain is what is measured.
    private static readonly TimeSpan StopTimeout = TimeSpan.FromMinutes(1);

    public async Task RunAsync(string kind, string modelPath)
    {
        var address = new Uri($"http://127.0.0.1:{ServerProcess.FreePort()}/");
        var predict = new Uri(address, "predict");
        var health = new Uri(address, "health");
        string[] serverArguments = [.. arguments.ServerArguments(modelPath, kind, address)];
        Task<ServerProcess> Start() => ServerProcess.StartAsync(serverDll, serverArguments, client, health, StartTimeout);

        var server = await Start();
        try
        {
            // A good image must come back with one of the labels the server says it has.
            var labels = (await ServerProcess.HealthAsync(client, health)).Labels;
            var runner = new LoadRunner(client, predict, RetryPolicy.None);
            Console.WriteLine($"[{kind}] server {server.Id} on {address}; warming up");
            await runner.RunAsync(RequestBodies.Mix(images, 50, 0, seed: 1), 4, arguments.PhaseLimit);
            foreach (int clients in arguments.Levels)
            {
                var result = await runner.RunAsync(RequestBodies.Mix(images, arguments.LevelRequests, 0, seed: clients), clients, arguments.PhaseLimit);
                report.Level(kind, clients, arguments.LevelRequests, result, labels);
                Console.WriteLine($"[{kind}] {clients} clients: {result.Throughput:F1} requests/s, p50 {result.Percentile(50):F1} ms");
            }
            await LongRunAsync(kind, runner, health, labels);
            server = await RestartRunAsync(kind, server, Start, predict, labels);
            var stop = Stopwatch.StartNew();
            int exitCode = await server.TerminateAsync(StopTimeout);
            report.Check(exitCode == 0, $"[{kind}] the server stopped by SIGTERM exits with 0, not {exitCode} ({stop.Elapsed.TotalSeconds:F1} s):\n{server.Log}");
        }
        finally
        {
            server.Dispose();
        }
    }

    /// <summary>The long run: bad bodies mixed in, resident memory sampled every tenth of the requests.</summary>
    private async Task LongRunAsync(string kind, LoadRunner runner, Uri health, string[] labels)
    {
        int step = Math.Max(1, arguments.LongRequests / 10);
        var samples = new List<MemorySample>();
        using var done = new CancellationTokenSource();
        var sampler = Task.Run(async () =>
        {
            for (int next = step; !done.IsCancellationRequested;)
            {
                if (runner.Completed < next)
                {
                    await Task.Delay(20);
                    continue;
                }
                var state = await ServerProcess.HealthAsync(client, health);
                samples.Add(new MemorySample(runner.Completed, state.ResidentBytes, state.ManagedHeapBytes, state.Threads));
                next += step;
            }
        });
        Console.WriteLine($"[{kind}] long run: {arguments.LongRequests} requests, {arguments.BadFraction:P0} bad, {arguments.LongClients} clients");
        var result = await runner.RunAsync(RequestBodies.Mix(images, arguments.LongRequests, arguments.BadFraction, seed: 7), arguments.LongClients, arguments.PhaseLimit);
        done.Cancel();
        await sampler;
        report.LongRun(kind, arguments.LongRequests, arguments.LongClients, result, samples, labels);
    }

    /// <summary>A run with retrying clients, during which the server is killed and later stopped; returns the server left running.</summary>
    private async Task<ServerProcess> RestartRunAsync(string kind, ServerProcess server, Func<Task<ServerProcess>> start, Uri predict, string[] labels)
    {
        int count = arguments.RestartRequests;
        var runner = new LoadRunner(client, predict, RetryPolicy.Patient);
        Console.WriteLine($"[{kind}] restart run: {count} requests; SIGKILL after {count / 4}, SIGTERM after {count / 2}");
        var run = runner.RunAsync(RequestBodies.Mix(images, count, arguments.BadFraction, seed: 11), arguments.LongClients, arguments.PhaseLimit);

        await WhenCompleted(runner, run, count / 4);
        int killedAt = runner.Completed;
        var clock = Stopwatch.StartNew();
        server.Dispose();
        server = await start();
        double killedDown = clock.Elapsed.TotalSeconds;

        await WhenCompleted(runner, run, count / 2);
        int stoppedAt = runner.Completed;
        clock.Restart();
        int exitCode = await server.TerminateAsync(StopTimeout);
        double drain = clock.Elapsed.TotalSeconds;
        string log = server.Log;
        server.Dispose();
        server = await start();
        double stoppedDown = clock.Elapsed.TotalSeconds;

        var result = await run;
        report.Restart(kind, count, result, labels, new RestartTimes(killedAt, killedDown, stoppedAt, exitCode, drain, stoppedDown));
        report.Check(exitCode == 0, $"[{kind}] the server stopped by SIGTERM mid-load exits with 0, not {exitCode}:\n{log}");
        return server;
    }

    private static async Task WhenCompleted(LoadRunner runner, Task run, int completed)
    {
        while (runner.Completed < completed && !run.IsCompleted) await Task.Delay(10);
    }
}

/// <summary>When the server was killed and stopped (in requests answered) and how long it was away each time.</summary>
internal sealed record RestartTimes(int KilledAt, double KilledDownSeconds, int StoppedAt, int StopExitCode, double DrainSeconds, double StoppedDownSeconds);
