using System.Globalization;
using Microsoft.ML.Data;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Classification;
using Microsoft.ML.RepAdapter.MLNet;
using Microsoft.ML.RepAdapter.Segmentation;
using Microsoft.ML.RepAdapter.Tests.Classification;
using Microsoft.ML.RepAdapter.Tests.Segmentation;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Tests.Deployment;

/// <summary>
/// A trained transformer exports to ONNX and converts to a chain of ML.NET built-ins (ToOnnxPipeline) that scores as the
/// TorchSharp transformer does, saved, reloaded, and run by samples/OnnxScoring, an application without TorchSharp.
/// </summary>
[TestClass]
public class OnnxPipelineTests
{
    private static string _folder = "";
    private static TransformerChain<ITransformer> _model = null!;
    private static RepAdapterImageClassificationTransformer _transformer = null!;
    private static List<PathRow> _originals = [];
    private static List<PathRow> _atModelSize = [];

    public static string SampleAppPath { get; } = Path.Combine(TestData.RepoRoot, "samples", "OnnxScoring", "bin", TestData.Configuration, "net10.0", "OnnxScoring.dll");

    [ClassInitialize]
    public static void Train(TestContext _)
    {
        _folder = Path.Combine(Path.GetTempPath(), $"repadapter-onnx-{Guid.NewGuid():N}");
        Directory.CreateDirectory(_folder);
        var mlContext = new MLContext(seed: 1);
        var fitted = TestData.TinyModelFromPaths(mlContext);
        _model = new TransformerChain<ITransformer>([.. fitted]);
        _transformer = fitted.LastTransformer;
        _originals = [.. TestData.Images("test", classes: 3, perClass: 4).Select(r => new PathRow { ImagePath = r.ImagePath })];
        _atModelSize = AtModelSize(_originals, _transformer.Input, Path.Combine(_folder, "at-model-size"));
    }

    [ClassCleanup]
    public static void Cleanup()
    {
        _transformer?.Dispose();
        if (Directory.Exists(_folder)) Directory.Delete(_folder, recursive: true);
    }

    /// <summary>
    /// The images as the library's preprocessing sees them (S x S, resampled bicubically), saved losslessly: on these
    /// ML.NET's ResizeImages changes nothing, so the two paths get the same pixels.
    /// </summary>
    private static List<PathRow> AtModelSize(IEnumerable<PathRow> rows, ImageInputSpec spec, string folder)
    {
        Directory.CreateDirectory(folder);
        var preprocessor = new ImagePreprocessor(spec);
        var written = new List<PathRow>();
        foreach (var row in rows)
        {
            using var scope = NewDisposeScope();
            using var image = MLImage.CreateFromFile(row.ImagePath);
            var pixels = preprocessor.ToPixels(image);
            var bgr = spec.Order == ChannelOrder.Bgr ? pixels : pixels.flip(0);
            var alpha = full([1, spec.ImageSize, spec.ImageSize], 255, ScalarType.Byte);
            var bgra = cat([bgr, alpha], 0).permute(1, 2, 0).contiguous().data<byte>().ToArray();
            string path = Path.Combine(folder, $"{written.Count:D3}-{Path.GetFileName(Path.GetDirectoryName(row.ImagePath))}.png");
            using var resized = MLImage.CreateFromPixels(spec.ImageSize, spec.ImageSize, MLPixelFormat.Bgra32, bgra);
            resized.Save(path);
            written.Add(new PathRow { ImagePath = path });
        }
        return written;
    }

    private static (float[][] Scores, uint[] Labels) Predict(ITransformer model, MLContext mlContext, IEnumerable<PathRow> rows)
    {
        var scored = model.Transform(mlContext.Data.LoadFromEnumerable(rows));
        return ([.. scored.GetColumn<float[]>("Score")], [.. scored.GetColumn<uint>("PredictedLabel")]);
    }

    private static float MaxDiff(float[][] a, float[][] b) => a.Zip(b).SelectMany(p => p.First.Zip(p.Second, (x, y) => Math.Abs(x - y))).Max();

