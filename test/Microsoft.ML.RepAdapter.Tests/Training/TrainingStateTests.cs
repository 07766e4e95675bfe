using System.Security.Cryptography;
using Microsoft.ML.RepAdapter.Classification;
using Microsoft.ML.RepAdapter.Tests.Classification;
using Microsoft.ML.RepAdapter.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Tests.Training;

/// <summary>
/// A saved training state is untrusted when a run resumes from it: every damaged, swapped or edited file is refused by
/// name before it reaches libtorch; two runs never share one state; a divergence or an empty epoch is never trained on.
/// </summary>
[TestClass]
public class TrainingStateTests
{
    private string folder = "";

    [TestInitialize]
    public void Create() => folder = Path.Combine(Path.GetTempPath(), $"repadapter-state-{Guid.NewGuid():N}");

    [TestCleanup]
    public void Remove()
    {
        if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
        if (File.Exists(folder)) File.Delete(folder);
    }

    /// <summary>Trains two epochs with a state folder, as a user does; returns the data and the run's state folder.</summary>
    private (MLContext MLContext, IDataView Data, string Run) Finished()
    {
        var mlContext = new MLContext(seed: 1);
        var data = TestData.Prepared(mlContext, TestData.Images(classes: 2, perClass: 4));
        mlContext.MulticlassClassification.Trainers.RepAdapter(Options()).Fit(data).Dispose();
        return (mlContext, data, Path.Combine(folder, "final"));
    }

    private RepAdapterImageClassificationTrainer.Options Options()
    {
        var options = TinyTrainerOptions.Create(epochs: 2);
        options.TrainingStateFolder = folder;
        return options;
    }

    private InvalidDataException ResumeFails(MLContext mlContext, IDataView data) =>
        Assert.ThrowsExactly<InvalidDataException>(() => mlContext.MulticlassClassification.Trainers.RepAdapter(Options()).Fit(data));

    /// <summary>Rewrites the manifest as an attacker who knows its format would, so that the file's content itself is checked.</summary>
    private static void RehashManifest(string run)
    {
        string manifest = Path.Combine(run, "manifest.sha256");
        var lines = File.ReadAllLines(manifest).Select(l => l.Split("  ", 2))
            .Select(p => $"{Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(Path.Combine(run, p[1]))))}  {p[1]}");
        File.WriteAllLines(manifest, lines);
    }

    [TestMethod]
    [DataRow("rng.bin")]
    [DataRow("optimizer.bin")]
    [DataRow("weights.safetensors")]
    [DataRow("progress.json")]
    public void ADamagedStateFileIsRefusedByNameBeforeLibTorchSeesIt(string file)
    {
        var (mlContext, data, run) = Finished();
        string path = Path.Combine(run, file);
        var bytes = File.ReadAllBytes(path);
        bytes[bytes.Length / 2] ^= 0x10;                    // one bit flipped
        File.WriteAllBytes(path, bytes);
        var error = ResumeFails(mlContext, data);
        StringAssert.Contains(error.Message, path);
        StringAssert.Contains(error.Message, "SHA-256");
    }

    [TestMethod]
    public void TruncatedMissingAndSwappedFilesAreRefusedByName()
    {
        var (mlContext, data, run) = Finished();
        string weights = Path.Combine(run, "weights.safetensors"), optimizer = Path.Combine(run, "optimizer.bin");
        var original = File.ReadAllBytes(weights);
        File.WriteAllBytes(weights, original[..(original.Length / 2)]);
        StringAssert.Contains(ResumeFails(mlContext, data).Message, weights);

        File.Copy(optimizer, weights, overwrite: true);     // a file swapped for another
        StringAssert.Contains(ResumeFails(mlContext, data).Message, weights);

        File.WriteAllBytes(weights, original);
        File.Delete(optimizer);
        var missing = ResumeFails(mlContext, data);
        StringAssert.Contains(missing.Message, optimizer);
        StringAssert.Contains(missing.Message, "missing");
    }

    [TestMethod]
    public void ARandomGeneratorStateOfTheWrongSizeIsRefusedEvenWithAMatchingManifest()
    {
        // The crash of the adversarial round: libtorch aborts the process on a generator state it cannot read.
        var (mlContext, data, run) = Finished();
        string rng = Path.Combine(run, "rng.bin");
        File.WriteAllBytes(rng, RandomNumberGenerator.GetBytes(100));
        RehashManifest(run);
        var error = ResumeFails(mlContext, data);
        StringAssert.Contains(error.Message, rng);
        StringAssert.Contains(error.Message, "100 bytes");
    }

