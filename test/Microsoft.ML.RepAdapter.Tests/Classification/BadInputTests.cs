using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Checkpoints;
using Microsoft.ML.RepAdapter.Classification;
using Microsoft.ML.RepAdapter.Torch;
using Microsoft.ML.RepAdapter.Training;

namespace Microsoft.ML.RepAdapter.Tests.Classification;

/// <summary>Bad input gives a clear error naming the column, row or value at fault.</summary>
[TestClass]
public class BadInputTests
{
    /// <summary>Fitting fails with exactly <typeparamref name="T"/> (ML.NET's Host.Except is an InvalidOperationException).</summary>
    private static T FitFails<T>(IDataView data, Action<RepAdapterImageClassificationTrainer.Options>? configure = null, MLContext? mlContext = null)
        where T : Exception
    {
        mlContext ??= new MLContext(seed: 1);
        var options = TinyTrainerOptions.Create(epochs: 1);
        configure?.Invoke(options);
        return Assert.ThrowsExactly<T>(() => mlContext.MulticlassClassification.Trainers.RepAdapter(options).Fit(data));
    }

    private static IDataView Bytes(MLContext mlContext, IEnumerable<ImageBytesRow> rows) =>
        mlContext.Transforms.Conversion.MapValueToKey("Label").Fit(mlContext.Data.LoadFromEnumerable(rows)).Transform(mlContext.Data.LoadFromEnumerable(rows));

    private static List<ImageBytesRow> ByteRows(int classes = 2, int perClass = 3) =>
        [.. TestData.Images(classes: classes, perClass: perClass).Select(r => new ImageBytesRow { ImageSource = File.ReadAllBytes(r.ImagePath), Label = r.Label })];

    [TestMethod]
    public void UndecodableImageBytesNameTheColumnAndRow()
    {
        var mlContext = new MLContext(seed: 1);
        var rows = ByteRows();
        rows[4].ImageSource = [1, 2, 3, 4, 5];
        var error = FitFails<InvalidDataException>(Bytes(mlContext, rows), o => o.ImageColumnName = nameof(ImageBytesRow.ImageSource));
        StringAssert.Contains(error.Message, "'ImageSource'");
        StringAssert.Contains(error.Message, "row 4");
        StringAssert.Contains(error.Message, "not a decodable image");
    }

    [TestMethod]
    public void MissingLabelColumnIsNamed()
    {
        var mlContext = new MLContext(seed: 1);
        var data = TestData.Prepared(mlContext, TestData.Images(classes: 2, perClass: 2));
        var error = FitFails<ArgumentOutOfRangeException>(data, o => o.LabelColumnName = "Category");
        StringAssert.Contains(error.Message, "Category");
    }

    [TestMethod]
    public void LabelThatIsNotAKeyAsksForMapValueToKey()
    {
        var mlContext = new MLContext(seed: 1);
        var raw = mlContext.Data.LoadFromEnumerable(TestData.Images(classes: 2, perClass: 2));
        var data = mlContext.Transforms.LoadImages("Image", "", nameof(ImageRow.ImagePath)).Fit(raw).Transform(raw);
        var error = FitFails<ArgumentOutOfRangeException>(data);
        StringAssert.Contains(error.Message, "Label");
        StringAssert.Contains(error.Message, "MapValueToKey");
    }

    [TestMethod]
    public void ImageColumnOfTheWrongTypeIsNamed()
    {
        var mlContext = new MLContext(seed: 1);
        var raw = mlContext.Data.LoadFromEnumerable(TestData.Images(classes: 2, perClass: 2));
        var data = mlContext.Transforms.Conversion.MapValueToKey("Label").Fit(raw).Transform(raw);
        var error = FitFails<ArgumentOutOfRangeException>(data, o => o.ImageColumnName = nameof(ImageRow.ImagePath));
        StringAssert.Contains(error.Message, "ImagePath");
        StringAssert.Contains(error.Message, "LoadImages");
    }

