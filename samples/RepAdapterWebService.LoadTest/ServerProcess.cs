using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text.Json;

namespace RepAdapterWebService.LoadTest;

/// <summary>
/// The web service as a child process (dotnet RepAdapterWebService.dll), so that it can be killed and restarted mid-load.
/// Its output is kept (the last lines) to explain a failure.
/// </summary>
internal sealed class ServerProcess : IDisposable
{
    private const int SignalTerminate = 15;
    private readonly Process _process;
    private readonly Queue<string> _lastLines = new();

    private ServerProcess(Process process)
    {
        _process = process;
        _process.OutputDataReceived += (_, e) => Keep(e.Data);
        _process.ErrorDataReceived += (_, e) => Keep(e.Data);
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
    }

    public int Id => _process.Id;

    public bool HasExited => _process.HasExited;

    /// <summary>The last lines the server wrote.</summary>
    public string Log
    {
        get
        {
            lock (_lastLines) return string.Join('\n', _lastLines);
        }
    }

    /// <summary>A port no one listens on now (the OS's choice), to give a server that must come back on the same one.</summary>
    public static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    /// <summary>Starts <paramref name="serverDll"/> with <paramref name="arguments"/> and waits until /health answers.</summary>
    public static async Task<ServerProcess> StartAsync(string serverDll, IEnumerable<string> arguments, HttpClient client, Uri health, TimeSpan timeout)
    {
        if (!File.Exists(serverDll)) throw new FileNotFoundException($"The web service is not built at {serverDll}.", serverDll);
        var start = new ProcessStartInfo("dotnet", [serverDll, .. arguments]) { RedirectStandardOutput = true, RedirectStandardError = true };
        var server = new ServerProcess(Process.Start(start) ?? throw new InvalidOperationException($"dotnet {serverDll} did not start."));
        var clock = Stopwatch.StartNew();
        while (true)
        {
            if (server.HasExited)
                throw new InvalidOperationException($"The web service exited with code {server._process.ExitCode} before answering /health:\n{server.Log}");
            try
            {
                using var response = await client.GetAsync(health);
                if (response.IsSuccessStatusCode) return server;
            }
            catch (HttpRequestException)
            {
                // Not listening yet.
            }
            if (clock.Elapsed > timeout)
            {
                server.Kill();
                throw new TimeoutException($"The web service did not answer /health within {timeout.TotalSeconds} s:\n{server.Log}");
            }
            await Task.Delay(100);
        }
    }

    /// <summary>What the server's /health reports: its labels, its resident memory (VmRSS), its managed heap and its threads.</summary>
    public static async Task<(string[] Labels, long ResidentBytes, long ManagedHeapBytes, int Threads)> HealthAsync(HttpClient client, Uri health)
    {
        using var json = JsonDocument.Parse(await client.GetStringAsync(health));
        var root = json.RootElement;
        var labels = root.GetProperty("labels").EnumerateArray().Select(l => l.GetString() ?? "").ToArray();
        return (labels, root.GetProperty("residentBytes").GetInt64(), root.GetProperty("managedHeapBytes").GetInt64(), root.GetProperty("threads").GetInt32());
    }

    /// <summary>Kills the server at once (SIGKILL): no request is finished, nothing is cleaned up, as in a crash.</summary>
    public void Kill()
    {
        if (!_process.HasExited) _process.Kill(entireProcessTree: true);
        _process.WaitForExit();
    }

    /// <summary>Asks the server to stop (SIGTERM, as a container runtime does) and returns its exit code once it has.</summary>
    public async Task<int> TerminateAsync(TimeSpan timeout)
    {
        if (!_process.HasExited && Terminate(_process.Id, SignalTerminate) != 0)
            throw new InvalidOperationException($"SIGTERM to process {_process.Id} failed (errno {Marshal.GetLastPInvokeError()}).");
        using var wait = new CancellationTokenSource(timeout);
        await _process.WaitForExitAsync(wait.Token);
        return _process.ExitCode;
    }

    public void Dispose()
    {
        Kill();
        _process.Dispose();
    }

    private void Keep(string? line)
    {
        if (line is null) return;
        lock (_lastLines)
        {
            _lastLines.Enqueue(line);
            if (_lastLines.Count > 40) _lastLines.Dequeue();
        }
    }

    // .NET has no SIGTERM for another process (Process.Kill is SIGKILL).
    [DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static extern int Terminate(int pid, int signal);
}
