using Microsoft.ML.RepAdapter.Adapters;
using System.Diagnostics;
using Microsoft.ML.RepAdapter.Training;
using Microsoft.ML.Runtime;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.MLNet;

/// <summary>The images one fold of the search trains a candidate on, and those it judges it on.</summary>
internal sealed record SearchFold(TrainingImages FitOn, TrainingImages JudgeOn);

/// <summary>Trains <paramref name="recipe"/> on <paramref name="fold"/>'s images and scores it on the fold's validation images.</summary>
internal delegate (nn.Module<Tensor, Tensor> Network, ValidationScore Score) TrialRunner(TrainingRecipe recipe, SearchFold fold, string run);

/// <summary>
/// Time left in one Fit under <see cref="RepAdapterTrainerOptions.TimeBudget"/>, predicted from the runs measured so far
/// (seconds per image-epoch, the slowest seen, so that a prediction errs on the long side).
/// </summary>
internal sealed class FitBudget(TimeSpan? limit)
{
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private double _secondsPerImageEpoch;

    public TimeSpan? Limit => limit;

    public TimeSpan Elapsed => _clock.Elapsed;

    public void Measured(TimeSpan took, long imageEpochs)
    {
        if (imageEpochs > 0) _secondsPerImageEpoch = Math.Max(_secondsPerImageEpoch, took.TotalSeconds / imageEpochs);
    }

    /// <summary>Whether a run of <paramref name="imageEpochs"/> still fits, with <paramref name="reserve"/> image-epochs kept for what must follow.</summary>
    public bool Allows(long imageEpochs, long reserve) =>
        limit is null || Elapsed.TotalSeconds + _secondsPerImageEpoch * (imageEpochs + reserve) <= limit.Value.TotalSeconds;

    /// <summary>The epochs (1 to <paramref name="wanted"/>) of <paramref name="images"/> images that fit in the time left; <paramref name="wanted"/> without a limit or a measurement.</summary>
    public int EpochsThatFit(int wanted, int images)
    {
        if (limit is null || _secondsPerImageEpoch == 0 || images == 0) return wanted;
        double left = limit.Value.TotalSeconds - Elapsed.TotalSeconds;
        return (int)Math.Clamp(Math.Floor(left / (_secondsPerImageEpoch * images)), 1, wanted);
    }
}

/// <summary>
/// Chooses a recipe on validation data, cheaply and conservatively. Successive halving with a prior: every candidate
/// trains a sixth of the recipe's epochs; the best challenger (metric, then loss) goes on only if it beat the recipe by
/// more than chance (<see cref="ValidationScore.Beats"/>: the paired per-part differences' standard error), and then both
/// train half the schedule, where it must beat the recipe again. So a search on a small, noisy hold-out keeps the recipe
/// unless the evidence is clear, and costs about one full run more than the recipe alone (sized so that the bare call
/// stays within a few times ML.NET's own pipeline). Candidates share one seed (paired comparisons) and, through the
/// trainer, one frozen-prefix cache.
/// </summary>
internal static class RecipeSearch
{
    /// <summary>The recipe first, then each free lever's other values one at a time (the rest as the recipe).</summary>
    public static IReadOnlyList<TrainingRecipe> Candidates(TrainingRecipe recipe, RecipeSearchSpace free) =>
    [
        .. new[] { recipe }
            .Concat(free.AdapterScales.Select(s => recipe with { AdapterScale = s }))
            .Concat(free.LearningRates.Select(r => recipe with { LearningRate = r }))
            .Concat(free.AdaptedBlocks.Select(b => recipe with { AdaptedBlocks = b }))
            .Concat((free.Methods ?? []).Select(m => recipe with { Method = m, AdapterScale = AdapterMethods.Of(m).UsesScale ? recipe.AdapterScale : 1f }))
            .Distinct(),
    ];

    /// <summary>The chosen recipe, what the search did, and the chosen run's network when it can serve as the final model (else null).</summary>
    public sealed record Outcome(TrainingRecipe Chosen, RecipeSearchSummary Summary, nn.Module<Tensor, Tensor>? Network);

