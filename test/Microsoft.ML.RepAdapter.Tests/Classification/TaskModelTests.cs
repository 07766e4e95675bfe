using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Checkpoints;
using Microsoft.ML.RepAdapter.Classification;
using Microsoft.ML.RepAdapter.Formats;
using Microsoft.ML.RepAdapter.MLNet;
using Microsoft.ML.RepAdapter.Tests.Checkpoints;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Tests.Classification;

/// <summary>
/// Adapters-only task models: a trained transformer saved with <c>Storage = AdaptersOnly</c> holds what training changed
/// and where its backbone comes from; <c>Model.Load</c> rebuilds the backbone, checks its fingerprint, merges, and scores
/// as the merged model did.
/// </summary>
[TestClass]
public class TaskModelTests
{
    private static List<float[]> Scores(ITransformer model, IDataView data) => [.. model.Transform(data).GetColumn<float[]>("Score")];

    private static void AssertSameScores(List<float[]> expected, List<float[]> actual) =>
        PersistenceTests.AssertClose(expected, actual, "the task model against the merged model", tolerance: 1e-6f);

    [TestMethod]
    public void AnAdaptersOnlyModelOfMLNetsResNet18IsKilobytesAndScoresAsTheMergedOne()
    {
        // As a user: the bare call's recipe on ML.NET's built-in ResNet-18 (no search, for time), then saved both ways.
        var mlContext = new MLContext(seed: 1);
        var train = mlContext.Data.LoadFromEnumerable(TestData.Images("train", classes: 3, perClass: 8));
        var test = mlContext.Data.LoadFromEnumerable(TestData.Images("test", classes: 3, perClass: 4));
        var pipeline = mlContext.Transforms.Conversion.MapValueToKey("Label")
            .Append(mlContext.Transforms.LoadImages("Image", "", nameof(ImageRow.ImagePath)))
            .Append(mlContext.MulticlassClassification.Trainers.RepAdapter(new RepAdapterImageClassificationTrainer.Options { Epochs = 2, TimeBudget = TimeSpan.Zero }));
        var model = pipeline.Fit(train);
        var expected = Scores(model, test);
        string folder = CheckpointFiles.TempDirectory(), merged = Path.Combine(folder, "merged.zip"), task = Path.Combine(folder, "task.zip");
        mlContext.Model.Save(model, train.Schema, merged);
        model.LastTransformer.Storage = ModelStorage.AdaptersOnly;
        mlContext.Model.Save(model, train.Schema, task);

        long taskBytes = new FileInfo(task).Length, mergedBytes = new FileInfo(merged).Length;
        Assert.IsLessThan(1_000_000, taskBytes, $"adapters and head only ({taskBytes:N0} bytes)");
        Assert.IsGreaterThan(40 * taskBytes, mergedBytes, $"the merged model holds the backbone ({mergedBytes:N0} bytes)");

        var loaded = new MLContext(seed: 2).Model.Load(task, out _);
        AssertSameScores(expected, Scores(loaded, test));
        var transformer = ((IEnumerable<ITransformer>)loaded).OfType<RepAdapterImageClassificationTransformer>().Single();
        Assert.AreEqual(ModelStorage.AdaptersOnly, transformer.Storage, "a loaded task model saves as one again");
        Assert.AreEqual(model.LastTransformer.Summary.Backbone, transformer.Summary.Backbone);
        Assert.IsFalse(transformer.Model.AdaptedLayers().Any(), "merged on load: the plain architecture");

        string again = Path.Combine(folder, "again.zip");
        mlContext.Model.Save(loaded, train.Schema, again);
        Assert.AreEqual(taskBytes, new FileInfo(again).Length);
        AssertSameScores(expected, Scores(mlContext.Model.Load(again, out _), test));

        // A merged file with a task-model stream slipped in is refused: its checksums cover the merged weights only.
        string both = Path.Combine(folder, "both.zip");
        File.Copy(merged, both);
        using (var zip = System.IO.Compression.ZipFile.Open(both, System.IO.Compression.ZipArchiveMode.Update))
        using (var added = new System.IO.Compression.ZipArchive(File.OpenRead(task)))
        {
            var source = added.Entries.Single(e => e.FullName.EndsWith("/TaskModel", StringComparison.Ordinal));
            var weights = zip.Entries.Single(e => e.FullName.EndsWith("/TorchModel", StringComparison.Ordinal));
            using var from = source.Open();
            using var to = zip.CreateEntry(weights.FullName[..^"TorchModel".Length] + "TaskModel").Open();
            from.CopyTo(to);
        }
        var error = Assert.ThrowsExactly<InvalidDataException>(() =>
        {
            try { new MLContext().Model.Load(both, out _); }
            catch (Exception e) { throw e.GetBaseException(); }
        });
        StringAssert.Contains(error.Message, "holds both");

        // The reloaded model exports like any other: its ONNX chain labels the test images as it does.
        var parts = ((IEnumerable<ITransformer>)loaded).ToList();
        var onnx = new TransformerChain<ITransformer>([.. parts.Take(parts.Count - 1), transformer.ToOnnxPipeline(mlContext, sourceImageSize: (28, 28))]);
        var onnxLabels = onnx.Transform(test).GetColumn<uint>("PredictedLabel").ToList();
        var torchLabels = loaded.Transform(test).GetColumn<uint>("PredictedLabel").ToList();
        Assert.IsGreaterThanOrEqualTo(torchLabels.Count - 1, onnxLabels.Zip(torchLabels).Count(p => p.First == p.Second), "ONNX chain of the reloaded model");
    }

