using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter;
using Microsoft.ML.RepAdapter.Classification;

namespace RepAdapterWebService.LoadTest;

/// <summary>An image as Model Builder's rows hold it: the label and the encoded bytes.</summary>
internal sealed class ImageBytesRow
{
    public string Label { get; set; } = "";

    public byte[] ImageSource { get; set; } = [];
}

/// <summary>
/// The two files the web service serves, made as a user makes them (the main sample's way): a pipeline on encoded image
/// bytes, MapValueToKey -> RepAdapter -> MapKeyToValue, saved with <c>mlContext.Model.Save</c> (the TorchSharp .zip); and
/// its ONNX chain, LoadImages on a path column -> ToOnnxPipeline -> MapKeyToValue (the ONNX .zip, scored without libtorch).
/// </summary>
internal static class ServingModels
{
    public sealed record Saved(string TorchPath, string OnnxPath, IReadOnlyList<string> Labels);

    /// <summary>
    /// The images of the first <paramref name="classes"/> label sub-folders of <paramref name="folder"/> (sorted), at most
    /// <paramref name="perClass"/> each.
    /// </summary>
    public static List<ImageBytesRow> ReadFolder(string folder, int classes = int.MaxValue, int perClass = int.MaxValue) =>
        [.. Directory.GetDirectories(folder).Order(StringComparer.Ordinal).Take(classes)
            .SelectMany(labelFolder => Directory.GetFiles(labelFolder).Order(StringComparer.Ordinal).Take(perClass)
                .Select(file => new ImageBytesRow { Label = Path.GetFileName(labelFolder), ImageSource = File.ReadAllBytes(file) }))];

    /// <summary>
    /// Trains on <paramref name="rows"/> with <paramref name="options"/> (its label and image columns are set here) and
    /// writes model.zip and model.onnx.zip into <paramref name="folder"/>.
    /// </summary>
    public static Saved TrainAndSave(MLContext mlContext, IReadOnlyList<ImageBytesRow> rows, RepAdapterImageClassificationTrainer.Options options, string folder)
    {
        options.LabelColumnName = nameof(ImageBytesRow.Label);
        options.ImageColumnName = nameof(ImageBytesRow.ImageSource);
        var data = mlContext.Data.LoadFromEnumerable(rows);
        var pipeline = mlContext.Transforms.Conversion.MapValueToKey(nameof(ImageBytesRow.Label))
            .Append(mlContext.MulticlassClassification.Trainers.RepAdapter(options))
            .Append(mlContext.Transforms.Conversion.MapKeyToValue("PredictedLabel"));
        var model = pipeline.Fit(data);
        Directory.CreateDirectory(folder);
        string torchPath = Path.Combine(folder, "model.zip"), onnxPath = Path.Combine(folder, "model.onnx.zip");
        mlContext.Model.Save(model, data.Schema, torchPath);

        var transformer = ((IEnumerable<ITransformer>)model).OfType<RepAdapterImageClassificationTransformer>().Single();
        // The ONNX chain decodes files (LoadImages); the service feeds it decoded request bodies in that column instead.
        var paths = mlContext.Data.LoadFromEnumerable(Array.Empty<ImagePathRow>());
        var onnx = mlContext.Transforms.LoadImages(nameof(ImageBytesRow.ImageSource), "", nameof(ImagePathRow.Path)).Fit(paths)
            .Append(transformer.ToOnnxPipeline(mlContext, CommonSize(rows)));
        var onnxModel = onnx.Append(mlContext.Transforms.Conversion.MapKeyToValue("PredictedLabel").Fit(onnx.Transform(paths)));
        mlContext.Model.Save(onnxModel, paths.Schema, onnxPath);
        var labels = transformer.LabelNames.ToArray();
        transformer.Dispose();
        return new Saved(torchPath, onnxPath, labels);
    }

    /// <summary>
    /// The size all images share (Fashion-MNIST: 28 x 28), so that the ONNX graph resamples them as the library does
    /// (docs/deployment.md); null when they differ.
    /// </summary>
    private static (int Width, int Height)? CommonSize(IEnumerable<ImageBytesRow> rows)
    {
        var sizes = rows.Select(row =>
        {
            using var image = MLImage.CreateFromStream(new MemoryStream(row.ImageSource));
            return (image.Width, image.Height);
        }).Distinct().Take(2).ToList();
        return sizes.Count == 1 ? sizes[0] : null;
    }

    private sealed class ImagePathRow
    {
        public string Path { get; set; } = "";
    }
}
