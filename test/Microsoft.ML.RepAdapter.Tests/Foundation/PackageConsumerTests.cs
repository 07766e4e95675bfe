using System.Diagnostics;

namespace Microsoft.ML.RepAdapter.Tests.Foundation;

/// <summary>
/// `dotnet pack` produces a package that an application uses as the README says: samples/PackageConsumer, built against
/// the package from a local feed (whose build/*.targets fixes TorchSharp's native library for it, and which brings ML.NET's
/// ResNet-18 next to it), runs the README's first snippet, then loads the saved model in a new MLContext and predicts.
/// </summary>
[TestClass]
public class PackageConsumerTests
{
    [TestMethod]
    [Timeout(600_000, CooperativeCancellation = true)]
    public void AppReferencingThePackageFitsSavesLoadsAndPredicts()
    {
        string work = Path.Combine(Path.GetTempPath(), $"repadapter-consumer-{Guid.NewGuid():N}");
        string feed = Path.Combine(work, "feed"), app = Path.Combine(work, "app");
        // A fresh version each run, so the global package cache never serves a stale copy.
        string version = $"0.1.0-test.{DateTime.UtcNow:yyyyMMddHHmmss}";
        try
        {
            Run("dotnet", ["pack", Path.Combine(TestData.RepoRoot, "src", "Microsoft.ML.RepAdapter"), "-o", feed, $"-p:Version={version}"], TestData.RepoRoot);
            string package = Path.Combine(feed, $"Microsoft.ML.RepAdapter.{version}.nupkg");
            Assert.IsTrue(File.Exists(package));
            Assert.IsTrue(File.Exists(Path.ChangeExtension(package, ".snupkg")), "a symbols package beside it");
            using (var zip = System.IO.Compression.ZipFile.OpenRead(package))
            {
                var names = zip.Entries.Select(e => e.FullName).ToList();
                Assert.IsFalse(names.Any(n => n.EndsWith(".onnx", StringComparison.OrdinalIgnoreCase)),
                    "ML.NET's ResNet-18 comes with its own package, not packed into this one:\n" + string.Join("\n", names));
                Assert.IsLessThan(10L << 20, new FileInfo(package).Length, "the package holds only this library");
                using var reader = new StreamReader(zip.Entries.Single(e => e.FullName.EndsWith(".nuspec", StringComparison.Ordinal)).Open());
                string nuspec = reader.ReadToEnd();
                StringAssert.Contains(nuspec, "id=\"TorchSharp\"", "the managed TorchSharp, so that the application chooses its libtorch");
                Assert.DoesNotContain("TorchSharp-cpu", nuspec);
                StringAssert.Contains(nuspec, "<repository type=\"git\"");
            }

            TestData.CopyDirectory(Path.Combine(TestData.RepoRoot, "samples", "PackageConsumer"), app);
            // Two classes of six images: the snippet's bare call (the CPU recipe and its search) on ML.NET's ResNet-18 takes seconds.
            string images = Path.Combine(work, "images");
            foreach (var row in TestData.Images(classes: 2, perClass: 6))
            {
                Directory.CreateDirectory(Path.Combine(images, row.Label));
                File.Copy(row.ImagePath, Path.Combine(images, row.Label, Path.GetFileName(row.ImagePath)));
            }
            string output = Run("dotnet", ["run", "--project", app, $"-p:RepAdapterVersion={version}", $"-p:RepAdapterFeed={feed}", "--", images], app);
            StringAssert.Contains(output, "Test accuracy: ");
            StringAssert.Contains(output, "Reloaded in a new MLContext: ");
            Assert.IsTrue(File.Exists(Path.Combine(app, "MLModel.zip")));
            Assert.IsNotEmpty(Directory.GetFiles(Path.Combine(app, "bin"), "ResNet18.onnx", SearchOption.AllDirectories),
                "the package brings ML.NET's ResNet-18 next to the application");
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

    [TestMethod]
    public void TheReadmesFirstSnippetIsWhatThePackageConsumerRuns()
    {
        string program = File.ReadAllText(Path.Combine(TestData.RepoRoot, "samples", "PackageConsumer", "Program.cs"));
        const string Begin = "// README snippet: begin\n", End = "// README snippet: end";
        int start = program.IndexOf(Begin, StringComparison.Ordinal) + Begin.Length;
        string snippet = program[start..program.IndexOf(End, StringComparison.Ordinal)];
        string readme = File.ReadAllText(Path.Combine(TestData.RepoRoot, "README.md"));
        int firstBlock = readme.IndexOf("```csharp\n", StringComparison.Ordinal);
        Assert.IsGreaterThanOrEqualTo(0, firstBlock);
        string block = readme[firstBlock..readme.IndexOf("```\n", firstBlock + 10, StringComparison.Ordinal)];
        StringAssert.Contains(block, snippet, "README's first snippet holds samples/PackageConsumer's, verbatim");
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

}
