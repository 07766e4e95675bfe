using System.Text.Json;
using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Classification;
using Microsoft.ML.RepAdapter.MLNet;
using Microsoft.ML.RepAdapter.Tests.Classification;

namespace Microsoft.ML.RepAdapter.Tests.Training;

/// <summary>Training data streamed from the IDataView: the caches agree, and memory stays bounded whatever the data's size.</summary>
[TestClass]
public class TrainingDataTests
{
    private static float[][] FitAndScore(ImageCache cache, int decodeThreads = 2, int shuffleBuffer = 1024, Action? duringTraining = null)
    {
        var mlContext = new MLContext(seed: 1);
        var data = TestData.Prepared(mlContext, TestData.Images(classes: 3, perClass: 7));
        var options = TinyTrainerOptions.Create(epochs: 2);
        options.Cache = cache;
        options.DecodeThreads = decodeThreads;
        options.ShuffleBufferSize = shuffleBuffer;
        options.CacheFrozenPrefix = false; // these tests compare the image caches, not the prefix cache (tested in TrainerTests)
        options.MetricsCallback = _ => duringTraining?.Invoke();
        return [.. mlContext.MulticlassClassification.Trainers.RepAdapter(options).Fit(data).Transform(data).GetColumn<float[]>("Score")];
    }

    [TestMethod]
    public void MemoryAndDiskCachesTrainTheSameModelBitwise()
    {
        // Same examples in the same (seed, epoch) order, whatever holds the decoded pixels and however many threads decode.
        var memory = FitAndScore(ImageCache.Memory, decodeThreads: 1);
        var openCaches = new List<string>();
        var disk = FitAndScore(ImageCache.Disk, decodeThreads: 3, duringTraining: () => openCaches.AddRange(OpenCacheFiles()));
        // The disk cache is unlinked as soon as it is open: a process killed during Fit leaves no file behind.
        Assert.IsNotEmpty(openCaches, "the disk cache is open while training");
        Assert.IsTrue(openCaches.All(f => f.EndsWith("(deleted)", StringComparison.Ordinal)), string.Join("\n", openCaches));
        Assert.HasCount(21, memory);
        for (int i = 0; i < memory.Length; i++) CollectionAssert.AreEqual(memory[i], disk[i], $"row {i}");
    }

    /// <summary>What this process's open file descriptors that are disk caches point to (Linux: /proc/self/fd).</summary>
    private static IEnumerable<string> OpenCacheFiles() =>
        new DirectoryInfo("/proc/self/fd").EnumerateFileSystemInfos().Select(fd => fd.LinkTarget).OfType<string>()
            .Where(target => target.Contains("repadapter-cache-", StringComparison.Ordinal)).ToList();

    [TestMethod]
    public void WithoutACacheEveryEpochDecodesAgainAndAFullBufferShufflesTheSame()
    {
        // A shuffle buffer as large as the data set draws every example, but in its own order: a valid, different model.
        var streamed = FitAndScore(ImageCache.None, shuffleBuffer: 4);
        var memory = FitAndScore(ImageCache.Memory);
        Assert.HasCount(21, streamed);
        Assert.IsTrue(streamed.All(s => s.All(float.IsFinite) && Math.Abs(s.Sum() - 1) < 1e-5));
        Assert.IsTrue(streamed.Zip(memory).Any(p => !p.First.SequenceEqual(p.Second)), "a 4-image buffer gives another order");
    }

    /// <summary>Peak memory of a fit on generated 96 px images in a fresh process (TestHost stream).</summary>
    private static StreamRun Stream(int images, ImageCache cache)
    {
        string output = TestHost.RunOk("stream", images.ToString(), cache.ToString(), "96");
        string json = output.Split('\n').Last(l => l.StartsWith('{'));
        return JsonSerializer.Deserialize<StreamRun>(json)!;
    }

    private sealed record StreamRun(int images, string cache, double decoded_mb, double before_mb, double peak_mb, double fit_seconds, double[] images_per_second,
        double train_accuracy)
    {
        public double Growth => peak_mb - before_mb;
    }

    [TestMethod]
    [Timeout(600_000, CooperativeCancellation = true)]
    public void TwentyThousandImagesTrainInBoundedMemory()
    {
        // 20,000 generated 96 px images are 553 MB decoded. With the disk cache or none, memory holds only batches, decoding
        // queues and the shuffle buffer: the peak during Fit stays within 400 MB of the process's size before it (measured:
        // about 200 MB with the disk cache, 270 MB streamed; the memory cache, which holds every image, adds 700 MB), and
        // it grows by little from 2,000 images to 20,000 (measured: 58 MB).
        var small = Stream(2_000, ImageCache.Disk);
        var disk = Stream(20_000, ImageCache.Disk);
        var none = Stream(20_000, ImageCache.None);
        string report = string.Join("\n", new[] { small, disk, none }.Select(r => r.ToString()));
        foreach (var run in new[] { disk, none })
        {
            Assert.IsLessThan(400, run.Growth, $"peak growth during Fit, MB:\n{report}");
            Assert.IsLessThan(run.decoded_mb, run.Growth, $"less than the decoded images alone:\n{report}");
            Assert.IsGreaterThan(0.9, run.train_accuracy, $"the bars are learnt, so the images were read right:\n{report}");
        }
        Assert.IsLessThan(120, disk.Growth - small.Growth, $"ten times the images, about the same peak:\n{report}");
    }
}
