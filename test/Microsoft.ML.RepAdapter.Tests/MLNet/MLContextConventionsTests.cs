using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Classification;
using Microsoft.ML.RepAdapter.Tests.Classification;

namespace Microsoft.ML.RepAdapter.Tests.MLNet;

/// <summary>MLContext's seed, GpuDeviceId and FallbackToCpu, and Model Builder's generated line, as ML.NET users expect.</summary>
[TestClass]
public class MLContextConventionsTests
{
    private static float[][] Scores(MLContext mlContext, int? optionsSeed)
    {
        var data = TestData.Prepared(mlContext, TestData.Images(classes: 2, perClass: 6));
        var options = TinyTrainerOptions.Create(epochs: 1);
        options.Seed = optionsSeed;
        return [.. mlContext.MulticlassClassification.Trainers.RepAdapter(options).Fit(data).Transform(data).GetColumn<float[]>("Score")];
    }

    private static bool Same(float[][] a, float[][] b) => a.Zip(b).All(p => p.First.SequenceEqual(p.Second));

    [TestMethod]
    public void TheSeedComesFromTheMLContextUnlessTheOptionsGiveOne()
    {
        var five = Scores(new MLContext(seed: 5), optionsSeed: null);
        Assert.IsTrue(Same(five, Scores(new MLContext(seed: 5), optionsSeed: null)), "the same MLContext seed, the same model");
        Assert.IsFalse(Same(five, Scores(new MLContext(seed: 6), optionsSeed: null)), "another MLContext seed, another new head");
        Assert.IsTrue(Same(five, Scores(new MLContext(seed: 6), optionsSeed: 5)), "Options.Seed overrides the MLContext's");
    }

    [TestMethod]
    public void AGpuRequestedWithoutCudaFallsBackToTheCpuWithAWarningOrFails()
    {
        Assert.IsFalse(TorchSharp.torch.cuda.is_available(), "the tests reference the CPU libtorch (libtorch-cpu)");
        var mlContext = new MLContext(seed: 1) { GpuDeviceId = 0, FallbackToCpu = true };
        var warnings = TestData.CaptureLog(mlContext, e => e.Kind == Runtime.ChannelMessageKind.Warning);
        var data = TestData.Prepared(mlContext, TestData.Images(classes: 2, perClass: 4));
        var model = mlContext.MulticlassClassification.Trainers.RepAdapter(TinyTrainerOptions.Create(epochs: 1)).Fit(data);
        Assert.IsTrue(warnings.Any(w => w.Contains("GPU 0 was requested") && w.Contains("falling back to the CPU")), string.Join("\n", warnings));

        // A saved model loaded in a context that asks for the GPU scores on the CPU, saying so.
        string path = Path.Combine(Path.GetTempPath(), $"repadapter-gpu-{Guid.NewGuid():N}.zip");
        try
        {
            mlContext.Model.Save(model, data.Schema, path);
            warnings.Clear();
            var loaded = mlContext.Model.Load(path, out _);
            Assert.IsTrue(warnings.Any(w => w.Contains("falling back to the CPU")), "the loaded model's fallback is logged: " + string.Join("\n", warnings));
            Assert.HasCount(8, loaded.Transform(data).GetColumn<float[]>("Score").ToList());
        }
        finally
        {
            File.Delete(path);
        }

        var strict = new MLContext(seed: 1) { GpuDeviceId = 0, FallbackToCpu = false };
        var error = Assert.ThrowsExactly<InvalidOperationException>(() =>
            strict.MulticlassClassification.Trainers.RepAdapter(TinyTrainerOptions.Create(epochs: 1)).Fit(data));
        StringAssert.Contains(error.Message, "FallbackToCpu is false");

        var overridden = TinyTrainerOptions.Create(epochs: 1);
        overridden.FallbackToCpu = true;
        strict.MulticlassClassification.Trainers.RepAdapter(overridden).Fit(data);
    }

    public sealed class ModelInput
    {
        public string Label { get; set; } = "";
        public byte[] ImageSource { get; set; } = [];
    }

    public sealed class ModelOutput
    {
        public string PredictedLabel { get; set; } = "";
        public float[] Score { get; set; } = [];
    }

    /// <summary>Model Builder's generated BuildPipeline for image classification, with only the trainer's name changed.</summary>
    private static IEstimator<ITransformer> BuildPipeline(MLContext mlContext)
    {
        // Data process configuration with pipeline data transformations
        var pipeline = mlContext.Transforms.Conversion.MapValueToKey(outputColumnName:@"Label",inputColumnName:@"Label",addKeyValueAnnotationsAsText:false)
                                .Append(mlContext.MulticlassClassification.Trainers.RepAdapter(labelColumnName:@"Label",scoreColumnName:@"Score",featureColumnName:@"ImageSource"))
                                .Append(mlContext.Transforms.Conversion.MapKeyToValue(outputColumnName:@"PredictedLabel",inputColumnName:@"PredictedLabel"));

        return pipeline;
    }

    [TestMethod]
    [Timeout(600_000, CooperativeCancellation = true)]
    public void ModelBuildersGeneratedLineWorksWithTheTrainerRenamed()
    {
        // The defaults (ML.NET's pretrained ResNet-18, 100 epochs) on two images of each of two classes: about half a minute.
        var mlContext = new MLContext(seed: 1);
        var rows = TestData.Images(classes: 2, perClass: 2).Select(r => new ModelInput { Label = r.Label, ImageSource = File.ReadAllBytes(r.ImagePath) }).ToList();
        var model = BuildPipeline(mlContext).Fit(mlContext.Data.LoadFromEnumerable(rows));

        using var engine = mlContext.Model.CreatePredictionEngine<ModelInput, ModelOutput>(model);
        var predictions = rows.Select(r => engine.Predict(new ModelInput { ImageSource = r.ImageSource })).ToList();
        Assert.IsTrue(predictions.All(p => p.Score.Length == 2 && Math.Abs(p.Score.Sum() - 1) < 1e-5));
        CollectionAssert.AreEqual(rows.Select(r => r.Label).ToList(), predictions.Select(p => p.PredictedLabel).ToList(),
            "100 epochs learn four training images");
    }
}
