using System.Diagnostics;

namespace Microsoft.ML.RepAdapter.Tests;

/// <summary>
/// Runs test/Microsoft.ML.RepAdapter.TestHost in a separate process: for what must work in a fresh process, and for
/// inputs that could crash a process natively (a regression then fails one test instead of killing the test run).
/// </summary>
internal static class TestHost
{
    public static string AssemblyPath { get; } = Path.Combine(TestData.RepoRoot, "test", "Microsoft.ML.RepAdapter.TestHost", "bin",
        TestData.Configuration, "net10.0", "Microsoft.ML.RepAdapter.TestHost.dll");

    /// <summary>Runs the host with <paramref name="arguments"/>; returns its exit code and its output (stdout, then stderr).</summary>
    public static (int ExitCode, string Output) Run(params string[] arguments) => RunApp(AssemblyPath, arguments);

    /// <summary>Runs another built application (<c>dotnet app.dll</c>) the same way: its exit code and its output.</summary>
    public static (int ExitCode, string Output) RunApp(string assemblyPath, params string[] arguments)
    {
        Assert.IsTrue(File.Exists(assemblyPath), $"application built at {assemblyPath}");
        var start = new ProcessStartInfo("dotnet", [assemblyPath, .. arguments]) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var process = Process.Start(start)!;
        var stderr = process.StandardError.ReadToEndAsync();
        string stdout = process.StandardOutput.ReadToEnd();
        Assert.IsTrue(process.WaitForExit(600_000), $"test host finished: {string.Join(" ", arguments)}");
        return (process.ExitCode, stdout + stderr.Result);
    }

    /// <summary>
    /// Runs the host and kills it (no clean-up of any kind, as a crash or a power cut) at the first line of its output that
    /// <paramref name="killAt"/> accepts; returns the output up to then.
    /// </summary>
    public static string RunUntil(Func<string, bool> killAt, params string[] arguments)
    {
        Assert.IsTrue(File.Exists(AssemblyPath), $"test host built at {AssemblyPath}");
        var start = new ProcessStartInfo("dotnet", [AssemblyPath, .. arguments]) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var process = Process.Start(start)!;
        var stderr = process.StandardError.ReadToEndAsync();
        var output = new System.Text.StringBuilder();
        while (process.StandardOutput.ReadLine() is string line)
        {
            output.AppendLine(line);
            if (!killAt(line)) continue;
            process.Kill(entireProcessTree: true);
            break;
        }
        Assert.IsTrue(process.WaitForExit(600_000), $"test host finished: {string.Join(" ", arguments)}");
        return output + stderr.Result;
    }

    /// <summary>Runs the host, which must succeed: exit code 0 and no error reported; returns its output.</summary>
    public static string RunOk(params string[] arguments)
    {
        var (exitCode, output) = Run(arguments);
        Assert.AreEqual(0, exitCode, output);
        Assert.DoesNotContain("EXCEPTION ", output, output);
        return output;
    }

    /// <summary>
    /// Runs the host, which must survive and report a handled <typeparamref name="T"/> (exactly that type); returns the
    /// exception's message.
    /// </summary>
    public static string ExpectException<T>(params string[] arguments) where T : Exception
    {
        var (exitCode, output) = Run(arguments);
        Assert.AreEqual(0, exitCode, $"the process survived (a native crash ends it otherwise):\n{output}");
        string marker = $"EXCEPTION {typeof(T).FullName}: ";
        int at = output.IndexOf(marker, StringComparison.Ordinal);
        Assert.IsGreaterThanOrEqualTo(0, at, $"expected a {typeof(T).Name}, got:\n{output}");
        return output[(at + marker.Length)..].Trim();
    }
}