    /// <summary>
    /// The same label for every row whose two best scores are more than 2 x <paramref name="tolerance"/> apart: scores that
    /// may differ by the tolerance can swap a closer pair, differently on each CPU.
    /// </summary>
    private static void AssertSameLabels(float[][] scores, uint[] expected, uint[] actual, float tolerance, string what)
    {
        Assert.HasCount(expected.Length, actual, what);
        var differ = Enumerable.Range(0, expected.Length).Where(i => expected[i] != actual[i]
            && scores[i].OrderDescending().Take(2).Aggregate((a, b) => a - b) > 2 * tolerance).ToArray();
        Assert.IsEmpty(differ, $"{what}: rows {string.Join(", ", differ)} predict another class");
    }

    [TestMethod]
    public void ExportedModelGivesTheTransformersScores()
    {
        using var session = OnnxRun.Session(_transformer.ExportOnnx);
        var images = _atModelSize.Select(r => MLImage.CreateFromFile(r.ImagePath)).ToList();
        try
        {
            using var scope = NewDisposeScope();
            var expected = _transformer.Score(images);
            var actual = OnnxRun.Run(session, _transformer.Preprocessor.ToPixels(images), output: "probabilities");
            OnnxRun.AssertClose(tensor(expected.SelectMany(p => p).ToArray()).reshape(expected.Length, _transformer.NumberOfClasses), actual,
                $"probabilities, batch {images.Count}");
        }
        finally
        {
            images.ForEach(i => i.Dispose());
        }
    }

    [TestMethod]
    public void OnnxPipelineScoresAsTheTorchSharpTransformerAndSurvivesSaveAndLoad()
    {
        var mlContext = new MLContext(seed: 1);
        var onnx = new TransformerChain<ITransformer>(_model.First(), _transformer.ToOnnxPipeline(mlContext));
        Assert.IsFalse(onnx.SelectMany(t => t is TransformerChain<ITransformer> c ? c : (IEnumerable<ITransformer>)[t]).Any(t => t.GetType().Assembly == typeof(RepAdapterTransformerBase).Assembly),
            "the chain is made of ML.NET's transformers only");

        var (torchScores, torchLabels) = Predict(_model, mlContext, _atModelSize);
        var (onnxScores, onnxLabels) = Predict(onnx, mlContext, _atModelSize);
        Assert.IsLessThanOrEqualTo(1e-4f, MaxDiff(torchScores, onnxScores), "scores on images at the model's size");
        AssertSameLabels(torchScores, torchLabels, onnxLabels, 1e-4f, "predicted labels on images at the model's size");

        // The columns a consumer reads carry the same annotations: label names on Score's slots and PredictedLabel's keys.
        var schema = onnx.GetOutputSchema(mlContext.Data.LoadFromEnumerable(_atModelSize).Schema);
        var keys = default(VBuffer<ReadOnlyMemory<char>>);
        schema["PredictedLabel"].GetKeyValues(ref keys);
        CollectionAssert.AreEqual(_transformer.LabelNames.ToArray(), keys.DenseValues().Select(k => k.ToString()).ToArray());
        var slots = default(VBuffer<ReadOnlyMemory<char>>);
        schema["Score"].GetSlotNames(ref slots);
        CollectionAssert.AreEqual(_transformer.LabelNames.ToArray(), slots.DenseValues().Select(k => k.ToString()).ToArray());
        Assert.AreEqual("ImagePath, Image, PredictedLabel, Score", string.Join(", ", schema.Where(c => !c.IsHidden).Select(c => c.Name)),
            "the chain's own columns (resized image, pixels, logits) are dropped");

        string zip = Path.Combine(_folder, "in-process.zip");
        mlContext.Model.Save(onnx, mlContext.Data.LoadFromEnumerable(_atModelSize).Schema, zip);
        var loaded = new MLContext(seed: 2).Model.Load(zip, out _);
        var (loadedScores, loadedLabels) = Predict(loaded, mlContext, _atModelSize);
        Assert.AreEqual(0f, MaxDiff(onnxScores, loadedScores), "reloaded chain");
        CollectionAssert.AreEqual(onnxLabels, loadedLabels);

        // On images of another size ML.NET resizes (nearest pixel) where the library resamples (bicubic, antialiased).
        var (originalTorch, _) = Predict(_model, mlContext, _originals);
        var (originalOnnx, _) = Predict(onnx, mlContext, _originals);
        int agree = originalTorch.Zip(originalOnnx).Count(p => RepAdapterImageClassificationTransformer.PredictedKey(p.First) == RepAdapterImageClassificationTransformer.PredictedKey(p.Second));
        Console.WriteLine($"28 px images resized to {_transformer.Input.ImageSize} px: {agree} of {_originals.Count} predictions agree; max |score difference| {MaxDiff(originalTorch, originalOnnx):G3}");
    }

