using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Segmentation;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Tests.Segmentation;

/// <summary>Outputs on request, the evaluation's arithmetic, and bad masks named by column and row (tiny backbones).</summary>
[TestClass]
public class SegmentationInputTests
{
    public sealed class BytesRow
    {
        public byte[] Image { get; set; } = [];
        public byte[] Mask { get; set; } = [];
    }

    /// <summary>An encoded grayscale PNG of <paramref name="gray"/> (row-major, <paramref name="width"/> wide).</summary>
    internal static byte[] Png(byte[] gray, int width, int height)
    {
        var bgra = new byte[gray.Length * 4];
        for (int p = 0; p < gray.Length; p++) (bgra[4 * p], bgra[4 * p + 1], bgra[4 * p + 2], bgra[4 * p + 3]) = (gray[p], gray[p], gray[p], 255);
        using var image = MLImage.CreateFromPixels(width, height, MLPixelFormat.Bgra32, bgra);
        string path = Path.Combine(Path.GetTempPath(), $"mask-{Guid.NewGuid():N}.png");
        try
        {
            image.Save(path);
            return File.ReadAllBytes(path);
        }
        finally
        {
            File.Delete(path);
        }
    }

    internal static List<BytesRow> Rows(int count = 6) =>
        [.. SegmentationData.Mosaics("train", count).Select(m => new BytesRow { Image = File.ReadAllBytes(m.ImagePath), Mask = File.ReadAllBytes(m.MaskPath) })];

    /// <summary>Options for a tiny segmentation run on <paramref name="backbone"/> (one epoch, 8 head channels).</summary>
    internal static RepAdapterSegmentationTrainer.Options Options(string backbone = "resnet_basic")
    {
        var tiny = Classification.TinyTrainerOptions.Create(epochs: 1, backbone: backbone);
        return new RepAdapterSegmentationTrainer.Options
        {
            Backbone = tiny.Backbone,
            Epochs = 1,
            BatchSize = 4,
            WarmupEpochs = 0,
            LearningRate = 3e-3,
            AdapterScale = 1f,
            DropPathRate = 0,
            HeadChannels = 8,
        };
    }

    private static T FitFails<T>(List<BytesRow> rows, Action<RepAdapterSegmentationTrainer.Options>? configure = null) where T : Exception
    {
        var mlContext = new MLContext(seed: 1);
        var options = Options();
        configure?.Invoke(options);
        return Assert.ThrowsExactly<T>(() => mlContext.MulticlassClassification.Trainers.RepAdapterSegmentation(options).Fit(mlContext.Data.LoadFromEnumerable(rows)));
    }

    [TestMethod]
    public void AMaskOfAnotherSizeThanItsImageIsRefused()
    {
        var rows = Rows();
        rows[2].Mask = Png(new byte[28 * 28], 28, 28);
        var error = FitFails<InvalidDataException>(rows);
        StringAssert.Contains(error.Message, "Mask column 'Mask', row 2");
        StringAssert.Contains(error.Message, "28x28 pixels, its image 56x56");
    }

    [TestMethod]
    public void AClassIndexOutOfRangeIsRefusedNamingThePixel()
    {
        var rows = Rows();
        byte[] valid = [.. Enumerable.Range(0, 56 * 56).Select(p => (byte)(p % 3))];
        foreach (var row in rows) row.Mask = Png(valid, 56, 56);
        var mask = valid.ToArray();
        mask[3 * 56 + 5] = 7;
        rows[1].Mask = Png(mask, 56, 56);
        var error = FitFails<InvalidDataException>(rows, o => o.ClassNames = ["background", "item", "other"]);
        StringAssert.Contains(error.Message, "Mask column 'Mask', row 1");
        StringAssert.Contains(error.Message, "class index 7 at pixel (x 5, y 3) is out of range: 3 classes");
    }

