using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Classification;
using Microsoft.ML.RepAdapter.MLNet;

namespace Microsoft.ML.RepAdapter.Tests.Classification;

/// <summary>
/// Every method through the catalog, as a user picks one (<c>Method = ...</c>, the rest the CPU recipe's): trained on
/// ML.NET's pretrained ResNet-18 (convolution sites) and a tiny ViT (linear sites), merged, saved with its whole adapter
/// configuration, reloaded and scored the same.
/// </summary>
[TestClass]
public class MethodTrainingTests
{
    public static IEnumerable<object[]> Methods => AdapterMethods.All.Select(m => new object[] { m.Id });

    [TestMethod]
    [DynamicData(nameof(Methods))]
    public void EveryMethodTrainsMergesSavesAndReloadsOnMLNetsResNet18(AdaptationMethod method)
    {
        var mlContext = new MLContext(seed: 1);
        var log = TestData.CaptureLog(mlContext, e => e.Source.Contains("RepAdapter"));
        var train = mlContext.Data.LoadFromEnumerable(TestData.Images("train", classes: 3, perClass: 8));
        var options = new RepAdapterImageClassificationTrainer.Options
        {
            Method = method,
            Epochs = 4,          // the recipe's other levers: 112 px, last 3 blocks, its scale (1 for SSF / RLRR), lr 3e-3
            TimeBudget = TimeSpan.Zero,
        };
        var pipeline = mlContext.Transforms.Conversion.MapValueToKey("Label")
            .Append(mlContext.Transforms.LoadImages("Image", "", nameof(ImageRow.ImagePath)))
            .Append(mlContext.MulticlassClassification.Trainers.RepAdapter(options));
        var model = pipeline.Fit(train);
        var transformer = model.LastTransformer;

        var adapters = transformer.Summary.Adapters!;
        Assert.AreEqual(method, adapters.Method);
        Assert.AreEqual(3, adapters.LastBlocks);
        Assert.AreEqual(AdapterMethods.Of(method).UsesScale ? 10f : 1f, adapters.Scale, "the recipe's s, or 1 for a method without one");
        Assert.AreEqual(3, transformer.Summary.AdaptersMerged, "one per residual block of the last three");
        Assert.AreEqual(0L, transformer.Model.CountAdapterParameters(), "merged: the plain architecture");
        Assert.IsGreaterThan(512 * 3 + 3, transformer.TrainableParameterCount, "the method's parameters trained besides the head");
        var epochs = log.Where(m => m.StartsWith("epoch ")).ToList();
        double Loss(string line) => double.Parse(line.Split("loss ")[1].Split(',')[0], System.Globalization.CultureInfo.InvariantCulture);
        Assert.IsLessThan(Loss(epochs[0]), Loss(epochs[^1]), $"{method} reduces the loss:\n" + string.Join("\n", epochs));

        string path = Path.Combine(Path.GetTempPath(), $"repadapter-{method}-{Guid.NewGuid():N}.zip");
        try
        {
            mlContext.Model.Save(model, train.Schema, path);
            var loaded = mlContext.Model.Load(path, out _);
            var reloaded = ((IEnumerable<ITransformer>)loaded).OfType<RepAdapterImageClassificationTransformer>().Single();
            Assert.AreEqual(adapters, reloaded.Summary.Adapters, "the whole adapter configuration is saved with the model");
            PersistenceTests.AssertClose(model.Transform(train).GetColumn<float[]>("Score").ToList(),
                loaded.Transform(train).GetColumn<float[]>("Score").ToList(), $"{method} saved and reloaded");
        }
        finally
        {
            File.Delete(path);
        }
    }

    [TestMethod]
    [DynamicData(nameof(Methods))]
    public void EveryMethodTrainsATinyVitThroughTheCatalog(AdaptationMethod method)
    {
        var mlContext = new MLContext(seed: 1);
        var data = TestData.Prepared(mlContext, TestData.Images(classes: 2, perClass: 6));
        var options = TinyTrainerOptions.Create(epochs: 2);
        options.Method = method;
        var transformer = mlContext.MulticlassClassification.Trainers.RepAdapter(options).Fit(data);
        Assert.AreEqual(method, transformer.Summary.Adapters!.Method);
        Assert.AreEqual(4, transformer.Summary.AdaptersMerged, "qkv and fc1 of both blocks");
        Assert.IsGreaterThan(32L * 2 + 2, transformer.TrainableParameterCount);
        Assert.IsFalse(transformer.Model.AdaptedLayers().Any());
    }

    [TestMethod]
    [DataRow(AdaptationMethod.SSF)]
    [DataRow(AdaptationMethod.RLRR)]
    public void AScaleSetForAMethodWithoutOneIsRefusedByName(AdaptationMethod method)
    {
        var mlContext = new MLContext(seed: 1);
        var error = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() =>
            mlContext.MulticlassClassification.Trainers.RepAdapter(new RepAdapterImageClassificationTrainer.Options { Method = method, AdapterScale = 10f }));
        StringAssert.Contains(error.Message, "AdapterScale");
        StringAssert.Contains(error.Message, $"{method} has no scale");
    }
}
