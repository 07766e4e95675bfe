using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Classification;
using Microsoft.ML.RepAdapter.MLNet;
using Microsoft.ML.RepAdapter.Segmentation;

namespace Microsoft.ML.RepAdapter;

/// <summary>Catalog entry points: <c>mlContext.MulticlassClassification.Trainers.RepAdapter(...)</c>.</summary>
public static class RepAdapterCatalog
{
    /// <summary>
    /// Fine-tunes a pretrained backbone with RepAdapter for image classification; adapters are merged after training.
    /// The column parameters are those of ML.NET's <c>ImageClassification</c> trainer, so a Model Builder line works by
    /// renaming the method. Without a checkpoint the backbone is ML.NET's pretrained ResNet-18 (no download). With no
    /// other argument, the CPU recipe trains in minutes, its scale, learning rate and adapted blocks chosen on held-out
    /// training images (or <paramref name="validationSet"/>); <c>recipe: RecipePreset.Paper</c> is the paper's GPU recipe.
    /// </summary>
    /// <param name="catalog">The multiclass classification trainers catalog (<c>mlContext.MulticlassClassification.Trainers</c>).</param>
    /// <param name="labelColumnName">A key column (MapValueToKey).</param>
    /// <param name="featureColumnName">The image column: MLImage (LoadImages) or encoded image bytes (LoadRawImageBytes, Model Builder's ImageSource).</param>
    /// <param name="scoreColumnName">The output column of class probabilities.</param>
    /// <param name="predictedLabelColumnName">The output column of the predicted key.</param>
    /// <param name="validationSet">What the recipe search judges on, reported after each epoch (never pass the test data).</param>
    /// <param name="checkpointPath">Pretrained weights (.npz, .safetensors, .pth); the architecture is read from them.</param>
    /// <param name="architecture">Backbone preset when it cannot be inferred from the checkpoint.</param>
    /// <param name="timeBudget">The most time Fit may take, search included; null: the recipe's whole search; <see cref="TimeSpan.Zero"/>: no search.</param>
    /// <param name="recipe">Where unset levers come from: <see cref="RecipePreset.Cpu"/> or the paper's <see cref="RecipePreset.Paper"/>.</param>
    /// <param name="imageSize">Input resolution; null: the recipe's (112 px for the built-in backbone on a CPU) or the checkpoint's.</param>
    /// <param name="epochs">Training epochs; null: the recipe's (the warm-up keeps its share of them).</param>
    /// <param name="batchSize">Images per optimiser step; null: the recipe's.</param>
    /// <param name="learningRate">AdamW's peak learning rate; null: the recipe's or the search's.</param>
    /// <param name="adapterScale">The adapter scale s; null: the recipe's or the search's.</param>
    public static RepAdapterImageClassificationTrainer RepAdapter(
        this MulticlassClassificationCatalog.MulticlassClassificationTrainers catalog,
        string labelColumnName = DefaultColumnNames.Label,
        string featureColumnName = "Image",
        string scoreColumnName = DefaultColumnNames.Score,
        string predictedLabelColumnName = DefaultColumnNames.PredictedLabel,
        IDataView? validationSet = null,
        string? checkpointPath = null,
        string? architecture = null,
        TimeSpan? timeBudget = null,
        RecipePreset recipe = RecipePreset.Cpu,
        int? imageSize = null,
        int? epochs = null,
        int? batchSize = null,
        double? learningRate = null,
        float? adapterScale = null) =>
        catalog.RepAdapter(new RepAdapterImageClassificationTrainer.Options
        {
            LabelColumnName = labelColumnName,
            ImageColumnName = featureColumnName,
            ScoreColumnName = scoreColumnName,
            PredictedLabelColumnName = predictedLabelColumnName,
            ValidationSet = validationSet,
            Architecture = architecture,
            CheckpointPath = checkpointPath,
            TimeBudget = timeBudget,
            Recipe = recipe,
            ImageSize = imageSize,
            Epochs = epochs,
            BatchSize = batchSize,
            LearningRate = learningRate,
            AdapterScale = adapterScale,
        });

    /// <summary>Fine-tunes with every option of <see cref="RepAdapterImageClassificationTrainer.Options"/>.</summary>
    public static RepAdapterImageClassificationTrainer RepAdapter(
        this MulticlassClassificationCatalog.MulticlassClassificationTrainers catalog,
        RepAdapterImageClassificationTrainer.Options options) =>
        new(CatalogUtils.GetEnvironment(catalog), options);

