using Microsoft.ML.RepAdapter.Classification;

namespace Microsoft.ML.RepAdapter.Tests.Classification;

internal static class TinyTrainerOptions
{
    /// <summary>A quick run on the tiny ViT (16 px input): a few epochs, small batches, no warm-up.</summary>
    public static RepAdapterImageClassificationTrainer.Options Create(int epochs = 4) => new()
    {
        Backbone = TinyModels.Create("vit", seed: 11),
        Epochs = epochs,
        BatchSize = 8,
        WarmupEpochs = 0,
        LearningRate = 3e-3,
        DropPathRate = 0,
        ScoringBatchSize = 8,
        Seed = 42,
    };
}
