using System.Diagnostics;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Torch;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Training;

/// <summary>What one epoch did; reported through the progress callback.</summary>
/// <param name="Run">Which run of the trainer: "final", or a scale candidate of the search ("scale 0.1").</param>
/// <param name="Epoch">1-based epoch number.</param>
/// <param name="Epochs">Epochs in the run.</param>
/// <param name="Loss">Mean training loss over the epoch.</param>
/// <param name="TrainAccuracy">Fraction of correct training predictions (images, or labelled pixels).</param>
/// <param name="ValidationMetric">The objective's metric on the validation data, when there is any.</param>
/// <param name="ValidationLoss">The objective's loss on the validation data, when there is any.</param>
/// <param name="MetricName">Name of that metric ("acc", "mIoU").</param>
/// <param name="LearningRate">The epoch's learning rate.</param>
/// <param name="ImagesPerSecond">Training throughput of the epoch.</param>
/// <param name="Remaining">Estimated time left in the run.</param>
public sealed record EpochReport(
    string Run,
    int Epoch,
    int Epochs,
    double Loss,
    double TrainAccuracy,
    double? ValidationMetric,
    double? ValidationLoss,
    string MetricName,
    double LearningRate,
    double ImagesPerSecond,
    TimeSpan Remaining)
{
    /// <summary>One log line: epoch, loss, accuracy, validation metric, learning rate, throughput, ETA.</summary>
    public override string ToString() =>
        $"epoch {Epoch}/{Epochs}: loss {Loss:F4}, train acc {TrainAccuracy:P1}"
        + (ValidationMetric is double v ? $", val {MetricName} {v:P1}, val loss {ValidationLoss:F4}" : "")
        + $", lr {LearningRate:G3}, {ImagesPerSecond:F1} img/s, ETA {Remaining:hh\\:mm\\:ss}";
}

/// <summary>How a run ended: its epoch reports, and the epoch whose weights the model holds.</summary>
/// <param name="Reports">One report per epoch trained (resumed epochs included).</param>
/// <param name="BestEpoch">The epoch kept: the best on validation data with early stopping, else the last.</param>
/// <param name="Stopped">Whether early stopping ended the run before its last epoch.</param>
/// <param name="ResumedAfterEpoch">The epochs a saved state had already done when this call started (0: a fresh run).</param>
public sealed record TrainingResult(IReadOnlyList<EpochReport> Reports, int BestEpoch, bool Stopped, int ResumedAfterEpoch = 0);

/// <summary>
/// Supervised fine-tuning of a network's trainable parameters with AdamW and the per-epoch cosine schedule, for any
/// <see cref="ITrainingObjective"/>, with optional early stopping on validation data and a resumable state saved after
/// every epoch. Plain TorchSharp: the ML.NET trainers feed it images and turn its reports into log lines.
/// </summary>
public static class FineTuning
{
    /// <summary>
    /// A finite loss above which training is called diverged: cross-entropy is ln K at chance and a few times that for a
    /// confidently wrong model, so only logits that have blown up (or a damaged resumed state) reach it.
    /// </summary>
    public const double DivergedLoss = 1e4;

