// Model Builder style training code: the pipeline, and retraining it on new data.
using Microsoft.ML;
using Microsoft.ML.RepAdapter;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Checkpoints;
using Microsoft.ML.RepAdapter.Segmentation;

namespace RepAdapterSegmentation;

public partial class MLModel
{
    /// <summary>Training settings of the sample (a CPU-sized run on ML.NET's pretrained ResNet-18).</summary>
    /// <summary>Settings of the sample; a lever left null is the trainer's CPU recipe (24 epochs, s = 1, lr 1e-2, batch 8) or its search's choice.</summary>
    public sealed record TrainingSettings(string[] ClassNames, int? Epochs = null, int? BatchSize = null, double? LearningRate = null, int HeadChannels = 64,
        int Seed = 42, TrainableParameters Trainable = TrainableParameters.AdaptersHeadAndBiases, float? AdapterScale = null, TimeSpan? TimeBudget = null);

    /// <summary>Trains the pipeline on <paramref name="trainData"/> (columns ImagePath and Mask, the mask already loaded).</summary>
    public static ITransformer RetrainPipeline(MLContext mlContext, IDataView trainData, TrainingSettings settings) =>
        BuildPipeline(mlContext, settings).Fit(trainData);

    /// <summary>LoadImages(ImagePath) -> RepAdapter segmentation (multi-level head on ML.NET's ResNet-18) -> PredictedMask.</summary>
    public static IEstimator<ITransformer> BuildPipeline(MLContext mlContext, TrainingSettings settings)
    {
        var options = new RepAdapterSegmentationTrainer.Options
        {
            ImageColumnName = "Image",
            MaskColumnName = "Mask",
            Architecture = PretrainedBackbones.MLNetResNet18,
            ClassNames = settings.ClassNames,
            Trainable = settings.Trainable,
            AdapterScale = settings.AdapterScale,
            Head = SegmentationHeadKind.MultiLevel,
            HeadChannels = settings.HeadChannels,
            Epochs = settings.Epochs,
            BatchSize = settings.BatchSize,
            LearningRate = settings.LearningRate,
            TimeBudget = settings.TimeBudget,
            Seed = settings.Seed,
        };
        return mlContext.Transforms.LoadImages("Image", "", "ImagePath")
            .Append(mlContext.MulticlassClassification.Trainers.RepAdapterSegmentation(options));
    }
}
