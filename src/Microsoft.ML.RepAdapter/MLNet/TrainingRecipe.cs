using Microsoft.ML.RepAdapter.Adapters;
using System.Globalization;

namespace Microsoft.ML.RepAdapter.MLNet;

/// <summary>The recipe a trainer starts from; each option left unset takes the preset's value.</summary>
public enum RecipePreset
{
    /// <summary>
    /// For a CPU (the default): trains in minutes. Classification: 112 px, adapters in the last 3 blocks with the frozen
    /// blocks before them computed once, s = 10, lr 3e-3, 12 epochs, batch 16, no warm-up, and a short search of s, the
    /// learning rate and the adapted blocks on validation data. Segmentation: 112 px, every block, s = 1, lr 1e-2,
    /// 24 epochs, batch 8, and a search of s and the learning rate. The 112 px apply to the built-in backbone (ML.NET's
    /// ResNet-18); a checkpoint keeps its own resolution unless <c>ImageSize</c> is set.
    /// </summary>
    Cpu,

    /// <summary>
    /// The paper's VTAB-1k recipe, for a GPU: the backbone's resolution, adapters in every block, s = 1, lr 1e-3,
    /// 100 epochs with 10 of warm-up, batch 64, no search.
    /// </summary>
    Paper,
}

/// <summary>
/// The levers of one training run that matter most, as a trainer resolved them: the preset's values, with every option
/// the user set kept as set, and the search's choices for the rest.
/// </summary>
/// <param name="ImageSize">Input resolution; null: the backbone's own.</param>
/// <param name="AdaptedBlocks">Adapters in the last this many blocks of the trunk; <see cref="AllBlocks"/>: every block.</param>
/// <param name="AdapterScale">The scale s of the adapter branch.</param>
/// <param name="LearningRate">AdamW's peak learning rate.</param>
/// <param name="Epochs">Training epochs.</param>
/// <param name="BatchSize">Images per optimiser step.</param>
/// <param name="WarmupEpochs">Linear warm-up epochs before the cosine decay.</param>
/// <param name="Method">The adaptation method (RepAdapter in models saved before it was a lever).</param>
public sealed record TrainingRecipe(int? ImageSize, int AdaptedBlocks, float AdapterScale, double LearningRate, int Epochs, int BatchSize, int WarmupEpochs,
    AdaptationMethod Method = AdaptationMethod.RepAdapter)
{
    /// <summary>The <see cref="AdaptedBlocks"/> value that means every block (the paper).</summary>
    public const int AllBlocks = int.MaxValue;

    /// <summary>The adapter configuration's block limit (null: every block).</summary>
    internal int? LastBlocks => AdaptedBlocks == AllBlocks ? null : AdaptedBlocks;

    /// <summary>A short description, e.g. "s = 10, lr 0.003, last 3 blocks, 12 epochs, batch 16, 112 px".</summary>
    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"{(Method == AdaptationMethod.RepAdapter ? "" : $"{Method}, ")}s = {AdapterScale:G}, lr {LearningRate:G}, {(LastBlocks is int n ? $"last {n} blocks" : "every block")}, {Epochs} epochs, batch {BatchSize}"
        + $"{(WarmupEpochs > 0 ? $" ({WarmupEpochs} warm-up)" : "")}, {(ImageSize is int size ? $"{size} px" : "backbone's resolution")}");
}

/// <summary>
/// What a recipe search may try instead of the recipe's value, for each lever the user left unset (an option that is set
/// is never searched). The recipe's own value is always a candidate.
/// </summary>
/// <param name="AdapterScales">Scales s.</param>
/// <param name="LearningRates">Peak learning rates.</param>
/// <param name="AdaptedBlocks">Adapted blocks (<see cref="TrainingRecipe.AllBlocks"/> for every block).</param>
/// <param name="Methods">Other adaptation methods, each trained with the recipe's other levers (its scale, or 1 for a
/// method without one). None in the presets: each costs a candidate run; name them to compare methods on your data.</param>
public sealed record RecipeSearchSpace(float[] AdapterScales, double[] LearningRates, int[] AdaptedBlocks, AdaptationMethod[]? Methods = null)
{
    /// <summary>Nothing to search: the recipe as it is.</summary>
    public static RecipeSearchSpace None { get; } = new([], [], []);
}

/// <summary>One run of a recipe search, as the trained model's summary keeps it.</summary>
/// <param name="Candidate">The candidate's number in the search (1: the recipe itself).</param>
/// <param name="Recipe">The candidate's recipe, with the epochs this run trained.</param>
/// <param name="Metric">The task's validation metric (mean over the folds).</param>
/// <param name="Loss">The validation loss (mean over the folds).</param>
/// <param name="Seconds">Training and evaluation time of the run, every fold included.</param>
/// <param name="Diverged">Whether the run diverged (too high a learning rate or scale): dropped from the search, its metric and loss 0.</param>
public sealed record RecipeTrial(int Candidate, TrainingRecipe Recipe, double Metric, double Loss, double Seconds, bool Diverged = false);

/// <summary>What a recipe search tried and why it chose what it chose; saved with the model.</summary>
/// <param name="ValidatedOn">Where candidates were judged: "the validation set", or held-out training images.</param>
/// <param name="ValidationImages">Images each candidate was judged on (per fold).</param>
/// <param name="Folds">Hold-outs each candidate was trained and judged on (more than one when the data are small).</param>
/// <param name="Trials">Every run, in the order trained.</param>
/// <param name="Skipped">Candidates left out because the time budget would not allow them.</param>
/// <param name="ChosenCandidate">The chosen candidate's number (1: the recipe itself).</param>
/// <param name="Chosen">The recipe the returned model was trained with.</param>
/// <param name="Reason">Why that one, in words.</param>
public sealed record RecipeSearchSummary(string ValidatedOn, int ValidationImages, int Folds, IReadOnlyList<RecipeTrial> Trials, int Skipped,
    int ChosenCandidate, TrainingRecipe Chosen, string Reason);
