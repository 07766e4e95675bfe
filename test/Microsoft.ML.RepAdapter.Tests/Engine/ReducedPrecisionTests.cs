using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Classification;
using Microsoft.ML.RepAdapter.MLNet;
using Microsoft.ML.RepAdapter.Tests.Classification;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Tests.Engine;

/// <summary>bfloat16 scoring: every family runs in bf16 (module.to(dtype) reaches every weight and derived constant) close to float32.</summary>
[TestClass]
public class ReducedPrecisionTests
{
    [TestMethod]
    [DynamicData(nameof(TinyModels.KindRows), typeof(TinyModels))]
    public void EveryFamilyRunsInBFloat16CloseToFloat32(string kind)
    {
        using var backbone = TinyModels.Create(kind);
        TinyModels.Randomize(backbone, seed: 4);
        backbone.eval();
        using var _ = no_grad();
        using var images = TinyModels.Images(backbone, batch: 3);
        using var expected = backbone.ForwardFeatures(images);
        backbone.to(bfloat16);
        Assert.IsTrue(backbone.parameters().All(p => p.dtype == bfloat16), "every parameter converted");
        using var reduced = backbone.ForwardFeatures(images.to(bfloat16)).to(float32);
        // bfloat16 keeps 8 bits of mantissa: a relative error of a few 1e-3 per operation, a few 1e-2 over a network.
        double scale = TinyModels.MaxAbs(expected);
        double error = TinyModels.MaxAbsDiff(reduced, expected);
        Assert.IsLessThan(0.1 * scale, error, $"{kind}: max |bf16 - fp32| {error:G3} against feature scale {scale:G3}");
    }

    [TestMethod]
    public void ATransformerScoresInBFloat16OnRequestAndBackInFloat32()
    {
        var mlContext = new MLContext(seed: 1);
        var data = TestData.Prepared(mlContext, TestData.Images(classes: 3, perClass: 6));
        var transformer = mlContext.MulticlassClassification.Trainers.RepAdapter(TinyTrainerOptions.Create(epochs: 2)).Fit(data);
        float[][] Scores() => [.. transformer.Transform(data).GetColumn<float[]>("Score")];
        var full = Scores();
        Assert.AreEqual(ScoringPrecision.Float32, transformer.Precision);
        transformer.Precision = ScoringPrecision.BFloat16;
        var reduced = Scores();
        // No check of the predicted classes: after two epochs the probabilities are close to uniform, so bf16 rounding may
        // flip the near-ties, differently on each CPU; closeness of every probability is what holds everywhere.
        double largest = full.Zip(reduced).Max(p => p.First.Zip(p.Second).Max(q => Math.Abs(q.First - q.Second)));
        Assert.IsGreaterThan(0.0, largest, "bf16 scores are not the float32 ones");
        Assert.IsLessThan(0.1, largest, "probabilities within 0.1");
        transformer.Precision = ScoringPrecision.Float32;
        var back = Scores();
        for (int i = 0; i < full.Length; i++) CollectionAssert.AreEqual(full[i], back[i], $"row {i}: float32 again");
    }

    [TestMethod]
    public void AutoTimesBothOnTheFirstBatchLogsItsChoiceAndScoresInIt()
    {
        var mlContext = new MLContext(seed: 1);
        var log = TestData.CaptureLog(mlContext, e => e.Source.Contains("Precision Auto"));
        var data = TestData.Prepared(mlContext, TestData.Images(classes: 3, perClass: 6));
        var transformer = mlContext.MulticlassClassification.Trainers.RepAdapter(TinyTrainerOptions.Create(epochs: 2)).Fit(data);
        float[][] Scores() => [.. transformer.Transform(data).GetColumn<float[]>("Score")];
        var full = Scores();

        transformer.Precision = ScoringPrecision.Auto;
        Assert.IsNull(transformer.PrecisionChoice, "nothing is measured before the first batch");
        var auto = Scores();
        var choice = transformer.PrecisionChoice!;
        Assert.AreEqual(ScoringPrecision.Auto, transformer.Precision, "the setting stays Auto");
        Assert.IsGreaterThan(0.0, choice.Float32Milliseconds);
        Assert.IsGreaterThan(0.0, choice.BFloat16Milliseconds);
        Assert.IsTrue(log.Any(m => m.Contains($"scoring in {choice.Chosen}")), string.Join("\n", log));
        double largest = full.Zip(auto).Max(p => p.First.Zip(p.Second).Max(q => Math.Abs(q.First - q.Second)));
        if (choice.Chosen == ScoringPrecision.Float32) Assert.AreEqual(0.0, largest, "kept float32: the float32 scores");
        else Assert.IsLessThanOrEqualTo(transformer.AutoPrecisionTolerance, largest, "kept bfloat16: within the tolerance");

        // A tolerance no bf16 rounding meets keeps float32 whatever the timings.
        transformer.Precision = ScoringPrecision.Float32;
        transformer.AutoPrecisionTolerance = 0f;
        transformer.Precision = ScoringPrecision.Auto;
        var strict = Scores();
        Assert.AreEqual(ScoringPrecision.Float32, transformer.PrecisionChoice!.Chosen);
        Assert.IsGreaterThan(0.0, transformer.PrecisionChoice.MaxProbabilityDifference);
        for (int i = 0; i < full.Length; i++) CollectionAssert.AreEqual(full[i], strict[i], $"row {i}");
    }
}
