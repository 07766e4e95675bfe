using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Classification;

namespace Microsoft.ML.RepAdapter.Tests.Classification;

/// <summary>Bad input gives a clear error naming the column, row or value at fault.</summary>
[TestClass]
public class BadInputTests
{
    private static Exception FitFails(IDataView data, Action<RepAdapterImageClassificationTrainer.Options>? configure = null, MLContext? mlContext = null)
    {
        mlContext ??= new MLContext(seed: 1);
        var options = TinyTrainerOptions.Create(epochs: 1);
        configure?.Invoke(options);
        return Assert.Throws<Exception>(() => mlContext.MulticlassClassification.Trainers.RepAdapter(options).Fit(data));
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
        var error = FitFails(Bytes(mlContext, rows), o => o.ImageColumnName = nameof(ImageBytesRow.ImageSource));
        StringAssert.Contains(error.Message, "'ImageSource'");
        StringAssert.Contains(error.Message, "row 4");
        StringAssert.Contains(error.Message, "not a decodable image");
    }

    [TestMethod]
    public void MissingLabelColumnIsNamed()
    {
        var mlContext = new MLContext(seed: 1);
        var data = TestData.Prepared(mlContext, TestData.Images(classes: 2, perClass: 2));
        var error = FitFails(data, o => o.LabelColumnName = "Category");
        StringAssert.Contains(error.Message, "Category");
    }

    [TestMethod]
    public void LabelThatIsNotAKeyAsksForMapValueToKey()
    {
        var mlContext = new MLContext(seed: 1);
        var raw = mlContext.Data.LoadFromEnumerable(TestData.Images(classes: 2, perClass: 2));
        var data = mlContext.Transforms.LoadImages("Image", "", nameof(ImageRow.ImagePath)).Fit(raw).Transform(raw);
        var error = FitFails(data);
        StringAssert.Contains(error.Message, "Label");
        StringAssert.Contains(error.Message, "MapValueToKey");
    }

    [TestMethod]
    public void ImageColumnOfTheWrongTypeIsNamed()
    {
        var mlContext = new MLContext(seed: 1);
        var raw = mlContext.Data.LoadFromEnumerable(TestData.Images(classes: 2, perClass: 2));
        var data = mlContext.Transforms.Conversion.MapValueToKey("Label").Fit(raw).Transform(raw);
        var error = FitFails(data, o => o.ImageColumnName = nameof(ImageRow.ImagePath));
        StringAssert.Contains(error.Message, "ImagePath");
        StringAssert.Contains(error.Message, "LoadImages");
    }

    [TestMethod]
    public void SingleClassIsRefused()
    {
        var mlContext = new MLContext(seed: 1);
        var error = FitFails(TestData.Prepared(mlContext, TestData.Images(classes: 1, perClass: 4)));
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
        var error = FitFails(empty);
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
        var error = FitFails(train, o => o.ValidationSet = validation);
        StringAssert.Contains(error.Message, "Row 1 of the validation set");
        StringAssert.Contains(error.Message, "'Label'");
    }

    [TestMethod]
    public void DivergingTrainingStopsNamingTheEpochWithAHint()
    {
        var mlContext = new MLContext(seed: 1);
        var data = TestData.Prepared(mlContext, TestData.Images(classes: 2, perClass: 4));
        var error = FitFails(data, o => { o.LearningRate = 1e30; o.Epochs = 5; o.AdapterScale = 1e10f; });
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
}
