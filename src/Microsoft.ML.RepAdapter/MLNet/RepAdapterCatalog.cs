using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Classification;

namespace Microsoft.ML.RepAdapter;

/// <summary>Catalog entry points: <c>mlContext.MulticlassClassification.Trainers.RepAdapter(...)</c>.</summary>
public static class RepAdapterCatalog
{
    /// <summary>
    /// Fine-tunes a pretrained backbone with RepAdapter for image classification; adapters are merged after training.
    /// </summary>
    /// <param name="labelColumnName">A key column (MapValueToKey).</param>
    /// <param name="imageColumnName">An image column (LoadImages) or encoded image bytes (LoadRawImageBytes).</param>
    /// <param name="architecture">Backbone preset, e.g. <c>vit_base_patch16_224</c> or <c>resnet18</c>.</param>
    /// <param name="checkpointPath">Pretrained weights for the backbone (.npz, .safetensors, .pth, ONNX).</param>
    public static RepAdapterImageClassificationTrainer RepAdapter(
        this MulticlassClassificationCatalog.MulticlassClassificationTrainers catalog,
        string labelColumnName = DefaultColumnNames.Label,
        string imageColumnName = "Image",
        string architecture = "vit_base_patch16_224",
        string? checkpointPath = null,
        int epochs = 100,
        int batchSize = 64,
        double learningRate = 1e-3,
        float adapterScale = 1f,
        IDataView? validationSet = null) =>
        catalog.RepAdapter(new RepAdapterImageClassificationTrainer.Options
        {
            LabelColumnName = labelColumnName,
            ImageColumnName = imageColumnName,
            Architecture = architecture,
            CheckpointPath = checkpointPath,
            Epochs = epochs,
            BatchSize = batchSize,
            LearningRate = learningRate,
            AdapterScale = adapterScale,
            ValidationSet = validationSet,
        });

    /// <summary>Fine-tunes with every option of <see cref="RepAdapterImageClassificationTrainer.Options"/>.</summary>
    public static RepAdapterImageClassificationTrainer RepAdapter(
        this MulticlassClassificationCatalog.MulticlassClassificationTrainers catalog,
        RepAdapterImageClassificationTrainer.Options options) =>
        new(CatalogUtils.GetEnvironment(catalog), options);
}
