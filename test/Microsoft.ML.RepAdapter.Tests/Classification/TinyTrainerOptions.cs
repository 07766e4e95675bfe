using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Classification;
using Microsoft.ML.RepAdapter.MLNet;

namespace Microsoft.ML.RepAdapter.Tests.Classification;

internal static class TinyTrainerOptions
{
    /// <summary>
    /// A quick run on a tiny backbone (ViT at 16 px by default): a few epochs, small batches, no warm-up. Its random
    /// weights are scaled up (<see cref="TinyModels.Randomize"/>) so that its features depend on the image, as a
    /// pretrained one's do (a freshly initialised ViT's class token barely sees the image). Every lever the recipe search
    /// could vary is set (s = 1, every block), so these runs train exactly what they say.
    /// </summary>
    public static RepAdapterImageClassificationTrainer.Options Create(int epochs = 4, string backbone = "vit") => new()
    {
        Backbone = RandomBackbone(backbone),
        Epochs = epochs,
        BatchSize = 8,
        WarmupEpochs = 0,
        LearningRate = 3e-3,
        AdapterScale = 1f,
        AdaptedBlocks = TrainingRecipe.AllBlocks,
        DropPathRate = 0,
        ScoringBatchSize = 8,
        Seed = 42,
    };

    private static Backbone RandomBackbone(string kind)
    {
        var backbone = TinyModels.Create(kind, seed: 11);
        TinyModels.Randomize(backbone, seed: 11);
        return backbone;
    }
}