    [TestMethod]
    public void SingleClassIsRefused()
    {
        var mlContext = new MLContext(seed: 1);
        var error = FitFails<InvalidOperationException>(TestData.Prepared(mlContext, TestData.Images(classes: 1, perClass: 4)));
        StringAssert.Contains(error.Message, "single class");
    }

    [TestMethod]
    public void EmptyDataIsRefused()
    {
        var mlContext = new MLContext(seed: 1);
        var mapping = mlContext.Transforms.Conversion.MapValueToKey("Label")
            .Append(mlContext.Transforms.LoadImages("Image", "", nameof(ImageRow.ImagePath)))
            .Fit(mlContext.Data.LoadFromEnumerable(TestData.Images(classes: 2, perClass: 2)));
        var empty = mapping.Transform(mlContext.Data.LoadFromEnumerable(new List<ImageRow>()));
        var error = FitFails<InvalidOperationException>(empty);
        StringAssert.Contains(error.Message, "no rows");
    }

    [TestMethod]
    public void UnknownValidationLabelNamesTheRow()
    {
        var mlContext = new MLContext(seed: 1);
        var mapping = mlContext.Transforms.Conversion.MapValueToKey("Label")
            .Append(mlContext.Transforms.LoadImages("Image", "", nameof(ImageRow.ImagePath)))
            .Fit(mlContext.Data.LoadFromEnumerable(TestData.Images(classes: 2, perClass: 3)));
        var train = mapping.Transform(mlContext.Data.LoadFromEnumerable(TestData.Images(classes: 2, perClass: 3)));
        var validationRows = TestData.Images("test", classes: 2, perClass: 2);
        validationRows[1].Label = "Unicorn";
        var validation = mapping.Transform(mlContext.Data.LoadFromEnumerable(validationRows));
        var error = FitFails<InvalidOperationException>(train, o => o.ValidationSet = validation);
        StringAssert.Contains(error.Message, "Row 1 of the validation set");
        StringAssert.Contains(error.Message, "'Label'");
    }

    [TestMethod]
    public void DivergingTrainingStopsNamingTheEpochWithAHint()
    {
        var mlContext = new MLContext(seed: 1);
        var data = TestData.Prepared(mlContext, TestData.Images(classes: 2, perClass: 4));
        var error = FitFails<TrainingDivergedException>(data, o => { o.LearningRate = 1e30; o.Epochs = 5; o.AdapterScale = 1e10f; });
        StringAssert.Contains(error.Message, "diverged");
        StringAssert.Contains(error.Message, "epoch");
        StringAssert.Contains(error.Message, "lower LearningRate");
    }

    [TestMethod]
    public void ImagesOfVaryingSizesAreResized()
    {
        var mlContext = new MLContext(seed: 1);
        var rows = ByteRows();
        // A 40 x 23 colour image among the 28 x 28 grey ones.
        var pixels = Enumerable.Range(0, 40 * 23 * 4).Select(i => (byte)(i * 7)).ToArray();
        using var odd = MLImage.CreateFromPixels(40, 23, MLPixelFormat.Bgra32, pixels);
        string path = Path.Combine(Path.GetTempPath(), $"odd-{Guid.NewGuid():N}.png");
        odd.Save(path);
        rows[0].ImageSource = File.ReadAllBytes(path);
        File.Delete(path);
        var options = TinyTrainerOptions.Create(epochs: 1);
        options.ImageColumnName = nameof(ImageBytesRow.ImageSource);
        var data = Bytes(mlContext, rows);
        var transformer = mlContext.MulticlassClassification.Trainers.RepAdapter(options).Fit(data);
        Assert.HasCount(rows.Count, transformer.Transform(data).GetColumn<float[]>("Score").ToList());
    }

