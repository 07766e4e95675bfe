using System.Diagnostics;

namespace Microsoft.ML.RepAdapter.Tests.Foundation;

/// <summary>
/// `dotnet pack` produces a package whose build/*.targets fixes TorchSharp's native library for the consuming
/// application too: samples/PackageConsumer, built against the package from a local feed, runs TorchSharp.
/// </summary>
[TestClass]
public class PackageConsumerTests
{
    [TestMethod]
    [Timeout(600_000, CooperativeCancellation = true)]
    public void AppReferencingThePackageFromALocalFeedRunsTorchSharp()
    {
        string work = Path.Combine(Path.GetTempPath(), $"repadapter-consumer-{Guid.NewGuid():N}");
        string feed = Path.Combine(work, "feed"), app = Path.Combine(work, "app");
        // A fresh version each run, so the global package cache never serves a stale copy.
        string version = $"0.1.0-test.{DateTime.UtcNow:yyyyMMddHHmmss}";
        try
        {
            Run("dotnet", ["pack", Path.Combine(TestData.RepoRoot, "src", "Microsoft.ML.RepAdapter"), "-o", feed, $"-p:Version={version}"], TestData.RepoRoot);
            Assert.IsTrue(File.Exists(Path.Combine(feed, $"Microsoft.ML.RepAdapter.{version}.nupkg")));

            CopyDirectory(Path.Combine(TestData.RepoRoot, "samples", "PackageConsumer"), app);
            string output = Run("dotnet", ["run", "--project", app, $"-p:RepAdapterVersion={version}", $"-p:RepAdapterFeed={feed}"], app);
            StringAssert.Contains(output, "TorchSharp loaded; merged 4 adapters");
        }
        finally
        {
            if (Directory.Exists(work)) Directory.Delete(work, recursive: true);
            // Restore copied this one-off version into the global package cache: remove it again.
            string packages = Environment.GetEnvironmentVariable("NUGET_PACKAGES")
                ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
            string cached = Path.Combine(packages, "microsoft.ml.repadapter", version);
            if (Directory.Exists(cached)) Directory.Delete(cached, recursive: true);
        }
    }

    private static string Run(string file, string[] args, string directory)
    {
        var start = new ProcessStartInfo(file, args) { WorkingDirectory = directory, RedirectStandardOutput = true, RedirectStandardError = true };
        using var process = Process.Start(start)!;
        var stderr = process.StandardError.ReadToEndAsync();
        string stdout = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        Assert.AreEqual(0, process.ExitCode, $"{file} {string.Join(' ', args)}\n{stdout}\n{stderr.Result}");
        return stdout;
    }

    private static void CopyDirectory(string source, string target)
    {
        foreach (var file in Directory.EnumerateFiles(source, "*", SearchOption.AllDirectories))
        {
            string relative = Path.GetRelativePath(source, file);
            if (relative.Split(Path.DirectorySeparatorChar)[0] is "bin" or "obj") continue;
            Directory.CreateDirectory(Path.GetDirectoryName(Path.Combine(target, relative))!);
            File.Copy(file, Path.Combine(target, relative));
        }
    }
}
