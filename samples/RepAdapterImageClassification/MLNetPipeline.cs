// The pipeline ML.NET users run today for image classification with a pretrained network, on the same images:
// ResizeImages(224) -> ExtractPixels -> DnnFeaturizeImage(ResNet18) -> LbfgsMaximumEntropy (the featurizer's ResNet-18 is
// the network the RepAdapter runs fine-tune, so the comparison is like for like).
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Transforms.Image;

namespace RepAdapterImageClassification;

public static class MLNetPipeline
{
    private sealed class ImageRow
    {
        [ImageType(28, 28)]
        public MLImage Image { get; set; } = null!;

        public string Label { get; set; } = "";
    }

    /// <summary>Fits the ML.NET pipeline on <paramref name="train"/> and evaluates it on <paramref name="test"/>.</summary>
    public static (MulticlassClassificationMetrics Metrics, TimeSpan TrainTime, long Trainable) FitAndEvaluate(
        MLContext mlContext, IReadOnlyList<MLModel.ModelInput> train, IReadOnlyList<MLModel.ModelInput> test)
    {
        IDataView Load(IReadOnlyList<MLModel.ModelInput> rows) => mlContext.Data.LoadFromEnumerable(
            rows.Select(r => new ImageRow { Image = MLImage.CreateFromStream(new MemoryStream(r.ImageSource)), Label = r.Label }));
        var pipeline = mlContext.Transforms.Conversion.MapValueToKey("Label")
            .Append(mlContext.Transforms.ResizeImages("Image", 224, 224))
            .Append(mlContext.Transforms.ExtractPixels("Pixels", "Image"))
            .Append(mlContext.Transforms.DnnFeaturizeImage("Features", m => m.ModelSelector.ResNet18(mlContext, m.OutputColumn, m.InputColumn), "Pixels"))
            .Append(mlContext.MulticlassClassification.Trainers.LbfgsMaximumEntropy("Label", "Features"));
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var model = pipeline.Fit(Load(train));
        var time = clock.Elapsed;
        var metrics = mlContext.MulticlassClassification.Evaluate(model.Transform(Load(test)));
        int classes = metrics.ConfusionMatrix.NumberOfClasses;
        return (metrics, time, 512L * classes + classes);
    }
}
