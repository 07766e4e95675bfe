using System.Diagnostics;
using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Classification;

namespace Microsoft.ML.RepAdapter.Tests.Classification;

[TestClass]
public class ScoringTests
{
    private static RepAdapterImageClassificationTransformer Train(MLContext mlContext, out IDataView data, int scoringBatchSize = 8)
    {
        data = TestData.Prepared(mlContext, TestData.Images(classes: 2, perClass: 10));
        var options = TinyTrainerOptions.Create(epochs: 1);
        options.ScoringBatchSize = scoringBatchSize;
        return mlContext.MulticlassClassification.Trainers.RepAdapter(options).Fit(data);
    }

    /// <summary>A PredictionEngine over the pipeline a user scores with: image path -> LoadImages -> <paramref name="transformer"/>.</summary>
    private static PredictionEngine<ImageRow, TOutput> Engine<TOutput>(MLContext mlContext, RepAdapterImageClassificationTransformer transformer)
        where TOutput : class, new() =>
        mlContext.Model.CreatePredictionEngine<ImageRow, TOutput>(
            mlContext.Transforms.LoadImages("Image", "", nameof(ImageRow.ImagePath))
                .Fit(mlContext.Data.LoadFromEnumerable(TestData.Images(classes: 2, perClass: 1)))
                .Append(transformer));

    [TestMethod]
    public void BatchTransformScoresInBatchesAndMatchesThePredictionEngine()
    {
        var mlContext = new MLContext(seed: 1);
        var transformer = Train(mlContext, out var data, scoringBatchSize: 8);
        int before = transformer.ForwardPasses;
        var batchScores = transformer.Transform(data).GetColumn<float[]>("Score").ToList();
        Assert.AreEqual(3, transformer.ForwardPasses - before, "20 rows in batches of 8 take 3 forward passes");

        before = transformer.ForwardPasses;
        var engine = Engine<ScoreRow>(mlContext, transformer);
        var rows = TestData.Images(classes: 2, perClass: 10);
        for (int i = 0; i < rows.Count; i++)
        {
            var score = engine.Predict(rows[i]).Score;
            for (int k = 0; k < score.Length; k++) Assert.AreEqual(batchScores[i][k], score[k], 1e-5f, $"row {i}");
        }
        Assert.AreEqual(rows.Count, transformer.ForwardPasses - before, "the PredictionEngine scores row by row");
    }

    [TestMethod]
    public void PredictedLabelIsTheArgmaxKeyWithLabelNames()
    {
        var mlContext = new MLContext(seed: 1);
        var transformer = Train(mlContext, out var data);
        var scored = transformer.Transform(data);
        var predicted = scored.GetColumn<uint>("PredictedLabel").ToList();
        var scores = scored.GetColumn<float[]>("Score").ToList();
        for (int i = 0; i < scores.Count; i++) Assert.AreEqual((uint)Array.IndexOf(scores[i], scores[i].Max()) + 1, predicted[i]);
        var slotNames = default(VBuffer<ReadOnlyMemory<char>>);
        scored.Schema["Score"].GetSlotNames(ref slotNames);
        CollectionAssert.AreEqual(new[] { "Ankle_boot", "Bag" }, slotNames.DenseValues().Select(n => n.ToString()).ToArray());
    }

    [TestMethod]
    public void NaNScoresPredictNoClassInBatchesAndInThePredictionEngine()
    {
        var mlContext = new MLContext(seed: 1);
        var transformer = Train(mlContext, out var data);
        using (TorchSharp.torch.no_grad()) transformer.Model.named_parameters().Single(p => p.name == "head.bias").parameter[0] = float.NaN;
        var predicted = transformer.Transform(data).GetColumn<uint>("PredictedLabel").ToList();
        Assert.HasCount(20, predicted);
        Assert.IsTrue(predicted.All(key => key == 0), "the missing key, never the first class");

        var engine = Engine<PredictionRow>(mlContext, transformer);
        var prediction = engine.Predict(TestData.Images(classes: 2, perClass: 1)[0]);
        Assert.IsTrue(prediction.Score.All(float.IsNaN));
        Assert.AreEqual(0u, prediction.PredictedLabel);
    }

    private sealed class PredictionRow
    {
        public float[] Score { get; set; } = [];
        [KeyType(2)] public uint PredictedLabel { get; set; }
    }

    [TestMethod]
    public void MemoryStaysFlatOverTenThousandPredictions()
    {
        var mlContext = new MLContext(seed: 1);
        var transformer = Train(mlContext, out _);
        var engine = Engine<ScoreRow>(mlContext, transformer);
        var input = TestData.Images(classes: 1, perClass: 1)[0];
        long Rss()
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            using var process = Process.GetCurrentProcess();
            return process.WorkingSet64;
        }
        // Allocators and caches settle during the first couple of thousand calls; after that memory must stay flat.
        for (int i = 0; i < 2000; i++) engine.Predict(input);
        var samples = new List<long> { Rss() };
        for (int round = 0; round < 4; round++)
        {
            for (int i = 0; i < 2000; i++) engine.Predict(input);
            samples.Add(Rss());
        }
        double growthMb = (samples[^1] - samples[0]) / 1048576.0;
        // A call that leaked its tensors (input and activations, tens of KB) would grow it by hundreds of MB.
        Assert.IsLessThan(32.0, growthMb,
            $"resident memory over 8,000 predictions after 2,000 warm-up calls (MB): {string.Join(", ", samples.Select(s => s / 1048576))}");
    }

    public sealed class ScoreRow
    {
        public float[] Score { get; set; } = [];
    }
}
