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
    /// <param name="checkpointPath">Pretrained weights (.npz, .safetensors, .pth); the architecture is read from them.</param>
    /// <param name="architecture">Backbone preset when it cannot be inferred, or <c>mlnet_resnet18</c> (ML.NET's own ResNet-18).</param>
    public static RepAdapterImageClassificationTrainer RepAdapter(
        this MulticlassClassificationCatalog.MulticlassClassificationTrainers catalog,
        string labelColumnName = DefaultColumnNames.Label,
        string imageColumnName = "Image",
        string? checkpointPath = null,
        string? architecture = null,
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
            // The paper's ratio: 10 warm-up epochs in 100.
            WarmupEpochs = epochs / 10,
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