    [TestMethod]
    public void AMaskWithoutALabelledPixelIsRefused()
    {
        var rows = Rows();
        rows[3].Mask = Png(Enumerable.Repeat((byte)255, 56 * 56).ToArray(), 56, 56);
        var error = FitFails<InvalidDataException>(rows);
        StringAssert.Contains(error.Message, "Mask column 'Mask', row 3");
        StringAssert.Contains(error.Message, "ignore value 255");
    }

    [TestMethod]
    public void ASingleClassIsRefused()
    {
        var rows = Rows();
        foreach (var row in rows) row.Mask = Png(new byte[56 * 56], 56, 56);
        StringAssert.Contains(FitFails<InvalidOperationException>(rows).Message, "a single class (0)");
    }

    [TestMethod]
    [DataRow("LearningRate", double.NaN)]
    [DataRow("WeightDecay", double.NaN)]
    [DataRow("WarmupLearningRate", -1e-6)]
    [DataRow("FinalLearningRate", double.PositiveInfinity)]
    [DataRow("WarmupEpochs", 1)]
    [DataRow("ImageSize", 0)]
    [DataRow("ScoringBatchSize", 0)]
    [DataRow("NumberOfThreads", 0)]
    [DataRow("IgnoreIndex", 256)]
    [DataRow("NumberOfClasses", 1)]
    [DataRow("HeadChannels", 0)]
    [DataRow("Std", new[] { 0.2f, float.PositiveInfinity, 0.2f })]
    [DataRow("Std", new[] { 0f, 0.2f, 0.2f })]
    public void OptionsThatCannotTrainAreRefusedUpFrontNamingTheOption(string option, object value)
    {
        // The segmentation trainer shares the classification trainer's checks and adds its own; refused on construction,
        // so nothing (set_num_threads(0) would abort the process) reaches libtorch.
        var options = TestData.WithOption(Options(), option, value);
        var error = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new MLContext(seed: 1).MulticlassClassification.Trainers.RepAdapterSegmentation(options));
        Assert.AreEqual(option, error.ParamName);
    }

    [TestMethod]
    public void EmptyDataIsRefused() => StringAssert.Contains(FitFails<InvalidOperationException>([]).Message, "no rows");

    [TestMethod]
    public void UndecodableAndColourMasksAreRefusedNamingTheRow()
    {
        var rows = Rows();
        rows[4].Mask = [1, 2, 3, 4];
        var error = FitFails<InvalidDataException>(rows);
        StringAssert.Contains(error.Message, "Mask column 'Mask', row 4");
        StringAssert.Contains(error.Message, "not a decodable image");

        rows = Rows();
        rows[5].Mask = rows[5].Image.ToArray();
        using (var colour = MLImage.CreateFromPixels(56, 56, MLPixelFormat.Bgra32, [.. Enumerable.Range(0, 56 * 56).SelectMany(_ => new byte[] { 10, 20, 30, 255 })]))
        {
            string path = Path.Combine(Path.GetTempPath(), $"colour-{Guid.NewGuid():N}.png");
            colour.Save(path);
            rows[5].Mask = File.ReadAllBytes(path);
            File.Delete(path);
        }
        error = FitFails<InvalidDataException>(rows);
        StringAssert.Contains(error.Message, "'Mask', row 5");
        StringAssert.Contains(error.Message, "not grayscale: pixel (x 0, y 0) is RGB (30, 20, 10)");
    }

    /// <summary>A 16-bit grayscale PNG (colour type 0, not interlaced) of <paramref name="values"/>, rows filtered with Sub.</summary>
    internal static byte[] Png16(ushort[] values, int width, int height)
    {
        var raw = new List<byte>();
        for (int y = 0; y < height; y++)
        {
            raw.Add(1);                                          // Sub: each byte minus the one 2 bytes left
            var row = Enumerable.Range(0, width).SelectMany(x => new[] { (byte)(values[y * width + x] >> 8), (byte)values[y * width + x] }).ToArray();
            for (int i = 0; i < row.Length; i++) raw.Add((byte)(row[i] - (i >= 2 ? row[i - 2] : 0)));
        }
        return MLNet.TestImages.Png(new MLNet.TestImages.PngSpec(width, height, ColourType: 0, BitDepth: 16), [.. raw]);
    }

    [TestMethod]
    public void SixteenBitMasksAreReadAtTheirDepth()
    {
        // Rows of 0, 1 and 2 as 16-bit values: an 8-bit decode would read their high bytes (all 0).
        var rows = Rows();
        int size = 56;
        var good = Enumerable.Range(0, size * size).Select(p => (ushort)(p / size % 3)).ToArray();
        var mlContext = new MLContext(seed: 1);
        var fetched = new Microsoft.ML.RepAdapter.MLNet.FetchedImage("Mask", 0, Png16(good, size, size), null, null);
        using var indices = MaskImages.Read(fetched);
        CollectionAssert.AreEqual(good.Select(v => (byte)v).ToArray(), indices.flatten().data<byte>().ToArray());

        // 0 / 256 / 512, which the 8-bit decode turned into classes 0 / 1 / 2: refused, naming the pixel.
        var shifted = good.Select(v => (ushort)(v << 8)).ToArray();
        rows[3].Mask = Png16(shifted, size, size);
        var error = FitFails<InvalidDataException>(rows);
        StringAssert.Contains(error.Message, "Mask column 'Mask', row 3");
        StringAssert.Contains(error.Message, "holds 256 at pixel (x 0, y 1)");
    }

    [TestMethod]
    public void LossyMasksAreRefused()
    {
        var rows = Rows();
        using (var mask = MLImage.CreateFromStream(new MemoryStream(rows[2].Mask)))
        {
            string path = Path.Combine(Path.GetTempPath(), $"mask-{Guid.NewGuid():N}.jpg");
            mask.Save(path);
            rows[2].Mask = File.ReadAllBytes(path);
            File.Delete(path);
        }
        var error = FitFails<InvalidDataException>(rows);
        StringAssert.Contains(error.Message, "Mask column 'Mask', row 2");
        StringAssert.Contains(error.Message, "a JPEG");
        StringAssert.Contains(error.Message, "save masks as PNG");
    }

    [TestMethod]
    public void LossyWebPMasksAreRefusedAndLosslessOnesAreNot()
    {
        using var picture = MLNet.TestImages.Picture(16, 16);
        var rows = Rows();
        rows[3].Mask = MLNet.TestImages.WebP(picture, SkiaSharp.SKWebpEncoderCompression.Lossy);
        var error = FitFails<InvalidDataException>(rows);
        StringAssert.Contains(error.Message, "Mask column 'Mask', row 3");
        StringAssert.Contains(error.Message, "a lossy WebP");
    }

    [TestMethod]
    public void AMaskWhoseHeaderDeclaresMoreThanMaxImagePixelsIsRefusedBeforeDecoding()
    {
        var rows = Rows();
        rows[1].Mask = MLNet.TestImages.BmpHeader(30000, 30000);
        var error = FitFails<InvalidDataException>(rows);
        StringAssert.Contains(error.Message, "Mask column 'Mask', row 1");
        StringAssert.Contains(error.Message, "30000 x 30000");
        StringAssert.Contains(error.Message, "MaxImagePixels");
    }

    [TestMethod]
    public void ASegmentationTaskModelHoldsTheDecoderAndMergesIntoItsCheckpointOnLoad()
    {
        var mlContext = new MLContext(seed: 1);
        var options = Options();
        options.Backbone = null;
        options.CheckpointPath = Checkpoints.CheckpointFiles.Fixture("tiny_resnet_basic.safetensors");
        options.ImageSize = 56;
        options.ScoresColumnName = "Scores";
        var data = mlContext.Data.LoadFromEnumerable(Rows(8));
        var transformer = mlContext.MulticlassClassification.Trainers.RepAdapterSegmentation(options).Fit(data);
        string folder = Checkpoints.CheckpointFiles.TempDirectory(), merged = Path.Combine(folder, "merged.zip"), task = Path.Combine(folder, "task.zip");
        mlContext.Model.Save(transformer, data.Schema, merged);
        transformer.Storage = RepAdapter.MLNet.ModelStorage.AdaptersOnly;
        mlContext.Model.Save(transformer, data.Schema, task);
        Assert.IsLessThan(new FileInfo(merged).Length, new FileInfo(task).Length, "the task model leaves the backbone out");

        var loaded = new MLContext().Model.Load(task, out _);
        var expected = transformer.Transform(data).GetColumn<float[]>("Scores").SelectMany(s => s).ToArray();
        var actual = loaded.Transform(data).GetColumn<float[]>("Scores").SelectMany(s => s).ToArray();
        Assert.HasCount(expected.Length, actual);
        Assert.IsLessThanOrEqualTo(1e-6f, expected.Zip(actual).Max(p => Math.Abs(p.First - p.Second)), "per-pixel scores of the task model");
    }

    [TestMethod]
    public void ColourisedMasksAndPerPixelScoresComeOnRequest()
    {
        var mlContext = new MLContext(seed: 1);
        var options = Options("vit");
        options.Head = SegmentationHeadKind.Naive;
        options.ColorizedMaskColumnName = "Overlay";
        options.ScoresColumnName = "Scores";
        var data = mlContext.Data.LoadFromEnumerable(Rows(8));
        var transformer = mlContext.MulticlassClassification.Trainers.RepAdapterSegmentation(options).Fit(data);
        Assert.AreEqual(11, transformer.NumberOfClasses, "the largest class index in the training masks + 1");
        var scored = transformer.Transform(data);
        var masks = scored.GetColumn<uint[]>("PredictedMask").ToList();
        var scores = scored.GetColumn<float[]>("Scores").ToList();
        using var cursor = scored.GetRowCursor([scored.Schema["Overlay"]]);
        var overlay = cursor.GetGetter<MLImage>(scored.Schema["Overlay"]);
        MLImage image = null!;
        for (int row = 0; cursor.MoveNext(); row++)
        {
            overlay(ref image);
            Assert.AreEqual(56, image.Width);
            Assert.AreEqual(56, image.Height);
            Assert.HasCount(11 * 56 * 56, scores[row]);
            using var probabilities = tensor(scores[row]).view(11, 56 * 56);
            Assert.AreEqual(0f, (probabilities.sum([0]) - 1).abs().max().item<float>(), 1e-4f, "probabilities per pixel");
            CollectionAssert.AreEqual(masks[row], probabilities.argmax(0).data<long>().Select(k => (uint)k).ToArray(), "the mask is the scores' argmax");
            var (r, g, b) = RepAdapterSegmentationTransformer.ClassColor((int)masks[row][0]);
            var bgr = image.GetBGRPixels;
            Assert.AreEqual((b, g, r), (bgr[0], bgr[1], bgr[2]), "the overlay shows the first pixel's class colour");
        }
        image?.Dispose();
    }

    [TestMethod]
    public void PixelsWithNaNScoresGetNoClass()
    {
        var mlContext = new MLContext(seed: 1);
        var options = Options();
        options.Head = SegmentationHeadKind.Naive;
        var data = mlContext.Data.LoadFromEnumerable(Rows(4));
        using var transformer = mlContext.MulticlassClassification.Trainers.RepAdapterSegmentation(options).Fit(data);
        // A NaN in the classifier's bias reaches every pixel's logit of that class, and so every pixel's argmax.
        using (no_grad()) transformer.Model.named_parameters().Single(p => p.name == "decode_head.conv_seg.bias").parameter[0] = float.NaN;
        var masks = transformer.Transform(data).GetColumn<uint[]>("PredictedMask").ToList();
        Assert.HasCount(4, masks);
        foreach (var mask in masks) Assert.IsTrue(mask.All(k => k == 255), "every pixel gets the ignore value, no class");
    }

    [TestMethod]
    public void EvaluationCountsIoUPerClassOverLabelledPixels()
    {
        // Truth 2 x 3: [0 0 1 / 1 2 255]; prediction [0 1 1 / 1 2 0]. Class 0: 1 hit, truth 2, predicted 1 -> IoU 1/2.
        // Class 1: 2 hits, truth 2, predicted 3 -> 2/3. Class 2: 1/1. The ignored pixel is left out. 4 of 5 pixels correct.
        var mlContext = new MLContext(seed: 1);
        var definition = SchemaDefinition.Create(typeof(ScoredRow));
        var names = new VBuffer<ReadOnlyMemory<char>>(3, ["a".AsMemory(), "b".AsMemory(), "c".AsMemory()]);
        definition["PredictedMask"].AddAnnotation(RepAdapterSegmentationTransformer.ClassNamesAnnotation, names,
            new VectorDataViewType(TextDataViewType.Instance, 3));
        var row = new ScoredRow { Mask = Png([0, 0, 1, 1, 2, 255], 3, 2), PredictedMask = [0, 1, 1, 1, 2, 0] };
        var metrics = mlContext.MulticlassClassification.EvaluateSegmentation(mlContext.Data.LoadFromEnumerable([row], definition));
        Assert.AreEqual(0.5, metrics.PerClassIoU[0], 1e-12);
        Assert.AreEqual(2.0 / 3, metrics.PerClassIoU[1], 1e-12);
        Assert.AreEqual(1.0, metrics.PerClassIoU[2], 1e-12);
        Assert.AreEqual((0.5 + 2.0 / 3 + 1) / 3, metrics.MeanIoU, 1e-12);
        Assert.AreEqual(0.8, metrics.PixelAccuracy, 1e-12);
        Assert.AreEqual(1L, metrics.ConfusionMatrix[0, 1]);
        CollectionAssert.AreEqual(new[] { "a", "b", "c" }, metrics.ClassNames.ToArray());
    }

    [TestMethod]
    public void EvaluationRefusesAMaskOfTheRightPixelCountButAnotherShape()
    {
        // A 3 x 2 true mask against the prediction for a 2 x 3 image: 6 pixels each, so only both dimensions tell.
        var mlContext = new MLContext(seed: 1);
        var definition = SchemaDefinition.Create(typeof(ScoredImageRow));
        var names = new VBuffer<ReadOnlyMemory<char>>(3, ["a".AsMemory(), "b".AsMemory(), "c".AsMemory()]);
        var predicted = definition["PredictedMask"];
        predicted.AddAnnotation(RepAdapterSegmentationTransformer.ClassNamesAnnotation, names, new VectorDataViewType(TextDataViewType.Instance, 3));
        predicted.AddAnnotation(RepAdapterSegmentationTransformer.ImageColumnAnnotation, "Image".AsMemory(), TextDataViewType.Instance);
        var row = new ScoredImageRow { Image = Png(new byte[6], 2, 3), Mask = Png([0, 0, 1, 1, 2, 2], 3, 2), PredictedMask = [0, 1, 1, 1, 2, 0] };
        var error = Assert.ThrowsExactly<InvalidOperationException>(() =>
            mlContext.MulticlassClassification.EvaluateSegmentation(mlContext.Data.LoadFromEnumerable([row], definition)));
        StringAssert.Contains(error.Message, "Row 0: the mask in 'Mask' is 3 x 2 pixels, the image in 'Image' that 'PredictedMask' was predicted from 2 x 3");

        row.Mask = Png([0, 0, 1, 1, 2, 2], 2, 3);
        var metrics = mlContext.MulticlassClassification.EvaluateSegmentation(mlContext.Data.LoadFromEnumerable([row], definition));
        Assert.AreEqual(4.0 / 6, metrics.PixelAccuracy, 1e-12, "the same shapes are evaluated");
    }

    public sealed class ScoredImageRow
    {
        public byte[] Image { get; set; } = [];
        public byte[] Mask { get; set; } = [];
        public uint[] PredictedMask { get; set; } = [];
    }

    public sealed class ScoredRow
    {
        public byte[] Mask { get; set; } = [];
        public uint[] PredictedMask { get; set; } = [];
    }
}