    [TestMethod]
    public void AnInt8OnnxPipelinePredictsAsTheFloatOneWithinItsRoundingAndSurvivesSaveAndLoad()
    {
        var mlContext = new MLContext(seed: 1);
        var exact = new TransformerChain<ITransformer>(_model.First(), _transformer.ToOnnxPipeline(mlContext));
        var int8 = new TransformerChain<ITransformer>(_model.First(), _transformer.ToOnnxPipeline(mlContext, quantization: OnnxQuantization.DynamicInt8));
        var (exactScores, exactLabels) = Predict(exact, mlContext, _atModelSize);
        var (int8Scores, int8Labels) = Predict(int8, mlContext, _atModelSize);
        float difference = MaxDiff(exactScores, int8Scores);
        Console.WriteLine($"int8 against float32 ONNX: max |score difference| {difference:G3}, {exactLabels.Zip(int8Labels).Count(p => p.First == p.Second)} of {exactLabels.Length} labels agree");
        Assert.IsGreaterThan(0f, difference, "the int8 chain runs the int8 graph");
        const float tolerance = 0.05f;
        Assert.IsLessThanOrEqualTo(tolerance, difference, "probabilities within 0.05 of float32's");
        AssertSameLabels(exactScores, exactLabels, int8Labels, tolerance, "int8 predicted labels");

        string zip = Path.Combine(_folder, "int8.zip");
        mlContext.Model.Save(int8, mlContext.Data.LoadFromEnumerable(_atModelSize).Schema, zip);
        var (loadedScores, loadedLabels) = Predict(new MLContext(seed: 2).Model.Load(zip, out _), mlContext, _atModelSize);
        Assert.AreEqual(0f, MaxDiff(int8Scores, loadedScores), "reloaded int8 chain");
        CollectionAssert.AreEqual(int8Labels, loadedLabels);
    }

    [TestMethod]
    public void AContextAskingForAGpuFallsBackToTheCpuProviderAndScoresTheSame()
    {
        // GpuDeviceId reaches ApplyOnnxModel: with the CPU ONNX Runtime package there is no CUDA provider, so FallbackToCpu
        // decides, as ML.NET's own ONNX transforms do. (The CUDA provider itself needs Microsoft.ML.OnnxRuntime.Gpu.Linux and a GPU.)
        var plain = new MLContext(seed: 1);
        var onGpu = new MLContext(seed: 1) { GpuDeviceId = 0, FallbackToCpu = true };
        var (cpuScores, _) = Predict(new TransformerChain<ITransformer>(_model.First(), _transformer.ToOnnxPipeline(plain)), plain, _atModelSize);
        var (fallbackScores, _) = Predict(new TransformerChain<ITransformer>(_model.First(), _transformer.ToOnnxPipeline(onGpu)), onGpu, _atModelSize);
        Assert.AreEqual(0f, MaxDiff(cpuScores, fallbackScores), "the fallback scores on the CPU provider");

        var strict = new MLContext(seed: 1) { GpuDeviceId = 0, FallbackToCpu = false };
        Assert.ThrowsExactly<InvalidOperationException>(() => _transformer.ToOnnxPipeline(strict),
            "a GPU asked for without fallback is an error, not a silent CPU run");
    }