    [TestMethod]
    public void EditedProgressAndWeightsWithAMatchingManifestAreRefusedByName()
    {
        var (mlContext, data, run) = Finished();
        string progress = Path.Combine(run, "progress.json");
        var json = File.ReadAllText(progress);
        File.WriteAllText(progress, "{ not json");
        RehashManifest(run);
        var error = ResumeFails(mlContext, data);
        StringAssert.Contains(error.Message, progress);

        File.WriteAllText(progress, json);
        string weights = Path.Combine(run, "weights.safetensors");
        using (var scope = NewDisposeScope())
        {
            Formats.SafeTensorsWriter.Write(weights, new Dictionary<string, Tensor> { ["not.a.parameter"] = zeros(3) });
        }
        RehashManifest(run);
        error = ResumeFails(mlContext, data);
        StringAssert.Contains(error.Message, weights);
        StringAssert.Contains(error.Message, "not.a.parameter");
    }

    [TestMethod]
    public void AnIntactStateStillResumes()
    {
        var (mlContext, data, _) = Finished();
        var epochs = new List<int>();
        var options = Options();
        options.MetricsCallback = r => epochs.Add(r.Epoch);
        mlContext.MulticlassClassification.Trainers.RepAdapter(options).Fit(data).Dispose();
        Assert.IsEmpty(epochs, "both epochs were resumed from the state");
    }

    [TestMethod]
    public void ASecondRunOnTheSameStateIsRefusedWhileTheFirstHoldsIt()
    {
        using var first = new TrainingState(folder, "final", "a");
        var error = Assert.ThrowsExactly<InvalidOperationException>(() => new TrainingState(folder, "final", "a"));
        StringAssert.Contains(error.Message, "another Fit");
        first.Dispose();
        using var afterwards = new TrainingState(folder, "final", "a");
    }

    [TestMethod]
    public void AStateFolderThatIsAFileIsRefusedWhenTheTrainerIsCreated()
    {
        File.WriteAllText(folder, "a file");
        var error = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new MLContext().MulticlassClassification.Trainers.RepAdapter(Options()));
        StringAssert.Contains(error.Message, "TrainingStateFolder");
        StringAssert.Contains(error.Message, "is a file");
    }

    [TestMethod]
    public void AHugeFiniteLossIsCalledDivergence()
    {
        // Logits in the millions give a finite cross-entropy in the millions: no model that learns gets there.
        using var model = nn.Linear(4, 2);
        using (no_grad())
        {
            model.weight![0].fill_(1e6f);
            model.weight![1].fill_(-1e6f);
        }
        using var images = new LabeledImages(ones(4, 4), tensor(new long[] { 0, 1, 0, 1 }));
        var error = Assert.ThrowsExactly<TrainingDivergedException>(() => FineTuning.Train(model, x => x.to(float32), images, null,
            new ClassificationObjective(), new FineTuneSettings(Epochs: 1, BatchSize: 4, WarmupEpochs: 0), CPU));
        StringAssert.Contains(error.Message, "diverged");
        StringAssert.Contains(error.Message, "epoch 1, batch 1");
    }

    [TestMethod]
    public void AnEpochWithoutBatchesIsRefusedWithTheReason()
    {
        using var model = nn.Linear(4, 2);
        using var images = new NoBatches();
        var error = Assert.ThrowsExactly<InvalidOperationException>(() => FineTuning.Train(model, x => x, images, null,
            new ClassificationObjective(), new FineTuneSettings(Epochs: 1, BatchSize: 4, WarmupEpochs: 0), CPU));
        StringAssert.Contains(error.Message, "Epoch 1 trained on no batch");
    }

    /// <summary>A data source that claims images but yields none (a filter that dropped them all).</summary>
    private sealed class NoBatches : TrainingImages
    {
        public override IReadOnlyList<long> Rows => [0, 1, 2];

        public override IEnumerable<ImageBatch> Epoch(int epoch, int batchSize, int seed) => [];

        public override IEnumerable<ImageBatch> InOrder(int batchSize) => [];

        public override TrainingImages Subset(Func<long, bool> keepRow) => this;
    }
}