    /// <summary>Trains <paramref name="model"/> in place.</summary>
    /// <param name="model">Images in, task output out (class logits, or per-pixel logits).</param>
    /// <param name="toInput">
    /// How a stored batch becomes the model's input: <see cref="ImageInputSpec.Normalize"/> for uint8 pixels, the identity
    /// for stored inputs such as <see cref="FrozenPrefix"/> outputs.
    /// </param>
    /// <param name="train">The training images and targets, read in a seeded order every epoch.</param>
    /// <param name="validation">Evaluated after every epoch (null or empty: none); required for early stopping.</param>
    /// <param name="objective">The loss, the training accuracy and the validation metric.</param>
    /// <param name="settings">Epochs, batch size, learning-rate schedule, weight decay, seed, augmentation, early stopping; validated first.</param>
    /// <param name="device">Where the batches are moved; the model must already be there.</param>
    /// <param name="run">The run's name in reports and in <paramref name="stateFolder"/>.</param>
    /// <param name="stateFolder">Where the run's state is saved after every epoch and resumed from (null: nowhere).</param>
    /// <param name="progress">Called with each epoch's report, after its state is saved.</param>
    /// <param name="checkAlive">Called before every step; throws to cancel (ML.NET's Host.CheckAlive).</param>
    /// <returns>The epoch reports and the epoch whose weights the model holds (the best one with early stopping); the model is left in eval mode.</returns>
    /// <exception cref="ArgumentOutOfRangeException">A setting is out of range.</exception>
    /// <exception cref="ArgumentException">There are no training images, or early stopping has no validation images.</exception>
    /// <exception cref="InvalidOperationException">
    /// The model has no trainable parameters, or an epoch yielded no batch; a <see cref="TrainingDivergedException"/> when
    /// training diverged (a loss, gradient or weight became non-finite, or the loss passed <see cref="DivergedLoss"/>: the
    /// message says which, and where).
    /// </exception>
    public static TrainingResult Train(
        nn.Module<Tensor, Tensor> model,
        Func<Tensor, Tensor> toInput,
        TrainingImages train,
        TrainingImages? validation,
        ITrainingObjective objective,
        FineTuneSettings settings,
        Device device,
        string run = "final",
        string? stateFolder = null,
        Action<EpochReport>? progress = null,
        Action? checkAlive = null)
    {
        settings.Validate();
        if (train.Count == 0) throw new ArgumentException("No training images.", nameof(train));
        if (settings.EarlyStopping is not null && validation is not { Count: > 0 })
            throw new ArgumentException("Early stopping needs validation images: give a ValidationSet or a ValidationSetFraction.", nameof(validation));
        var trainable = model.named_parameters().Where(p => p.parameter.requires_grad).ToList();
        if (trainable.Count == 0) throw new InvalidOperationException("The model has no trainable parameters.");

        // As the official train.py: one AdamW group, weight decay on every trainable parameter.
        using var optimizer = new KeepAliveAdamW(trainable.Select(p => p.parameter), settings.LearningRate, settings.WeightDecay);
        using var state = stateFolder is null ? null : new TrainingState(stateFolder, run, TrainingState.Fingerprint(settings, trainable, train.Count, validation?.Count ?? 0));
        var progressSoFar = state?.TryResume(model, optimizer) ?? new TrainingProgress();
        var reports = new List<EpochReport>(progressSoFar.Reports);
        int resumedAfter = progressSoFar.EpochsDone;
        var clock = Stopwatch.StartNew();
        int trainedHere = 0;

        for (int epoch = progressSoFar.EpochsDone; epoch < settings.Epochs && !progressSoFar.Stopped; epoch++)
        {
            double rate = settings.Schedule.RateAt(epoch);
            foreach (var group in optimizer.ParamGroups) group.LearningRate = rate;
            model.train();
            double lossSum = 0;
            long correct = 0, counted = 0, seen = 0;
            var epochClock = Stopwatch.StartNew();
            int b = 0;
            foreach (var read in train.Epoch(epoch, settings.BatchSize, settings.Seed))
            {
                using (read)
                {
                    checkAlive?.Invoke();
                    using var scope = NewDisposeScope();
                    var batch = settings.Augmentation?.Apply(read, settings.Seed, epoch, b) ?? read;
                    var images = toInput(batch.Pixels.to(device));
                    var targets = batch.Targets.to(device);
                    optimizer.zero_grad();
                    var output = model.forward(images);
                    var loss = objective.Loss(output, targets);
                    double lossValue = loss.item<float>();
                    string where = $"epoch {epoch + 1}, batch {++b}";
                    if (!double.IsFinite(lossValue)) throw NonFiniteLoss(model, images, lossValue, where);
                    if (lossValue > DivergedLoss)
                    {
                        throw new TrainingDivergedException(
                            $"Training diverged in {where}: the loss is {lossValue:G4}, finite but past {DivergedLoss:G0}, which no model that learns "
                            + "reaches (a cross-entropy at chance is ln K). Try a lower LearningRate or AdapterScale; if this run resumed, check its state.");
                    }
                    loss.backward();
                    if (NonFinite.FirstIn(trainable.Select(p => (p.name, p.parameter.grad ?? p.parameter))) is string badGradient)
                    {
                        throw new TrainingDivergedException(
                            $"Training diverged in {where}: the gradient of '{badGradient}' is not finite although the loss is {lossValue:G4}. "
                            + "Try a lower LearningRate or AdapterScale.");
                    }
                    // A norm that overflows float although every gradient is finite would scale them all to 0: refuse it too.
                    if (settings.MaxGradientNorm is double maxNorm && nn.utils.clip_grad_norm_(trainable.Select(p => p.parameter), maxNorm) is var norm
                        && !double.IsFinite(norm))
                    {
                        throw new TrainingDivergedException(
                            $"Training diverged in {where}: every gradient is finite, but their norm overflowed ({norm}). Try a lower LearningRate or AdapterScale.");
                    }
                    optimizer.step();
                    if (NonFinite.FirstIn(trainable.Select(p => (p.name, (Tensor)p.parameter))) is string badWeight)
                    {
                        throw new TrainingDivergedException(
                            $"Training diverged in {where}: the optimiser step at learning rate {rate:G3} made '{badWeight}' non-finite. "
                            + "Try a lower LearningRate (or WeightDecay), and check that both are finite.");
                    }
                    lossSum += lossValue * batch.Count;
                    var (batchCorrect, batchCounted) = objective.Correct(output, targets);
                    correct += batchCorrect;
                    counted += batchCounted;
                    seen += batch.Count;
                }
            }
            if (seen == 0)
            {
                throw new InvalidOperationException(
                    $"Epoch {epoch + 1} trained on no batch: the {train.Count} training images gave none at batch size {settings.BatchSize}, "
                    + "so there is no loss to report and nothing was learned.");
            }
            (double? validationMetric, double? validationLoss) = (null, null);
            if (validation is { Count: > 0 }) (validationMetric, validationLoss) = Evaluate(model, toInput, validation, objective, device, settings.BatchSize);
            trainedHere++;
            double perSecond = seen / Math.Max(epochClock.Elapsed.TotalSeconds, 1e-9);
            var remaining = TimeSpan.FromSeconds(clock.Elapsed.TotalSeconds / trainedHere * (settings.Epochs - epoch - 1));
            var report = new EpochReport(run, epoch + 1, settings.Epochs, lossSum / seen, (double)correct / Math.Max(counted, 1), validationMetric,
                validationLoss, objective.MetricName, rate, perSecond, remaining);
            reports.Add(report);
            progressSoFar = progressSoFar.After(report, settings.EarlyStopping, model);
            state?.Save(model, optimizer, progressSoFar);
            progress?.Invoke(report);
        }
        progressSoFar.RestoreBest(model);
        model.eval();
        return new TrainingResult(reports, progressSoFar.BestEpoch ?? reports.Count, progressSoFar.Stopped, resumedAfter);
    }