    [TestMethod]
    public void SampleAppWithoutTorchSharpPredictsAsTheTorchSharpTransformer()
    {
        var mlContext = new MLContext(seed: 1);
        var onnx = new TransformerChain<ITransformer>(_model.First(), _transformer.ToOnnxPipeline(mlContext));
        string zip = Path.Combine(_folder, "sample.zip"), output = Path.Combine(_folder, "predictions.tsv");
        mlContext.Model.Save(onnx, mlContext.Data.LoadFromEnumerable(_atModelSize).Schema, zip);

        var (exitCode, log) = TestHost.RunApp(SampleAppPath, zip, output, Path.Combine(_folder, "at-model-size"));
        Assert.AreEqual(0, exitCode, log);

        var (torchScores, torchLabels) = Predict(_model, mlContext, _atModelSize);
        var lines = File.ReadAllLines(output).Select(line => line.Split('\t')).ToArray();
        CollectionAssert.AreEqual(_atModelSize.Select(r => r.ImagePath).ToArray(), lines.Select(f => f[0]).ToArray(), "one line per image, in order");
        var sampleLabels = lines.Select(f => Array.IndexOf(_transformer.LabelNames.ToArray(), f[1]) + 1).ToArray();
        Assert.IsTrue(sampleLabels.All(key => key > 0), "every printed label is one of the model's");
        AssertSameLabels(torchScores, torchLabels, [.. sampleLabels.Select(k => (uint)k)], 1e-4f, "the sample's predicted labels");
        for (int i = 0; i < lines.Length; i++)
        {
            float printed = float.Parse(lines[i][2], CultureInfo.InvariantCulture);
            Assert.AreEqual(torchScores[i].Max(), printed, 1e-4f, $"row {i}: the sample's probability of its label");
        }

        var shipped = Directory.GetFiles(Path.GetDirectoryName(SampleAppPath)!, "*", SearchOption.AllDirectories).Select(Path.GetFileName).ToArray();
        var forbidden = shipped.Where(f => f!.Contains("torch", StringComparison.OrdinalIgnoreCase) || f.Contains("c10", StringComparison.OrdinalIgnoreCase)
            || f.StartsWith("Microsoft.ML.RepAdapter", StringComparison.Ordinal)).ToArray();
        Assert.IsEmpty(forbidden, $"the sample's output has no libtorch, TorchSharp or RepAdapter file: {string.Join(", ", forbidden)}");
        CollectionAssert.Contains(shipped, "Microsoft.ML.OnnxTransformer.dll");
    }

    [TestMethod]
    public void ExternalDataExportLoadsFromItsPathAndScoresTheSame()
    {
        string path = Path.Combine(_folder, "external.onnx");
        _transformer.ExportOnnx(path, new OnnxExportOptions { ExternalDataThresholdBytes = 0 });
        Assert.IsTrue(File.Exists(path + ".data"), "the weights went to external data");
        Assert.IsLessThan(new FileInfo(path + ".data").Length, new FileInfo(path).Length, "the .onnx file holds the graph, the .data file the weights");

        using var inline = OnnxRun.Session(_transformer.ExportOnnx);
        using var external = new InferenceSession(path);
        using var scope = NewDisposeScope();
        var pixels = OnnxRun.Pixels(3, _transformer.Input.ImageSize);
        Assert.AreEqual(0f, TinyModels.MaxAbsDiff(OnnxRun.Run(inline, pixels), OnnxRun.Run(external, pixels)), "same logits");
    }

