using System.Globalization;

namespace Microsoft.ML.RepAdapter.Training;

/// <summary>Optimiser and schedule of one fine-tuning run (defaults: the paper's VTAB-1k recipe).</summary>
/// <param name="Epochs">Training epochs.</param>
/// <param name="BatchSize">Examples per optimiser step.</param>
/// <param name="LearningRate">AdamW's peak learning rate.</param>
/// <param name="WeightDecay">AdamW's weight decay, on every trainable parameter.</param>
/// <param name="WarmupEpochs">Linear warm-up epochs.</param>
/// <param name="WarmupLearningRate">Learning rate at the start of the warm-up.</param>
/// <param name="FinalLearningRate">Learning rate the cosine decays towards.</param>
/// <param name="Seed">Seeds the epochs' shuffles.</param>
/// <param name="EarlyStopping">Stop when the validation data stops improving, and keep the best epoch; null trains every epoch.</param>
/// <param name="Augmentation">Random crops and flips of the training batches; null: none.</param>
/// <param name="MaxGradientNorm">Clip the trainable parameters' gradient to this global L2 norm before each step; null: no
/// clipping (the paper's recipe).</param>
public sealed record FineTuneSettings(
    int Epochs = 100,
    int BatchSize = 64,
    double LearningRate = 1e-3,
    double WeightDecay = 1e-4,
    int WarmupEpochs = 10,
    double WarmupLearningRate = 1e-6,
    double FinalLearningRate = 1e-5,
    int Seed = 42,
    EarlyStopping? EarlyStopping = null,
    ImageAugmentation? Augmentation = null,
    double? MaxGradientNorm = null)
{
    /// <summary>The per-epoch learning rate.</summary>
    public CosineSchedule Schedule => new(LearningRate, Epochs, WarmupEpochs, WarmupLearningRate, FinalLearningRate);

    /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> naming the first setting that cannot train a model.</summary>
    public void Validate()
    {
        OptionCheck.That(Epochs > 0, nameof(Epochs), Epochs, "must be positive");
        OptionCheck.That(BatchSize > 0, nameof(BatchSize), BatchSize, "must be positive");
        OptionCheck.That(double.IsFinite(LearningRate) && LearningRate > 0, nameof(LearningRate), LearningRate, "must be positive and finite");
        OptionCheck.That(double.IsFinite(WeightDecay) && WeightDecay >= 0, nameof(WeightDecay), WeightDecay, "must be finite and not negative");
        OptionCheck.That(WarmupEpochs >= 0, nameof(WarmupEpochs), WarmupEpochs, "cannot be negative");
        OptionCheck.That(WarmupEpochs == 0 || WarmupEpochs < Epochs, nameof(WarmupEpochs), WarmupEpochs,
            $"must be less than Epochs ({Epochs}), or the learning rate never leaves its warm-up");
        OptionCheck.That(double.IsFinite(WarmupLearningRate) && WarmupLearningRate >= 0, nameof(WarmupLearningRate), WarmupLearningRate, "must be finite and not negative");
        OptionCheck.That(double.IsFinite(FinalLearningRate) && FinalLearningRate >= 0, nameof(FinalLearningRate), FinalLearningRate, "must be finite and not negative");
        OptionCheck.That(MaxGradientNorm is null || double.IsFinite(MaxGradientNorm.Value) && MaxGradientNorm > 0, nameof(MaxGradientNorm), MaxGradientNorm,
            "must be positive and finite (or null for no clipping)");
        Augmentation?.Validate();
        if (EarlyStopping is { } stopping)
        {
            OptionCheck.That(stopping.Patience > 0, "EarlyStopping.Patience", stopping.Patience, "must be positive");
            OptionCheck.That(double.IsFinite(stopping.MinDelta) && stopping.MinDelta >= 0, "EarlyStopping.MinDelta", stopping.MinDelta, "must be finite and not negative");
        }
    }
}

/// <summary>Validation of user options before anything reaches native code.</summary>
internal static class OptionCheck
{
    /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> naming <paramref name="option"/> and its value unless <paramref name="valid"/>.</summary>
    public static void That(bool valid, string option, object? value, string requirement)
    {
        if (!valid) throw new ArgumentOutOfRangeException(option, value, $"{option} {requirement}; got {Format(value)}.");
    }

    private static string Format(object? value) => value switch
    {
        null => "null",
        IFormattable number => number.ToString(null, System.Globalization.CultureInfo.InvariantCulture),
        System.Collections.IEnumerable values and not string => $"[{string.Join(", ", values.Cast<object?>().Select(Format))}]",
        _ => value.ToString() ?? "",
    };
}

/// <summary>What early stopping watches on the validation data.</summary>
public enum EarlyStoppingMetric
{
    /// <summary>The task's metric (accuracy, mean IoU); higher is better.</summary>
    ValidationMetric,
    /// <summary>The task's loss; lower is better.</summary>
    ValidationLoss,
}

/// <summary>
/// Early stopping and best-epoch selection on validation data (never test data): training stops once
/// <paramref name="Patience"/> epochs in a row fail to improve <paramref name="Metric"/> by more than
/// <paramref name="MinDelta"/>, and the returned model is the best epoch's.
/// </summary>
public sealed record EarlyStopping(int Patience = 5, EarlyStoppingMetric Metric = EarlyStoppingMetric.ValidationMetric, double MinDelta = 0);