    /// <summary>A tiny ViT checkpoint file with random weights (seed <paramref name="seed"/>).</summary>
    private static string TinyVitCheckpoint(string folder, int seed)
    {
        using var backbone = TinyModels.Create("vit", seed);
        TinyModels.Randomize(backbone, seed);
        string path = Path.Combine(folder, "tiny_vit.safetensors");
        SafeTensorsWriter.Write(path, backbone.state_dict());
        return path;
    }

    private static (TransformerChain<ITransformer> Model, IDataView Data, string Saved) TrainFromFile(string folder, string checkpoint)
    {
        var mlContext = new MLContext(seed: 1);
        var data = TestData.Prepared(mlContext, TestData.Images(classes: 2, perClass: 6));
        var options = TinyTrainerOptions.Create(epochs: 2);
        options.Backbone = null;
        options.CheckpointPath = checkpoint;
        // A width of 32 does not give the heads: the family's load options say, and the task model records them.
        options.BackboneLoadOptions = new VisionTransformerLoadOptions(NumHeads: 2);
        var trained = mlContext.MulticlassClassification.Trainers.RepAdapter(options).Fit(data);
        trained.Storage = ModelStorage.AdaptersOnly;
        var chain = new TransformerChain<ITransformer>(trained);
        string saved = Path.Combine(folder, "task.zip");
        mlContext.Model.Save(chain, data.Schema, saved);
        return (chain, data, saved);
    }

    [TestMethod]
    public void OtherWeightsAtTheBackbonesPathAreRefusedNamingBothFingerprints()
    {
        string folder = CheckpointFiles.TempDirectory();
        string checkpoint = TinyVitCheckpoint(folder, seed: 3);
        var (model, data, saved) = TrainFromFile(folder, checkpoint);
        AssertSameScores(Scores(model, data), Scores(new MLContext().Model.Load(saved, out _), data));

        string fingerprint = ((RepAdapterTransformerBase)model.LastTransformer).Summary.Backbone!.Fingerprint;
        TinyVitCheckpoint(folder, seed: 4); // the same architecture, other weights, at the same path
        var error = Assert.ThrowsExactly<InvalidDataException>(() =>
        {
            try { new MLContext().Model.Load(saved, out _); }
            catch (Exception e) { throw e.GetBaseException(); }
        });
        StringAssert.Contains(error.Message, fingerprint);
        StringAssert.Contains(error.Message, checkpoint);
    }

