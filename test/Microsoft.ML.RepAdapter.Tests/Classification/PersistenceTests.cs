using System.IO.Compression;
using System.Reflection;
using System.Security.Cryptography;
using System.Text.Json;
using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Classification;

namespace Microsoft.ML.RepAdapter.Tests.Classification;

/// <summary>The saved .zip holds the merged model; another process loads it and scores identically.</summary>
[TestClass]
public class PersistenceTests
{
    private static string _modelPath = "";
    private static List<ImageRow> _images = [];
    private static float[][] _scores = [];

    [ClassInitialize]
    public static void TrainAndSave(TestContext _)
    {
        var mlContext = new MLContext(seed: 1);
        // The saved pipeline starts from image paths, as a scoring application would.
        var model = TestData.TinyModelFromPaths(mlContext);
        _images = TestData.Images("test", classes: 3, perClass: 4);
        var input = mlContext.Data.LoadFromEnumerable(_images);
        _scores = [.. model.Transform(input).GetColumn<float[]>("Score")];
        _modelPath = Path.Combine(Path.GetTempPath(), $"repadapter-{Guid.NewGuid():N}.zip");
        mlContext.Model.Save(model, input.Schema, _modelPath);
    }

    [ClassCleanup]
    public static void Cleanup() => File.Delete(_modelPath);

    [TestMethod]
    public void ReloadedModelScoresIdenticallyInThisProcess()
    {
        var mlContext = new MLContext(seed: 2);
        var loaded = mlContext.Model.Load(_modelPath, out _);
        var scores = loaded.Transform(mlContext.Data.LoadFromEnumerable(_images)).GetColumn<float[]>("Score").ToList();
        AssertClose(_scores, scores, "batch Transform after Load");

        var transformer = ((IEnumerable<ITransformer>)loaded).OfType<RepAdapterImageClassificationTransformer>().Single();
        Assert.IsFalse(transformer.Model.AdaptedLayers().Any(), "the .zip holds the merged network");
        CollectionAssert.AreEqual(new[] { "Ankle_boot", "Bag", "Coat" }, transformer.LabelNames.ToArray());
        Assert.AreEqual(1f, transformer.AdapterScale);
        Assert.IsGreaterThan(0L, transformer.TrainableParameterCount);
    }

    [TestMethod]
    public void AnotherProcessLoadsTheZipAndScoresIdentically()
    {
        string imageList = Path.GetTempFileName(), output = Path.GetTempFileName();
        try
        {
            File.WriteAllLines(imageList, _images.Select(i => i.ImagePath));
            TestHost.RunOk("score", _modelPath, imageList, output);

            var result = JsonSerializer.Deserialize<Dictionary<string, float[][]>>(File.ReadAllText(output))!;
            AssertClose(_scores, result["engine"], "PredictionEngine in another process");
            AssertClose(_scores, result["batch"], "batch Transform in another process");
        }
        finally
        {
            File.Delete(imageList);
            File.Delete(output);
        }
    }

    [TestMethod]
    [DataRow("vit")]
    [DataRow("resnet_basic")]
    public void ModelsSavedByTheFirstReleaseStillLoadAndScoreTheSame(string kind)
    {
        // Written by the library at commit 8655b23 (model format 0x00010001): the .zip and the scores it gave then.
        string zip = TestData.Fixture(Path.Combine("saved_models", $"saved_v1_{kind}.zip"));
        var saved = JsonSerializer.Deserialize<SavedScores>(File.ReadAllText(Path.ChangeExtension(zip, ".json")))!;
        var mlContext = new MLContext(seed: 3);
        var model = mlContext.Model.Load(zip, out _);
        var rows = saved.images.Select(path => new ImageRow { ImagePath = Path.Combine(TestData.RepoRoot, path) });
        var scores = model.Transform(mlContext.Data.LoadFromEnumerable(rows)).GetColumn<float[]>("Score").ToList();
        // Scored then on the development machine: other CPUs' kernels round differently, hence a looser tolerance.
        AssertClose(saved.scores, scores, $"{kind} model saved by the first release", tolerance: 1e-4f);
    }

    /// <summary>A copy of the saved model whose merged-weights stream <paramref name="edit"/> rewrites (checksum kept or updated).</summary>
    private static string EditedModel(Func<byte[], byte[]> edit, bool updateChecksum)
    {
        string path = Path.Combine(Path.GetTempPath(), $"repadapter-edited-{Guid.NewGuid():N}.zip");
        File.Copy(_modelPath, path);
        using var zip = ZipFile.Open(path, ZipArchiveMode.Update);
        var entry = zip.Entries.Single(e => e.FullName.EndsWith("/TorchModel", StringComparison.Ordinal));
        string name = entry.FullName;
        byte[] weights = edit(Read(entry));
        entry.Delete();
        using (var stream = zip.CreateEntry(name).Open()) stream.Write(weights);
        if (updateChecksum)
        {
            // Both checksums made to match, as a forger would: what lies behind them must still be refused.
            byte[] hash = SHA256.HashData(weights);
            Rewrite(zip, name + ".sha256", hash);
            Rewrite(zip, name[..name.LastIndexOf('/')] + "/Model.sha256", SavedTransformer().ContentChecksum(hash));
        }
        return path;
    }

