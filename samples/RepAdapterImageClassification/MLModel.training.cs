// Model Builder style training code: the pipeline, and retraining it on new data. The shape is Model Builder's generated
// training file with ImageClassification renamed to RepAdapter; the settings the sample varies are in Settings.
using Microsoft.ML;
using Microsoft.ML.RepAdapter;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Classification;

namespace RepAdapterImageClassification;

public partial class MLModel
{
    /// <summary>
    /// Training settings of the sample. Every lever left null is the trainer's: the CPU recipe (112 px for ML.NET's
    /// ResNet-18, adapters in the last 3 blocks with the frozen blocks before them computed once, s = 10, lr 3e-3,
    /// 12 epochs, batch 16), its scale, learning rate and adapted blocks chosen on held-out training images.
    /// </summary>
    /// <param name="AdaptedBlocks">Adapters in the last this many blocks (TrainingRecipe.AllBlocks: every block, the paper).</param>
    /// <param name="CheckpointPath">Pretrained weights; null: ML.NET's pretrained ResNet-18 (no download).</param>
    /// <param name="Architecture">A preset name, when the checkpoint does not tell it.</param>
    /// <param name="TimeBudget">The most time training may take, the recipe search included; null: the whole search.</param>
    public sealed record TrainingSettings(int? Epochs = null, int? BatchSize = null, double? LearningRate = null, float? AdapterScale = null,
        int? AdaptedBlocks = null, TrainableParameters Trainable = TrainableParameters.AdaptersAndHead, string? CheckpointPath = null,
        string? Architecture = null, int? ImageSize = null, TimeSpan? TimeBudget = null);

    /// <summary>The settings BuildPipeline uses.</summary>
    public static TrainingSettings Settings { get; set; } = new();

    /// <summary>Trains the pipeline on <paramref name="trainData"/>.</summary>
    public static ITransformer RetrainPipeline(MLContext mlContext, IDataView trainData)
    {
        var pipeline = BuildPipeline(mlContext);
        var model = pipeline.Fit(trainData);
        return model;
    }

    /// <summary>MapValueToKey(Label) -> RepAdapter fine-tuning on ImageSource -> MapKeyToValue(PredictedLabel).</summary>
    public static IEstimator<ITransformer> BuildPipeline(MLContext mlContext)
    {
        var options = new RepAdapterImageClassificationTrainer.Options
        {
            LabelColumnName = @"Label",
            ImageColumnName = @"ImageSource",
            ScoreColumnName = @"Score",
            CheckpointPath = Settings.CheckpointPath,
            Architecture = Settings.Architecture,
            ImageSize = Settings.ImageSize,
            Trainable = Settings.Trainable,
            AdapterScale = Settings.AdapterScale,
            AdaptedBlocks = Settings.AdaptedBlocks,
            Epochs = Settings.Epochs,
            BatchSize = Settings.BatchSize,
            LearningRate = Settings.LearningRate,
            TimeBudget = Settings.TimeBudget,
        };
        // Data process configuration with pipeline data transformations
        var pipeline = mlContext.Transforms.Conversion.MapValueToKey(outputColumnName: @"Label", inputColumnName: @"Label", addKeyValueAnnotationsAsText: false)
            .Append(mlContext.MulticlassClassification.Trainers.RepAdapter(options))
            .Append(mlContext.Transforms.Conversion.MapKeyToValue(outputColumnName: @"PredictedLabel", inputColumnName: @"PredictedLabel"));
        return pipeline;
    }
}