    /// <summary>
    /// Says why the loss of <paramref name="images"/> is not finite: non-finite weights (from the checkpoint or an earlier
    /// step), non-finite inputs, or neither, in which case the forward pass itself overflowed or a CPU kernel misbehaved.
    /// </summary>
    private static TrainingDivergedException NonFiniteLoss(nn.Module model, Tensor images, double loss, string where)
    {
        double largest;
        using (no_grad()) largest = model.parameters().Where(p => p.requires_grad).Max(p => p.abs().max().item<float>());
        string cause = NonFinite.FirstIn(model) is string weight
            ? $"the model's '{weight}' is not finite (check the checkpoint)"
            : NonFinite.FirstIn([("input", images)]) is not null
                ? "the normalised input images are not finite (check Mean and Std)"
                : largest > 1e4
                    ? $"every weight is finite, but trained weights have grown to {largest:G3} and the forward pass overflowed"
                    : "every weight and input is finite, so the forward pass overflowed or a numerical kernel returned NaN "
                      + "(compare with DNNL_MAX_CPU_ISA=AVX2 or OMP_NUM_THREADS=1)";
        return new TrainingDivergedException(
            $"Training diverged: the loss became {loss} in {where}: {cause}. Try a lower LearningRate or AdapterScale.");
    }

    /// <summary>The objective's metric and mean loss of <paramref name="model"/> on <paramref name="data"/> (eval mode, no gradients).</summary>
    public static (double Metric, double Loss) Evaluate(nn.Module<Tensor, Tensor> model, Func<Tensor, Tensor> toInput, TrainingImages data,
        ITrainingObjective objective, Device device, int batchSize = 64)
    {
        var score = Score(model, toInput, data, objective, device, batchSize, shards: 0);
        return (score.Metric, score.Loss);
    }