    /// <summary>
    /// Fine-tunes a pretrained backbone with RepAdapter for semantic segmentation (a decode head on its multi-level
    /// features); adapters are merged after training.
    /// </summary>
    /// <param name="catalog">The multiclass classification trainers catalog (<c>mlContext.MulticlassClassification.Trainers</c>).</param>
    /// <param name="maskColumnName">Masks: images holding a class index per pixel as their gray value (255: unlabelled).</param>
    /// <param name="imageColumnName">An image column (LoadImages) or encoded image bytes (LoadRawImageBytes).</param>
    /// <param name="predictedMaskColumnName">The output: class indices at each input image's own resolution.</param>
    /// <param name="classNames">Class names in index order; null: indices as names, the count from the training masks.</param>
    /// <param name="checkpointPath">Pretrained weights (.npz, .safetensors, .pth); the architecture is read from them.</param>
    /// <param name="architecture">Backbone preset when it cannot be inferred, or <c>mlnet_resnet18</c> (ML.NET's own ResNet-18).</param>
    /// <param name="validationSet">What the recipe search judges mean IoU on, reported after each epoch (never pass the test data).</param>
    /// <param name="timeBudget">The most time Fit may take, search included; null: the recipe's whole search; <see cref="TimeSpan.Zero"/>: no search.</param>
    /// <param name="recipe">Where unset levers come from: <see cref="RecipePreset.Cpu"/> or the paper's <see cref="RecipePreset.Paper"/>.</param>
    /// <param name="imageSize">Input resolution; null: the recipe's (112 px for the built-in backbone on a CPU) or the checkpoint's.</param>
    /// <param name="epochs">Training epochs; null: the recipe's (the warm-up keeps its share of them).</param>
    /// <param name="batchSize">Images per optimiser step; null: the recipe's.</param>
    public static RepAdapterSegmentationTrainer RepAdapterSegmentation(
        this MulticlassClassificationCatalog.MulticlassClassificationTrainers catalog,
        string maskColumnName = "Mask",
        string imageColumnName = "Image",
        string predictedMaskColumnName = "PredictedMask",
        string[]? classNames = null,
        string? checkpointPath = null,
        string? architecture = null,
        IDataView? validationSet = null,
        TimeSpan? timeBudget = null,
        RecipePreset recipe = RecipePreset.Cpu,
        int? imageSize = null,
        int? epochs = null,
        int? batchSize = null) =>
        catalog.RepAdapterSegmentation(new RepAdapterSegmentationTrainer.Options
        {
            MaskColumnName = maskColumnName,
            ImageColumnName = imageColumnName,
            PredictedMaskColumnName = predictedMaskColumnName,
            ClassNames = classNames,
            CheckpointPath = checkpointPath,
            Architecture = architecture,
            ValidationSet = validationSet,
            TimeBudget = timeBudget,
            Recipe = recipe,
            ImageSize = imageSize,
            Epochs = epochs,
            BatchSize = batchSize,
        });

    /// <summary>Fine-tunes for segmentation with every option of <see cref="RepAdapterSegmentationTrainer.Options"/>.</summary>
    public static RepAdapterSegmentationTrainer RepAdapterSegmentation(
        this MulticlassClassificationCatalog.MulticlassClassificationTrainers catalog,
        RepAdapterSegmentationTrainer.Options options) =>
        new(CatalogUtils.GetEnvironment(catalog), options);

    /// <summary>
    /// Mean IoU, per-class IoU, pixel accuracy and the confusion matrix of predicted masks (a
    /// <see cref="RepAdapterSegmentationTransformer"/>'s output) against true masks, over every labelled pixel.
    /// </summary>
    /// <param name="catalog">The multiclass classification catalog (<c>mlContext.MulticlassClassification</c>).</param>
    /// <param name="data">Scored data: the true mask column and the predicted mask column.</param>
    /// <param name="maskColumnName">True masks: images holding a class index per pixel as their gray value.</param>
    /// <param name="predictedMaskColumnName">The transformer's predicted class indices (with its class names).</param>
    /// <param name="ignoreIndex">The true-mask value of unlabelled pixels, which are left out; null: the model's (255 by default).</param>
    public static SegmentationMetrics EvaluateSegmentation(
        this MulticlassClassificationCatalog catalog,
        IDataView data,
        string maskColumnName = "Mask",
        string predictedMaskColumnName = "PredictedMask",
        int? ignoreIndex = null) =>
        SegmentationEvaluation.Evaluate(CatalogUtils.GetEnvironment(catalog), data, maskColumnName, predictedMaskColumnName, ignoreIndex);
}