    private static byte[] Read(ZipArchiveEntry entry)
    {
        using var stream = entry.Open();
        using var buffer = new MemoryStream();
        stream.CopyTo(buffer);
        return buffer.ToArray();
    }

    private static void Rewrite(ZipArchive zip, string name, byte[] content)
    {
        zip.GetEntry(name)!.Delete();
        using var stream = zip.CreateEntry(name).Open();
        stream.Write(content);
    }

    /// <summary>The saved model's transformer, loaded (intact) from the saved .zip.</summary>
    private static RepAdapterImageClassificationTransformer SavedTransformer() =>
        ((TransformerChain<ITransformer>)new MLContext().Model.Load(_modelPath, out _)).OfType<RepAdapterImageClassificationTransformer>().Single();

    private static Exception LoadFails(string path, string named = "'TorchModel'")
    {
        try
        {
            // ML.NET calls each loader by reflection (the chain's, then the transformer's) and wraps what it throws: only
            // those wrappers stand around the library's own error, which names the entry and the cause.
            var error = Assert.ThrowsExactly<TargetInvocationException>(() => new MLContext(seed: 4).Model.Load(path, out _));
            Exception cause = error;
            while (cause is TargetInvocationException { InnerException: { } inner }) cause = inner;
            Assert.AreEqual(typeof(InvalidDataException), cause.GetType(), cause.ToString());
            Assert.IsNull(cause.InnerException, "the message carries the cause");
            StringAssert.Contains(cause.Message, named);
            return cause;
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>A copy of the saved model whose main stream (columns, settings, description, labels) has <paramref name="from"/> replaced.</summary>
    private static string EditedDescription(string from, string to, bool forgeChecksum)
    {
        Assert.AreEqual(from.Length, to.Length, "the BinaryWriter length prefix stays right");
        string path = Path.Combine(Path.GetTempPath(), $"repadapter-edited-{Guid.NewGuid():N}.zip");
        File.Copy(_modelPath, path);
        using (var zip = ZipFile.Open(path, ZipArchiveMode.Update))
        {
            var entry = zip.Entries.Single(e => e.FullName.EndsWith("/TorchModel", StringComparison.Ordinal));
            string directory = entry.FullName[..entry.FullName.LastIndexOf('/')];
            var main = zip.GetEntry(directory + "/Model.key")!;
            byte[] bytes = Read(main);
            string text = System.Text.Encoding.Latin1.GetString(bytes);
            int at = text.IndexOf(from, StringComparison.Ordinal);
            Assert.IsGreaterThanOrEqualTo(0, at, $"'{from}' is in the saved description");
            System.Text.Encoding.Latin1.GetBytes(to).CopyTo(bytes, at);
            Rewrite(zip, main.FullName, bytes);
            if (forgeChecksum)
            {
                // The forger recomputes the content checksum for the edited description; the bounds must still hold.
                var original = SavedTransformer();
                byte[] weights = Read(zip.GetEntry(directory + "/TorchModel.sha256")!);
                var json = original.Model.Describe().ToJson();
                int first = json.IndexOf(from, StringComparison.Ordinal);
                json = json[..first] + to + json[(first + from.Length)..];      // the first occurrence, as in the stream
                Rewrite(zip, directory + "/Model.sha256", original.ContentChecksumWithDescription(json, weights));
            }
        }
        return path;
    }

    [TestMethod]
    public void AnEditedImageSizeMeanOrDescriptionFailsTheContentChecksum()
    {
        string json = SavedTransformer().Model.Describe().ToJson();
        string size = System.Text.RegularExpressions.Regex.Match(json, "\"ImageSize\":\\d+").Value;
        string edited = size[..^1] + (size[^1] == '1' ? '2' : '1');
        // The image size, the normalisation mean and a label name: each would load and score differently.
        foreach (var (from, to) in new[] { (size, edited), ("0.485", "0.495"), ("Coat", "Cost") })
        {
            var error = LoadFails(EditedDescription(from, to, forgeChecksum: false), "'Model.sha256'");
            StringAssert.Contains(error.Message, "do not match its SHA-256 checksum", $"{from} -> {to}");
        }
    }

    [TestMethod]
    public void ADescriptionWithAHugeOrNegativeDimensionIsRefusedBeforeAnyModuleIsBuilt()
    {
        string json = SavedTransformer().Model.Describe().ToJson();
        string size = System.Text.RegularExpressions.Regex.Match(json, "\"ImageSize\":\\d\\d").Value;
        Assert.IsNotEmpty(size, json);
        StringAssert.Contains(json, "0.485");
        var huge = LoadFails(EditedDescription("0.485", "9e+99", forgeChecksum: true), "network description");
        StringAssert.Contains(huge.Message, "every number must lie in [0, 65536]");
        var negative = LoadFails(EditedDescription(size, ("\"ImageSize\":-" + size[^1])[..size.Length], forgeChecksum: true), "network description");
        StringAssert.Contains(negative.Message, "every number must lie in [0, 65536]");
    }

    [TestMethod]
    public void ASavedModelWithNaNWeightsIsRefusedAtLoadNamingTheTensor()
    {
        // The stream ends with the last tensor's data: its last float becomes NaN; the checksum is made to match.
        var error = LoadFails(EditedModel(w => [.. w[..^4], .. BitConverter.GetBytes(float.NaN)], updateChecksum: true));
        StringAssert.Contains(error.Message, "non-finite");
        StringAssert.Contains(error.Message, "'head.bias'");
    }

    [TestMethod]
    public void ASavedModelWithAlteredWeightsFailsItsChecksum()
    {
        var error = LoadFails(EditedModel(w => [.. w[..^4], .. BitConverter.GetBytes(BitConverter.ToSingle(w, w.Length - 4) + 1f)], updateChecksum: false));
        StringAssert.Contains(error.Message, "does not match its SHA-256 checksum");
    }

    [TestMethod]
    public void ADamagedWeightsStreamIsRefusedNamingTheEntry()
    {
        var error = LoadFails(EditedModel(w => [.. w[..8], .. Enumerable.Repeat((byte)0xFF, 16), .. w[24..]], updateChecksum: true));
        // The 16 bytes land in the first tensor's name.
        StringAssert.Contains(error.Message, "weights stream could not be read (ArgumentException: Mismatched module state names");
    }

    [TestMethod]
    public void AWeightsStreamWithATensorMissingIsRefusedNamingTheEntry()
    {
        // The stream starts with its tensor count (7-bit encoded; under 128 here): one fewer than the model has.
        var error = LoadFails(EditedModel(w => [(byte)(w[0] - 1), .. w[1..]], updateChecksum: true));
        StringAssert.Contains(error.Message, "weights stream could not be read (");
        StringAssert.Contains(error.Message, "Mismatched state_dict sizes");
    }

    [TestMethod]
    public void AModelWithNaNWeightsIsNotSaved()
    {
        var mlContext = new MLContext(seed: 5);
        var loaded = mlContext.Model.Load(_modelPath, out var schema);
        var transformer = ((IEnumerable<ITransformer>)loaded).OfType<RepAdapterImageClassificationTransformer>().Single();
        using (TorchSharp.torch.no_grad()) transformer.Model.named_parameters().Single(p => p.name == "blocks.1.mlp.fc2.weight").parameter[0, 0] = float.NaN;
        string path = Path.Combine(Path.GetTempPath(), $"repadapter-nan-{Guid.NewGuid():N}.zip");
        var error = Assert.ThrowsExactly<InvalidOperationException>(() => mlContext.Model.Save(loaded, schema, path));
        StringAssert.Contains(error.Message, "'blocks.1.mlp.fc2.weight'");
        File.Delete(path);
    }

    [TestMethod]
    public void NaNScoresPredictNoClass()
    {
        Assert.AreEqual(0u, RepAdapterImageClassificationTransformer.PredictedKey([0.2f, float.NaN, 0.5f]));
        Assert.AreEqual(3u, RepAdapterImageClassificationTransformer.PredictedKey([0.2f, 0.3f, 0.5f]));
    }

    private sealed record SavedScores(string[] images, float[][] scores);

    /// <summary>Same scores up to <paramref name="tolerance"/>: by default, the rounding of other batch sizes on this machine.</summary>
    internal static void AssertClose(IReadOnlyList<float[]> expected, IReadOnlyList<float[]> actual, string what, float tolerance = 1e-5f)
    {
        Assert.HasCount(expected.Count, actual, what);
        for (int i = 0; i < expected.Count; i++)
        {
            Assert.HasCount(expected[i].Length, actual[i], $"{what}, row {i}");
            for (int k = 0; k < expected[i].Length; k++)
                Assert.AreEqual(expected[i][k], actual[i][k], tolerance, $"{what}, row {i}, class {k}");
        }
    }
}