    [TestMethod]
    public void VitLargeWeightsFitInOneProtobufMessage()
    {
        // Counted with the formula below, checked first on a model that is built (the tiny ViT); ViT-L itself is not built.
        static long Parameters(VisionTransformerConfig c)
        {
            long d = c.EmbedDim, h = c.MlpHidden;
            long block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * h + h) + (h * d + d);
            return 3L * c.PatchSize * c.PatchSize * d + d + d + (c.NumPatches + 1) * d + c.Depth * block + 2 * d + (c.NumClasses > 0 ? c.NumClasses * (d + 1) : 0);
        }
        using (var tiny = TinyModels.Create("vit"))
            Assert.AreEqual(tiny.parameters().Sum(p => p.numel()), Parameters(TinyModels.VitConfig), "the formula on the tiny ViT");
        long large = Parameters(VisionTransformerFamily.PresetConfigs["vit_large_patch16_224"]);
        Console.WriteLine($"ViT-L/16: {large:N0} parameters, {large * 4 / 1e9:F2} GB in float32; protobuf limit for inline weights {Formats.OnnxWriter.InlineLimitBytes / 1e9:F2} GB");
        Assert.IsGreaterThan(300_000_000L, large);
        Assert.IsLessThan(Formats.OnnxWriter.InlineLimitBytes, large * 4, "ViT-L/16 exports inline, without external data");
    }

    [TestMethod]
    public void MLNetResNet18InBgrWithItsMeanImageScoresTheSameThroughTheOnnxPipeline()
    {
        // The main sample's backbone: BGR input and a per-pixel mean image (the stem's Add), at 32 px to stay fast.
        var (backbone, _) = Microsoft.ML.RepAdapter.Checkpoints.PretrainedBackbones.LoadMLNetResNet18(numClasses: 3, imageSize: 32);
        Assert.AreEqual(ChannelOrder.Bgr, backbone.Input.Order);
        TinyModels.Randomize(backbone, seed: 5);
        backbone.eval();
        var mlContext = new MLContext(seed: 1);
        using var transformer = new RepAdapterImageClassificationTransformer(mlContext, backbone, LabelKeyValues.FromNames(["a", "b", "c"]),
            new TrainingSummary(AdaptationMethod.RepAdapter, AdapterPlacement.Block, TrainableParameters.AdaptersAndHead, 1f, 0, 0),
            "Image", "Score", "PredictedLabel", scoringBatchSize: 4, CPU);
        using (var scope = NewDisposeScope())
        {
            using var session = OnnxRun.Session(transformer.ExportOnnx);
            var pixels = OnnxRun.Pixels(3, 32);
            OnnxRun.AssertClose(transformer.Forward(pixels), OnnxRun.Run(session, pixels, output: "logits"), "ML.NET ResNet-18 logits, batch 3");
        }

        var rows = AtModelSize(_originals, transformer.Input, Path.Combine(_folder, "bgr-at-model-size"));
        var load = mlContext.Transforms.LoadImages("Image", "", nameof(PathRow.ImagePath)).Fit(mlContext.Data.LoadFromEnumerable(rows));
        var (torchScores, torchLabels) = Predict(new TransformerChain<ITransformer>(load, transformer), mlContext, rows);
        var (onnxScores, onnxLabels) = Predict(new TransformerChain<ITransformer>(load, transformer.ToOnnxPipeline(mlContext)), mlContext, rows);
        Assert.IsLessThanOrEqualTo(1e-4f, MaxDiff(torchScores, onnxScores), "scores through the ONNX pipeline (BGR pixels)");
        AssertSameLabels(torchScores, torchLabels, onnxLabels, 1e-4f, "labels through the ONNX pipeline (BGR pixels)");

        // 28 px images enlarged to 32: with their size given, the graph resamples them as the library does (bicubic);
        // a pixel may still round to the other side of .5, so scores agree closely rather than to float rounding.
        load = mlContext.Transforms.LoadImages("Image", "", nameof(PathRow.ImagePath)).Fit(mlContext.Data.LoadFromEnumerable(_originals));
        (torchScores, torchLabels) = Predict(new TransformerChain<ITransformer>(load, transformer), mlContext, _originals);
        (onnxScores, onnxLabels) = Predict(new TransformerChain<ITransformer>(load, transformer.ToOnnxPipeline(mlContext, sourceImageSize: (28, 28))), mlContext, _originals);
        var (nearestScores, nearestLabels) = Predict(new TransformerChain<ITransformer>(load, transformer.ToOnnxPipeline(mlContext)), mlContext, _originals);
        Console.WriteLine($"28 px images, model at 32 px: resampled in the graph, max |score difference| {MaxDiff(torchScores, onnxScores):G3}, "
            + $"{torchLabels.Zip(onnxLabels).Count(p => p.First == p.Second)} of {_originals.Count} labels agree; ResizeImages to 32 px (nearest): "
            + $"{MaxDiff(torchScores, nearestScores):G3}, {torchLabels.Zip(nearestLabels).Count(p => p.First == p.Second)} agree");
        Assert.IsLessThanOrEqualTo(1e-3f, MaxDiff(torchScores, onnxScores), "scores with the resampling in the graph");
        AssertSameLabels(torchScores, torchLabels, onnxLabels, 1e-3f, "labels with the resampling in the graph");
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => transformer.ToOnnxPipeline(mlContext, sourceImageSize: (0, 28)));
    }

    /// <summary>A tiny segmentation model trained one epoch on mosaics (images loaded from paths, as ToOnnxPipeline needs).</summary>
    private static (ITransformer Model, RepAdapterSegmentationTransformer Transformer) TinySegmentation(MLContext mlContext, string backbone)
    {
        var options = SegmentationInputTests.Options(backbone);
        options.ScoringBatchSize = 4;
        var model = mlContext.Transforms.LoadImages("Image", "", nameof(MosaicRow.ImagePath))
            .Append(mlContext.MulticlassClassification.Trainers.RepAdapterSegmentation(options))
            .Fit(SegmentationTrainerTests.WithMasks(mlContext, SegmentationData.Mosaics("train", 8)));
        return (model, model.LastTransformer);
    }

    [TestMethod]
    public void SegmentationExportAndOnnxPipelineGiveTheTransformersMaskAndADisposedOneRefuses()
    {
        var mlContext = new MLContext(seed: 1);
        var (model, transformer) = TinySegmentation(mlContext, "resnet_basic");
        int size = transformer.Input.ImageSize;
        var rows = AtModelSize(SegmentationData.Mosaics("test", 4).Select(m => new PathRow { ImagePath = m.ImagePath }), transformer.Input,
            Path.Combine(_folder, "mosaics-at-model-size"));
        var expected = model.Transform(mlContext.Data.LoadFromEnumerable(rows)).GetColumn<uint[]>(transformer.PredictedMaskColumnName).ToArray();

        using var session = OnnxRun.Session(transformer.ExportOnnx);
        var images = rows.Select(r => MLImage.CreateFromFile(r.ImagePath)).ToList();
        bool[] tied;
        try
        {
            using var scope = NewDisposeScope();
            var pixels = transformer.Preprocessor.ToPixels(images);
            var mask = OnnxRun.Run(session, pixels, output: "mask");
            CollectionAssert.AreEqual(new long[] { rows.Count, size, size }, mask.shape);
            // A pixel whose two best classes are within rounding of each other may go either way; no other may differ.
            var top = OnnxRun.Run(session, pixels, output: "logits").topk(2, dim: 1).values;
            tied = (top.select(1, 0) - top.select(1, 1)).lt(1e-4).flatten().data<bool>().ToArray();
            AssertSameClasses(expected.SelectMany(m => m).ToArray(), [.. mask.data<long>().ToArray().Select(k => (uint)k)], tied, "exported graph's mask");
        }
        finally
        {
            images.ForEach(i => i.Dispose());
        }

        var onnx = new TransformerChain<ITransformer>(((IEnumerable<ITransformer>)model).First(), transformer.ToOnnxPipeline(mlContext));
        var actual = onnx.Transform(mlContext.Data.LoadFromEnumerable(rows)).GetColumn<uint[]>(transformer.PredictedMaskColumnName).ToArray();
        AssertSameClasses(expected.SelectMany(m => m).ToArray(), actual.SelectMany(m => m).ToArray(), tied, "ONNX chain's mask");

        transformer.Dispose();
        Assert.ThrowsExactly<ObjectDisposedException>(() => transformer.ExportOnnx(new MemoryStream()));
        Assert.ThrowsExactly<ObjectDisposedException>(() => transformer.ToOnnxPipeline(mlContext));
    }

    private static void AssertSameClasses(uint[] expected, uint[] actual, bool[] tied, string what)
    {
        Assert.HasCount(expected.Length, actual);
        var differ = Enumerable.Range(0, expected.Length).Where(p => expected[p] != actual[p] && !tied[p]).ToArray();
        Assert.IsEmpty(differ, $"{what}: {differ.Length} pixels differ, e.g. pixel {differ.FirstOrDefault()}");
    }

    [TestMethod]
    public void UserColumnsNamedLikeTheChainsOwnAreLeftAsTheyAre()
    {
        // "pixels" and "logits" are the exported graph's names; the chain's columns must not overwrite or drop the user's.
        var mlContext = new MLContext(seed: 1);
        var onnx = _model.Take(_model.Count() - 1).Aggregate(new TransformerChain<ITransformer>(), (c, t) => c.Append(t))
            .Append(_transformer.ToOnnxPipeline(mlContext));
        var rows = _atModelSize.Select((r, i) => new CollidingRow { ImagePath = r.ImagePath, pixels = $"mine {i}", logits = i, resized = -i }).ToList();
        var scored = onnx.Transform(mlContext.Data.LoadFromEnumerable(rows));
        CollectionAssert.AreEqual(rows.Select(r => r.pixels).ToArray(), scored.GetColumn<string>("pixels").ToArray());
        CollectionAssert.AreEqual(rows.Select(r => r.logits).ToArray(), scored.GetColumn<float>("logits").ToArray());
        CollectionAssert.AreEqual(rows.Select(r => r.resized).ToArray(), scored.GetColumn<float>("resized").ToArray());
        var (torchScores, _) = Predict(_model, mlContext, _atModelSize);
        Assert.IsLessThanOrEqualTo(1e-4f, MaxDiff(torchScores, [.. scored.GetColumn<float[]>("Score")]));
        Assert.IsFalse(scored.Schema.Any(c => c.Name.StartsWith("RepAdapter.", StringComparison.Ordinal)), "no column of the chain's own is left");
    }

    [TestMethod]
    public void TheOnnxScorerForManyClassesHoldsNoSquareMatrix()
    {
        // A dense K x K identity would be 40 GB at 100,000 classes.
        const int classes = 100_000;
        var env = new MLContext();
        var labels = LabelKeyValues.FromNames([.. Enumerable.Range(0, classes).Select(k => $"c{k}")]);
        long before = GC.GetTotalAllocatedBytes(precise: true);
        var scorer = OnnxMulticlassScorer.Create(env, "logits", labels, "Score", "PredictedLabel");
        Assert.IsLessThan(512L << 20, GC.GetTotalAllocatedBytes(precise: true) - before, "bounded by K, not K x K");
        var logits = new float[classes];
        logits[77_777] = 5f;
        var view = env.Data.LoadFromEnumerable([new LogitsRow { logits = logits }]);
        Assert.AreEqual(77_778u, scorer.Transform(view).GetColumn<uint>("PredictedLabel").Single(), "argmax, as a 1-based key");
    }

    private sealed class LogitsRow
    {
        [VectorType(100_000)]
        public float[] logits { get; set; } = [];
    }

    private sealed class CollidingRow
    {
        public string ImagePath { get; set; } = "";
        public string pixels { get; set; } = "";
        public float logits { get; set; }
        public float resized { get; set; }
    }

    public sealed class PathRow
    {
        public string ImagePath { get; set; } = "";
    }
}