    /// <param name="ch">Where each trial and the choice are logged.</param>
    /// <param name="candidates">The recipe first (the prior), then the alternatives.</param>
    /// <param name="folds">The hold-outs every candidate is trained and judged on.</param>
    /// <param name="validatedOn">Where the judging images come from, in words.</param>
    /// <param name="finalImages">Images the final run trains on (the budget keeps time for it).</param>
    /// <param name="keepNetworks">Whether a full-schedule run on the single fold can be the final model (its images are the final run's).</param>
    /// <param name="budget">The Fit's time budget.</param>
    /// <param name="train">Trains one candidate on one fold.</param>
    /// <param name="metricName">The task's metric name, for the log.</param>
    public static Outcome Run(IChannel ch, IReadOnlyList<TrainingRecipe> candidates, IReadOnlyList<SearchFold> folds, string validatedOn,
        int finalImages, bool keepNetworks, FitBudget budget, TrialRunner train, string metricName)
    {
        var recipe = candidates[0];
        int full = recipe.Epochs, brief = Math.Max(1, full / 6), longer = Math.Max(brief, full / 2);
        long foldImages = folds.Sum(f => (long)f.FitOn.Count);
        long finalReserve = keepNetworks ? 0 : (long)full * finalImages;
        var trials = new List<RecipeTrial>();
        var kept = new Dictionary<int, nn.Module<Tensor, Tensor>>();
        keepNetworks &= folds.Count == 1;
        ch.Info($"Recipe search: {candidates.Count} candidates on {validatedOn} ({folds[0].JudgeOn.Count} images{(folds.Count > 1 ? $", {folds.Count} folds" : "")}), "
            + $"{brief} epochs each, then the best against the recipe at {longer}: {string.Join("; ", candidates.Select((c, i) => $"{i + 1}: {c}"))}.");

        ValidationScore Trial(int index, int epochs)
        {
            var run = candidates[index] with { Epochs = epochs, WarmupEpochs = (int)((long)candidates[index].WarmupEpochs * epochs / full) };
            var clock = Stopwatch.StartNew();
            var scores = new List<ValidationScore>();
            for (int f = 0; f < folds.Count; f++)
            {
                nn.Module<Tensor, Tensor> network;
                ValidationScore score;
                try
                {
                    (network, score) = train(run, folds[f], $"search {index + 1}/{candidates.Count}{(folds.Count > 1 ? $" fold {f + 1}" : "")}, {epochs} epochs");
                }
                catch (TrainingDivergedException e)
                {
                    // A candidate that diverges (too high a learning rate or scale for these data) is out of the running, not the end of the Fit.
                    // Not a timing: a run cut short would make the budget think every epoch is that quick.
                    ch.Warning($"Recipe search: candidate {index + 1} ({run}) diverged and is dropped: {e.Message}");
                    trials.Add(new RecipeTrial(index + 1, run, 0, 0, clock.Elapsed.TotalSeconds, Diverged: true));
                    return ValidationScore.Diverged;
                }
                scores.Add(score);
                if (keepNetworks && epochs == full)
                {
                    if (kept.Remove(index, out var old)) old.Dispose();
                    kept[index] = network;
                }
                else network.Dispose();
            }
            budget.Measured(clock.Elapsed, epochs * foldImages);
            var mean = ValidationScore.Mean(scores);
            trials.Add(new RecipeTrial(index + 1, run, mean.Metric, mean.Loss, clock.Elapsed.TotalSeconds));
            ch.Info($"Recipe search: candidate {index + 1} ({run}): validation {metricName} {mean.Metric:P2}, loss {mean.Loss:F4} ({clock.Elapsed.TotalSeconds:F0} s).");
            return mean;
        }

        int skipped = 0;
        var brief1 = new Dictionary<int, ValidationScore> { [0] = Trial(0, brief) };
        for (int i = 1; i < candidates.Count; i++)
        {
            if (budget.Allows(brief * foldImages, finalReserve + 2L * longer * foldImages)) brief1[i] = Trial(i, brief);
            else skipped++;
        }
        if (skipped > 0) ch.Info($"Recipe search: {skipped} candidates skipped to stay within TimeBudget {budget.Limit}.");

        var challenger = brief1.Where(p => p.Key != 0 && p.Value != ValidationScore.Diverged)
            .OrderByDescending(p => p.Value.Metric).ThenBy(p => p.Value.Loss).Select(p => (int?)p.Key).FirstOrDefault();
        int chosen = 0;
        string reason;
        if (brief1[0] == ValidationScore.Diverged)
        {
            if (challenger is not int best)
                throw new TrainingDivergedException($"Every candidate of the recipe search diverged ({string.Join("; ", brief1.Keys.Select(i => candidates[i]))}): "
                    + "set a lower LearningRate or AdapterScale.");
            (chosen, reason) = (best, $"the recipe diverged; candidate {best + 1} scored best of the others after {brief} epochs");
        }
        else if (challenger is not int c || !brief1[c].Beats(brief1[0]))
        {
            reason = challenger is null ? "no other candidate fitted in the time budget"
                : $"no candidate beat the recipe by more than chance after {brief} epochs (best: candidate {challenger + 1})";
        }
        else if (brief == longer)
        {
            (chosen, reason) = (c, $"candidate {c + 1} beat the recipe by more than chance");
        }
        else if (!budget.Allows(2L * longer * foldImages, finalReserve))
        {
            (chosen, reason) = (c, $"candidate {c + 1} beat the recipe by more than chance after {brief} epochs (no time left to confirm it at {longer})");
        }
        else
        {
            var recipeLonger = Trial(0, longer);
            var challengerLonger = Trial(c, longer);
            if (recipeLonger == ValidationScore.Diverged && challengerLonger == ValidationScore.Diverged)
                throw new TrainingDivergedException($"The recipe and candidate {c + 1} both diverged at {longer} epochs of the recipe search: set a lower LearningRate or AdapterScale.");
            (chosen, reason) = recipeLonger == ValidationScore.Diverged
                ? (c, $"candidate {c + 1} beat the recipe by more than chance after {brief} epochs, and the recipe diverged at {longer}")
                : challengerLonger.Beats(recipeLonger)
                ? (c, $"candidate {c + 1} beat the recipe by more than chance after {brief} and after {longer} epochs")
                : (0, $"candidate {c + 1} led after {brief} epochs but not by more than chance after {longer}");
        }
        ch.Info($"Recipe search chose candidate {chosen + 1} ({candidates[chosen]}): {reason}.");
        kept.Remove(chosen, out var network);
        foreach (var other in kept.Values) other.Dispose();
        var summary = new RecipeSearchSummary(validatedOn, folds[0].JudgeOn.Count, folds.Count, trials, skipped, chosen + 1, candidates[chosen], reason);
        return new Outcome(candidates[chosen], summary, network);
    }
}