    [TestMethod]
    public void TaskModelsOnOneBackboneShareItsUnadaptedWeightsUntilTheLastIsDisposed()
    {
        string folder = CheckpointFiles.TempDirectory();
        string checkpoint = TinyVitCheckpoint(folder, seed: 6);
        var (model, data, saved) = TrainFromFile(folder, checkpoint);
        var expected = Scores(model, data);
        string fingerprint = ((RepAdapterTransformerBase)model.LastTransformer).Summary.Backbone!.Fingerprint;
        static RepAdapterImageClassificationTransformer Load(string path) =>
            ((IEnumerable<ITransformer>)new MLContext().Model.Load(path, out _)).OfType<RepAdapterImageClassificationTransformer>().Single();
        var first = Load(saved);
        var second = Load(saved);
        Assert.IsTrue(SharedBackboneWeights.Holds(fingerprint));

        // Shared storage shows as a write through one model seen by the other (undone at once): the patch embedding is
        // one tensor; the head and the merged projections are each model's own.
        bool Shared(string key)
        {
            using var _ = no_grad();
            var a = first.Model.state_dict()[key];
            var b = second.Model.state_dict()[key];
            var before = b.clone();
            a.add_(ones_like(a));
            bool seen = !b.eq(before).all().item<bool>();
            a.sub_(ones_like(a));
            return seen;
        }
        Assert.IsTrue(Shared("patch_embed.proj.weight"), "an unadapted weight is shared");
        Assert.IsFalse(Shared("head.weight"), "the head is the task's own");
        int blocks = first.Model.state_dict().Keys.Count(k => k.EndsWith(".attn.qkv.weight", StringComparison.Ordinal));
        string merged = $"blocks.{blocks - 1}.attn.qkv.weight";
        Assert.IsFalse(Shared(merged), "a merged projection is the task's own");
        AssertSameScores(expected, Scores(new TransformerChain<ITransformer>(first), data));

        first.Dispose();
        AssertSameScores(expected, Scores(new TransformerChain<ITransformer>(second), data));
        second.Dispose();
        Assert.IsFalse(SharedBackboneWeights.Holds(fingerprint), "the last task model frees the shared copy");
    }

    [TestMethod]
    public void AMissingBackboneNamesItsPathAndTheFolderVariableWhichFindsItElsewhere()
    {
        string folder = CheckpointFiles.TempDirectory();
        string checkpoint = TinyVitCheckpoint(folder, seed: 5);
        var (model, data, saved) = TrainFromFile(folder, checkpoint);
        string elsewhere = CheckpointFiles.TempDirectory();
        File.Move(checkpoint, Path.Combine(elsewhere, Path.GetFileName(checkpoint)));

        var error = Assert.ThrowsExactly<FileNotFoundException>(() =>
        {
            try { new MLContext().Model.Load(saved, out _); }
            catch (Exception e) { throw e.GetBaseException(); }
        });
        StringAssert.Contains(error.Message, checkpoint);
        StringAssert.Contains(error.Message, BackboneSource.FolderVariable);

        Environment.SetEnvironmentVariable(BackboneSource.FolderVariable, elsewhere);
        try
        {
            AssertSameScores(Scores(model, data), Scores(new MLContext().Model.Load(saved, out _), data));
        }
        finally
        {
            Environment.SetEnvironmentVariable(BackboneSource.FolderVariable, null);
        }
    }

    [TestMethod]
    public void AModelTrainedOnABackboneObjectSaysWhyItCanOnlyBeSavedMerged()
    {
        var mlContext = new MLContext(seed: 1);
        var data = TestData.Prepared(mlContext, TestData.Images(classes: 2, perClass: 4));
        var trained = mlContext.MulticlassClassification.Trainers.RepAdapter(TinyTrainerOptions.Create(epochs: 1)).Fit(data);
        var error = Assert.ThrowsExactly<InvalidOperationException>(() => trained.Storage = ModelStorage.AdaptersOnly);
        StringAssert.Contains(error.Message, "Backbone object");
        Assert.AreEqual(ModelStorage.Merged, trained.Storage);
    }

    [TestMethod]
    public void ATaskModelStreamIsReadDefensively()
    {
        static MemoryStream Stream(Action<BinaryWriter> write)
        {
            var stream = new MemoryStream();
            using (var writer = new BinaryWriter(stream, System.Text.Encoding.UTF8, leaveOpen: true)) write(writer);
            stream.Position = 0;
            return stream;
        }
        void Refused(Action<BinaryWriter> write, string expected)
        {
            var error = Assert.ThrowsExactly<InvalidDataException>(() => TaskModel.Read(Stream(write), "TaskModel"));
            StringAssert.Contains(error.Message, "'TaskModel'");
            StringAssert.Contains(error.Message, expected);
        }
        // A tensor that declares a terabyte in a stream of a few bytes is refused before anything is allocated.
        Refused(w => { w.Write(1); w.Write("head.weight"); w.Write((int)ScalarType.Float32); w.Write(2L); w.Write(1_000_000L); w.Write(1_000_000L); },
            "more than the stream has left");
        Refused(w => w.Write(int.MaxValue), "tensors");
        Refused(w => { w.Write(1); w.Write("x"); w.Write((int)ScalarType.Float32); w.Write(99L); }, "rank 99");
        Refused(w => { w.Write(1); w.Write("x"); w.Write(12345); }, "type");
        Refused(w => { w.Write(2); w.Write("x"); w.Write((int)ScalarType.Float32); w.Write(0L); w.Write(1f); }, "Unable to read beyond");
    }
}
