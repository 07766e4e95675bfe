// Model Builder style training code: the pipeline, and retraining it on new data.
using Microsoft.ML;
using Microsoft.ML.RepAdapter;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Classification;

namespace RepAdapterImageClassification;

public partial class MLModel
{
    /// <summary>Training settings of the sample (the paper's recipe, shortened for a CPU).</summary>
    public sealed record TrainingSettings(int Epochs = 8, int BatchSize = 16, double LearningRate = 1e-3, int WarmupEpochs = 1,
        float AdapterScale = 1f, TrainableParameters Trainable = TrainableParameters.AdaptersAndHead);

    /// <summary>Trains the pipeline on <paramref name="trainData"/>.</summary>
    public static ITransformer RetrainPipeline(MLContext mlContext, IDataView trainData, Backbone backbone, TrainingSettings settings) =>
        BuildPipeline(mlContext, backbone, settings).Fit(trainData);

    /// <summary>MapValueToKey(Label) -> RepAdapter fine-tuning on ImageSource -> MapKeyToValue(PredictedLabel).</summary>
    public static IEstimator<ITransformer> BuildPipeline(MLContext mlContext, Backbone backbone, TrainingSettings settings)
    {
        var options = new RepAdapterImageClassificationTrainer.Options
        {
            LabelColumnName = "Label",
            ImageColumnName = "ImageSource",
            Backbone = backbone,
            Trainable = settings.Trainable,
            AdapterScale = settings.AdapterScale,
            Epochs = settings.Epochs,
            BatchSize = settings.BatchSize,
            LearningRate = settings.LearningRate,
            WarmupEpochs = settings.WarmupEpochs,
        };
        return mlContext.Transforms.Conversion.MapValueToKey("Label", "Label")
            .Append(mlContext.MulticlassClassification.Trainers.RepAdapter(options))
            .Append(mlContext.Transforms.Conversion.MapKeyToValue("PredictedLabel", "PredictedLabel"));
    }
}
