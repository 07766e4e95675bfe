using Microsoft.ML.RepAdapter.Formats;
using Microsoft.ML.RepAdapter.Checkpoints;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Tests.Checkpoints;

/// <summary>Paths of the PyTorch-written fixtures, their expected outputs, and scratch files for one test.</summary>
internal static class CheckpointFiles
{
    public const float LogitTolerance = 1e-4f;

    public static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "Fixtures", name);

    /// <summary>One tensor of an expected-output fixture (e.g. "logits" of tiny_vit_expected.safetensors), as a copy.</summary>
    public static Tensor Expected(string file, string key)
    {
        using var checkpoint = CheckpointReader.Read(Fixture(file));
        return checkpoint[key].clone();
    }

    public static Tensor ViTExpected(string key) => Expected("tiny_vit_expected.safetensors", key);

    public static Tensor ResNetExpected(string key) => Expected("tiny_resnet_expected.safetensors", key);

    /// <summary>Same dtype, shape and values (bit for bit, for floats: equal values).</summary>
    public static bool Identical(Tensor a, Tensor b) =>
        a.dtype == b.dtype && a.shape.SequenceEqual(b.shape) && (a.NumberOfElements == 0 || a.eq(b).all().item<bool>());

    private static readonly Lazy<string> TempRoot = new(() =>
    {
        string root = Path.Combine(Path.GetTempPath(), $"repadapter-checkpoint-tests-{Environment.ProcessId}");
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            if (Directory.Exists(root)) Directory.Delete(root, recursive: true);
        };
        return root;
    });

    /// <summary>A fresh empty folder for one test's files, deleted when the test process exits.</summary>
    public static string TempDirectory()
    {
        string directory = Path.Combine(TempRoot.Value, Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(directory);
        return directory;
    }

    /// <summary>Writes a modified copy of a safetensors fixture: <paramref name="edit"/> changes the name -> tensor map.</summary>
    public static string EditedCopy(string fixture, Action<Dictionary<string, Tensor>> edit, string? name = null)
    {
        using var checkpoint = CheckpointReader.Read(Fixture(fixture));
        var tensors = checkpoint.Tensors.ToDictionary(p => p.Key, p => p.Value);
        edit(tensors);
        string path = Path.Combine(TempDirectory(), name ?? fixture);
        SafeTensorsWriter.Write(path, tensors, checkpoint.Metadata);
        return path;
    }

    /// <summary>The test project's source Fixtures folder (for regenerating a committed fixture), found above the output folder.</summary>
    public static string SourceFixturesDirectory()
    {
        for (var directory = new DirectoryInfo(AppContext.BaseDirectory); directory is not null; directory = directory.Parent)
        {
            string candidate = Path.Combine(directory.FullName, "test", "Microsoft.ML.RepAdapter.Tests", "Fixtures");
            if (Directory.Exists(candidate)) return candidate;
        }
        throw new DirectoryNotFoundException($"No test/Microsoft.ML.RepAdapter.Tests/Fixtures above {AppContext.BaseDirectory}.");
    }
}
