using System.Diagnostics;
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
        var rows = TestData.Images("train", classes: 3, perClass: 8);
        var keyed = mlContext.Transforms.Conversion.MapValueToKey("Label").Fit(mlContext.Data.LoadFromEnumerable(rows))
            .Transform(mlContext.Data.LoadFromEnumerable(rows));
        // The saved pipeline starts from image paths, as a scoring application would.
        var model = mlContext.Transforms.LoadImages("Image", "", nameof(ImageRow.ImagePath))
            .Append(mlContext.MulticlassClassification.Trainers.RepAdapter(TinyTrainerOptions.Create(epochs: 2)))
            .Fit(keyed);
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
            string host = Path.Combine(TestData.RepoRoot, "test", "Microsoft.ML.RepAdapter.ScoringHost", "bin", TestData.Configuration, "net10.0",
                "Microsoft.ML.RepAdapter.ScoringHost.dll");
            Assert.IsTrue(File.Exists(host), $"scoring host built at {host}");
            var start = new ProcessStartInfo("dotnet", [host, _modelPath, imageList, output]) { RedirectStandardOutput = true, RedirectStandardError = true };
            using var process = Process.Start(start)!;
            string stdout = process.StandardOutput.ReadToEnd(), stderr = process.StandardError.ReadToEnd();
            Assert.IsTrue(process.WaitForExit(120_000), "scoring host finished");
            Assert.AreEqual(0, process.ExitCode, stdout + stderr);

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
        AssertClose(saved.scores, scores, $"{kind} model saved by the first release");
    }

    private sealed record SavedScores(string[] images, float[][] scores);

    private static void AssertClose(IReadOnlyList<float[]> expected, IReadOnlyList<float[]> actual, string what)
    {
        Assert.HasCount(expected.Count, actual, what);
        for (int i = 0; i < expected.Count; i++)
        {
            Assert.HasCount(expected[i].Length, actual[i], $"{what}, row {i}");
            for (int k = 0; k < expected[i].Length; k++)
                Assert.AreEqual(expected[i][k], actual[i][k], 1e-6f, $"{what}, row {i}, class {k}");
        }
    }
}