    /// <summary>
    /// The objective's metric and mean loss of <paramref name="model"/> on <paramref name="data"/> (eval mode, no
    /// gradients), and the same on each of <paramref name="shards"/> fixed interleaved parts of it (example i in part
    /// i mod shards), whose spread tells how far two models' scores on the same data differ by chance.
    /// </summary>
    public static ValidationScore Score(nn.Module<Tensor, Tensor> model, Func<Tensor, Tensor> toInput, TrainingImages data,
        ITrainingObjective objective, Device device, int batchSize = 64, int shards = ValidationScore.DefaultShards)
    {
        if (data.Count == 0) throw new ArgumentException("No images to evaluate.", nameof(data));
        bool wasTraining = model.training;
        model.eval();
        var metric = objective.NewMetric();
        var shardMetrics = Enumerable.Range(0, shards).Select(_ => objective.NewMetric()).ToArray();
        var shardLoss = new double[shards];
        var shardCount = new long[shards];
        double lossSum = 0;
        long examples = 0;
        using (no_grad())
        {
            foreach (var batch in data.InOrder(batchSize))
            {
                using (batch)
                {
                    using var scope = NewDisposeScope();
                    var output = model.forward(toInput(batch.Pixels.to(device)));
                    var targets = batch.Targets.to(device);
                    metric.Add(output, targets);
                    lossSum += objective.Loss(output, targets).item<float>() * batch.Count;
                    for (int k = 0; k < shards; k++)
                    {
                        long[] mine = [.. Enumerable.Range(0, batch.Count).Where(i => (examples + i) % shards == k).Select(i => (long)i)];
                        if (mine.Length == 0) continue;
                        var index = tensor(mine, device: device);
                        var (part, partTargets) = (output.index_select(0, index), targets.index_select(0, index));
                        shardMetrics[k].Add(part, partTargets);
                        shardLoss[k] += objective.Loss(part, partTargets).item<float>() * mine.Length;
                        shardCount[k] += mine.Length;
                    }
                    examples += batch.Count;
                }
            }
        }
        model.train(wasTraining);
        int used = shardCount.Count(c => c > 0);
        return new ValidationScore(metric.Value, lossSum / examples, [.. shardMetrics.Take(used).Select(m => m.Value)],
            [.. Enumerable.Range(0, used).Select(k => shardLoss[k] / shardCount[k])]);
    }
}

/// <summary>
/// Training stopped because it diverged: a non-finite or huge loss, a non-finite gradient, gradient norm or weight. The
/// message says which and where. The recipe search drops a candidate that throws it.
/// </summary>
public sealed class TrainingDivergedException(string message) : InvalidOperationException(message);

/// <summary>A model's validation metric and loss, overall and on fixed interleaved parts of the validation data.</summary>
/// <param name="Metric">The objective's metric on all of the data (higher is better).</param>
/// <param name="Loss">The mean loss on all of it.</param>
/// <param name="ShardMetrics">The metric on each part, in part order (the same parts for every model scored on the same data).</param>
/// <param name="ShardLosses">The mean loss on each part.</param>
public sealed record ValidationScore(double Metric, double Loss, double[] ShardMetrics, double[] ShardLosses)
{
    /// <summary>The score of a run that diverged: below every real score, and it beats nothing.</summary>
    public static ValidationScore Diverged { get; } = new(-1, double.MaxValue, [], []);

    /// <summary>Parts a validation set is scored in by default.</summary>
    public const int DefaultShards = 5;

    /// <summary>
    /// Whether this score is better than <paramref name="other"/>'s (on the same data) by more than chance: its metric
    /// higher by more than the standard error of the paired per-part differences (and at least
    /// <paramref name="minimumGain"/>), or its metric no lower and its loss lower by more than that loss difference's
    /// standard error. A near-tie therefore keeps <paramref name="other"/>.
    /// </summary>
    public bool Beats(ValidationScore other, double minimumGain = 0.005)
    {
        double gain = Metric - other.Metric;
        if (gain > Math.Max(minimumGain, StandardError(ShardMetrics, other.ShardMetrics))) return true;
        double lossGain = other.Loss - Loss;
        return gain >= 0 && lossGain > Math.Max(1e-3, StandardError(other.ShardLosses, ShardLosses));
    }

    /// <summary>The mean of several folds' scores, their parts side by side.</summary>
    public static ValidationScore Mean(IReadOnlyList<ValidationScore> folds) => folds.Count == 1 ? folds[0] : new(
        folds.Average(f => f.Metric), folds.Average(f => f.Loss), [.. folds.SelectMany(f => f.ShardMetrics)], [.. folds.SelectMany(f => f.ShardLosses)]);

    /// <summary>Standard error of the mean of the paired differences a - b (infinite with fewer than two pairs: no evidence).</summary>
    private static double StandardError(double[] a, double[] b)
    {
        int n = Math.Min(a.Length, b.Length);
        if (n < 2) return double.PositiveInfinity;
        var d = Enumerable.Range(0, n).Select(i => a[i] - b[i]).ToArray();
        double mean = d.Average();
        return Math.Sqrt(d.Sum(x => (x - mean) * (x - mean)) / (n - 1) / n);
    }
}
