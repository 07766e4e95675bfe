using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Classification;
using Microsoft.ML.RepAdapter.Segmentation;

namespace Microsoft.ML.RepAdapter;

/// <summary>Catalog entry points: <c>mlContext.MulticlassClassification.Trainers.RepAdapter(...)</c>.</summary>
public static class RepAdapterCatalog
{
    /// <summary>
    /// Fine-tunes a pretrained backbone with RepAdapter for image classification; adapters are merged after training.
    /// The column parameters are those of ML.NET's <c>ImageClassification</c> trainer, so a Model Builder line works by
    /// renaming the method. Without a checkpoint the backbone is ML.NET's pretrained ResNet-18 (no download).
    /// </summary>
    /// <param name="catalog">The multiclass classification trainers catalog (<c>mlContext.MulticlassClassification.Trainers</c>).</param>
    /// <param name="labelColumnName">A key column (MapValueToKey).</param>
    /// <param name="featureColumnName">The image column: MLImage (LoadImages) or encoded image bytes (LoadRawImageBytes, Model Builder's ImageSource).</param>
    /// <param name="scoreColumnName">The output column of class probabilities.</param>
    /// <param name="predictedLabelColumnName">The output column of the predicted key.</param>
    /// <param name="validationSet">Reported after each epoch (never pass the test data).</param>
    /// <param name="checkpointPath">Pretrained weights (.npz, .safetensors, .pth); the architecture is read from them.</param>
    /// <param name="architecture">Backbone preset when it cannot be inferred from the checkpoint.</param>
    /// <param name="epochs">Training epochs (a tenth of them warm up the learning rate).</param>
    /// <param name="batchSize">Images per optimiser step.</param>
    /// <param name="learningRate">AdamW's peak learning rate.</param>
    /// <param name="adapterScale">The adapter scale s.</param>
    public static RepAdapterImageClassificationTrainer RepAdapter(
        this MulticlassClassificationCatalog.MulticlassClassificationTrainers catalog,
        string labelColumnName = DefaultColumnNames.Label,
        string featureColumnName = "Image",
        string scoreColumnName = DefaultColumnNames.Score,
        string predictedLabelColumnName = DefaultColumnNames.PredictedLabel,
        IDataView? validationSet = null,
        string? checkpointPath = null,
        string? architecture = null,
        int epochs = 100,
        int batchSize = 64,
        double learningRate = 1e-3,
        float adapterScale = 1f) =>
        catalog.RepAdapter(new RepAdapterImageClassificationTrainer.Options
        {
            LabelColumnName = labelColumnName,
            ImageColumnName = featureColumnName,
            ScoreColumnName = scoreColumnName,
            PredictedLabelColumnName = predictedLabelColumnName,
            ValidationSet = validationSet,
            Architecture = architecture,
            CheckpointPath = checkpointPath,
            Epochs = epochs,
            // The paper's ratio: 10 warm-up epochs in 100.
            WarmupEpochs = epochs / 10,
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
    /// <param name="epochs">Training epochs (a tenth of them warm up the learning rate).</param>
    /// <param name="batchSize">Images per optimiser step.</param>
    public static RepAdapterSegmentationTrainer RepAdapterSegmentation(
        this MulticlassClassificationCatalog.MulticlassClassificationTrainers catalog,
        string maskColumnName = "Mask",
        string imageColumnName = "Image",
        string predictedMaskColumnName = "PredictedMask",
        string[]? classNames = null,
        string? checkpointPath = null,
        string? architecture = null,
        int epochs = 100,
        int batchSize = 16) =>
        catalog.RepAdapterSegmentation(new RepAdapterSegmentationTrainer.Options
        {
            MaskColumnName = maskColumnName,
            ImageColumnName = imageColumnName,
            PredictedMaskColumnName = predictedMaskColumnName,
            ClassNames = classNames,
            CheckpointPath = checkpointPath,
            Architecture = architecture,
            Epochs = epochs,
            WarmupEpochs = epochs / 10,
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