    [TestMethod]
    [DataRow("LearningRate", double.PositiveInfinity)]
    [DataRow("LearningRate", double.NaN)]
    [DataRow("LearningRate", -1e-3)]
    [DataRow("WeightDecay", double.NaN)]
    [DataRow("WeightDecay", -1.0)]
    [DataRow("WarmupLearningRate", double.PositiveInfinity)]
    [DataRow("WarmupLearningRate", -1e-6)]
    [DataRow("FinalLearningRate", -1e-5)]
    [DataRow("FinalLearningRate", double.PositiveInfinity)]
    [DataRow("WarmupEpochs", 4)]
    [DataRow("Epochs", 0)]
    [DataRow("BatchSize", 0)]
    [DataRow("ImageSize", 0)]
    [DataRow("ScoringBatchSize", 0)]
    [DataRow("NumberOfThreads", 0)]
    [DataRow("NumberOfThreads", -2)]
    [DataRow("GpuDeviceId", -1)]
    [DataRow("AdapterScale", float.NaN)]
    [DataRow("AdapterGroups", 3)]
    [DataRow("AdapterDropout", 1.0)]
    [DataRow("DropPathRate", -0.1)]
    [DataRow("ValidationSetFraction", 1.0)]
    [DataRow("MaxGradientNorm", 0.0)]
    [DataRow("MaxGradientNorm", -1.0)]
    [DataRow("MaxGradientNorm", double.NaN)]
    [DataRow("MaxGradientNorm", double.PositiveInfinity)]
    public void OptionsThatCannotTrainAreRefusedUpFrontNamingTheOption(string option, object value)
    {
        var options = TestData.WithOption(TinyTrainerOptions.Create(epochs: 4), option, value);
        var error = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new MLContext(seed: 1).MulticlassClassification.Trainers.RepAdapter(options));
        Assert.AreEqual(option, error.ParamName);
        StringAssert.Contains(error.Message, option);
    }

    [TestMethod]
    public void FamilyLoadOptionsThatCannotWorkOrBelongToAnotherFamilyAreRefused()
    {
        var options = TinyTrainerOptions.Create();
        options.BackboneLoadOptions = new VisionTransformerLoadOptions(NumHeads: 0);
        var error = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new MLContext(seed: 1).MulticlassClassification.Trainers.RepAdapter(options));
        Assert.AreEqual("NumHeads", error.ParamName);

        // A ViT's options for a ResNet checkpoint are never silently ignored.
        var wrong = Assert.ThrowsExactly<ArgumentException>(() => PretrainedBackbones.Load(TestData.Fixture("tiny_resnet_basic.safetensors"),
            loadOptions: new VisionTransformerLoadOptions(NumHeads: 2)));
        StringAssert.Contains(wrong.Message, "VisionTransformerLoadOptions are not the ResNet family's load options (it has none)");
    }

    [TestMethod]
    [DataRow("Std", new[] { 0.2f, 0f, 0.2f })]
    [DataRow("Std", new[] { 0.2f, float.NaN, 0.2f })]
    [DataRow("Std", new[] { 0.2f, 0.2f, float.PositiveInfinity })]
    [DataRow("Mean", new[] { 0.5f, 0.5f })]
    public void NormalisationThatIsNotFiniteOrDividesByZeroIsRefused(string option, float[] value)
    {
        var options = TestData.WithOption(TinyTrainerOptions.Create(), option, value);
        var error = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new MLContext(seed: 1).MulticlassClassification.Trainers.RepAdapter(options));
        Assert.AreEqual(option, error.ParamName);
    }

    [TestMethod]
    [DataRow("0")]
    [DataRow("-1")]
    public void ANonPositiveThreadCountIsRefusedBeforeLibtorchAborts(string threads)
    {
        // libtorch aborts the process on set_num_threads(0): run it where an abort cannot take the test run down.
        var images = TestData.Images(classes: 2, perClass: 2).Select(r => r.ImagePath).ToArray();
        string message = TestHost.ExpectException<ArgumentOutOfRangeException>(["fit", $"NumberOfThreads={threads}", .. images]);
        StringAssert.Contains(message, "NumberOfThreads");
    }

    [TestMethod]
    [DataRow(1e6)]
    [DataRow(1e30)]
    public void AHugeLearningRateNeverReturnsANonFiniteModel(double learningRate)
    {
        // Whatever the learning rate, the run either stops with an error or returns a model whose every weight is finite.
        var mlContext = new MLContext(seed: 1);
        var data = TestData.Prepared(mlContext, TestData.Images(classes: 2, perClass: 4));
        var options = TinyTrainerOptions.Create(epochs: 3);
        options.LearningRate = learningRate;
        try
        {
            var model = mlContext.MulticlassClassification.Trainers.RepAdapter(options).Fit(data);
            Assert.IsNull(Torch.NonFinite.FirstIn(model.Model), "a returned model is finite");
        }
        catch (InvalidOperationException e)
        {
            StringAssert.Contains(e.Message, "Training diverged");
            StringAssert.Contains(e.Message, "lower LearningRate");
        }
    }

    [TestMethod]
    public void TruncatedImageBytesAreRefusedNamingTheRow()
    {
        var mlContext = new MLContext(seed: 1);
        var rows = ByteRows();
        var whole = rows[3].ImageSource;
        rows[3].ImageSource = whole[..(whole.Length * 2 / 3)];
        var error = FitFails<InvalidDataException>(Bytes(mlContext, rows), o => o.ImageColumnName = nameof(ImageBytesRow.ImageSource));
        StringAssert.Contains(error.Message, "'ImageSource', row 3");
        StringAssert.Contains(error.Message, "truncated PNG");
    }

    [TestMethod]
    public void TruncatedImageFilesAreRefusedNamingTheFileInTrainingAndScoring()
    {
        var mlContext = new MLContext(seed: 1);
        var rows = TestData.Images(classes: 2, perClass: 3);
        using var model = mlContext.MulticlassClassification.Trainers.RepAdapter(TinyTrainerOptions.Create(epochs: 1)).Fit(TestData.Prepared(mlContext, rows));
        string truncated = Path.Combine(Path.GetTempPath(), $"truncated-{Guid.NewGuid():N}.png");
        var whole = File.ReadAllBytes(rows[2].ImagePath);
        File.WriteAllBytes(truncated, whole[..(whole.Length / 2)]);
        try
        {
            rows[2].ImagePath = truncated;
            var data = TestData.Prepared(mlContext, rows);
            var errors = new[]
            {
                FitFails<InvalidDataException>(data),
                Assert.ThrowsExactly<InvalidDataException>(() => model.Transform(data).GetColumn<float[]>("Score").ToList()),
            };
            foreach (var error in errors)
            {
                StringAssert.Contains(error.Message, "'Image', row 2");
                StringAssert.Contains(error.Message, truncated);
                StringAssert.Contains(error.Message, "truncated PNG");
            }
        }
        finally
        {
            File.Delete(truncated);
        }
    }

    [TestMethod]
    public void UndecodableImageFilesAndDirectoriesAreNamedOnTheLoadImagesPath()
    {
        var mlContext = new MLContext(seed: 1);
        string garbage = Path.Combine(Path.GetTempPath(), $"garbage-{Guid.NewGuid():N}.png");
        File.WriteAllBytes(garbage, [1, 2, 3, 4, 5]);
        try
        {
            foreach (var (path, expected) in new[] { (garbage, garbage), (Path.GetTempPath().TrimEnd('/'), "a directory, not an image file") })
            {
                var rows = TestData.Images(classes: 2, perClass: 3);
                rows[4].ImagePath = path;
                var error = FitFails<InvalidDataException>(TestData.Prepared(mlContext, rows));
                StringAssert.Contains(error.Message, "'Image', row 4");
                StringAssert.Contains(error.Message, "ImagePath = ");
                StringAssert.Contains(error.Message, expected);
            }
        }
        finally
        {
            File.Delete(garbage);
        }
    }
}
