using Microsoft.ML.RepAdapter.Torch;
using System.Diagnostics;
using Microsoft.ML.RepAdapter.Backbones;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Training;

/// <summary>Optimiser and schedule of one fine-tuning run (defaults: the paper's VTAB-1k recipe).</summary>
public sealed record FineTuneSettings(
    int Epochs = 100,
    int BatchSize = 64,
    double LearningRate = 1e-3,
    double WeightDecay = 1e-4,
    int WarmupEpochs = 10,
    double WarmupLearningRate = 1e-6,
    double FinalLearningRate = 1e-5,
    int Seed = 42)
{
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
    }
}

/// <summary>Validation of user options before anything reaches native code.</summary>
public static class OptionCheck
{
    /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> naming <paramref name="option"/> and its value unless <paramref name="valid"/>.</summary>
    public static void That(bool valid, string option, object? value, string requirement)
    {
        if (!valid) throw new ArgumentOutOfRangeException(option, value, $"{option} {requirement}; got {Format(value)}.");
    }

    private static string Format(object? value) => value switch
    {
        null => "null",
        float[] values => $"[{string.Join(", ", values)}]",
        IFormattable number => number.ToString(null, System.Globalization.CultureInfo.InvariantCulture),
        _ => value.ToString() ?? "",
    };
}

/// <summary>What one epoch did; reported through the progress callback.</summary>
/// <param name="Epoch">1-based epoch number.</param>
/// <param name="Epochs">Epochs in the run.</param>
/// <param name="Loss">Mean training loss over the epoch.</param>
/// <param name="TrainAccuracy">Fraction of correct training predictions (images, or labelled pixels).</param>
/// <param name="ValidationMetric">The objective's metric on the validation data, when there is any.</param>
/// <param name="MetricName">Name of that metric ("acc", "mIoU").</param>
/// <param name="LearningRate">The epoch's learning rate.</param>
/// <param name="ImagesPerSecond">Training throughput of the epoch.</param>
/// <param name="Remaining">Estimated time left in the run.</param>
public sealed record EpochReport(
    int Epoch,
    int Epochs,
    double Loss,
    double TrainAccuracy,
    double? ValidationMetric,
    string MetricName,
    double LearningRate,
    double ImagesPerSecond,
    TimeSpan Remaining)
{
    /// <summary>One log line: epoch, loss, accuracy, validation metric, learning rate, throughput, ETA.</summary>
    public override string ToString() =>
        $"epoch {Epoch}/{Epochs}: loss {Loss:F4}, train acc {TrainAccuracy:P1}"
        + (ValidationMetric is double v ? $", val {MetricName} {v:P1}" : "")
        + $", lr {LearningRate:G3}, {ImagesPerSecond:F1} img/s, ETA {Remaining:hh\\:mm\\:ss}";
}

/// <summary>
/// Supervised fine-tuning of a network's trainable parameters with AdamW and the per-epoch cosine schedule, for any
/// <see cref="ITrainingObjective"/>. Plain TorchSharp: the ML.NET trainers feed it tensors and turn its reports into log lines.
/// </summary>
public static class FineTuning
{
    /// <summary>Trains <paramref name="model"/> in place. Returns the last epoch's report.</summary>
    /// <param name="model">Images in, task output out (class logits, or per-pixel logits).</param>
    /// <param name="input">How the stored uint8 pixels become the model's input.</param>
    /// <param name="checkAlive">Called before every step; throws to cancel (ML.NET's Host.CheckAlive).</param>
    public static EpochReport Train(
        nn.Module<Tensor, Tensor> model,
        ImageInputSpec input,
        LabeledImages train,
        LabeledImages? validation,
        ITrainingObjective objective,
        FineTuneSettings settings,
        Device device,
        Action<EpochReport>? progress = null,
        Action? checkAlive = null)
    {
        settings.Validate();
        if (train.Count == 0) throw new ArgumentException("No training images.", nameof(train));
        var trainable = model.named_parameters().Where(p => p.parameter.requires_grad).ToList();
        if (trainable.Count == 0) throw new InvalidOperationException("The model has no trainable parameters.");

        // As the official train.py: one AdamW group, weight decay on every trainable parameter.
        using var optimizer = optim.AdamW(trainable.Select(p => p.parameter), lr: settings.LearningRate, weight_decay: settings.WeightDecay);
        var random = new Random(settings.Seed);
        // Drop the last partial batch (the recipe's drop_last) unless that would leave no batch at all.
        int batches = train.Count >= settings.BatchSize ? train.Count / settings.BatchSize : 1;
        int batchSize = Math.Min(settings.BatchSize, train.Count);
        var clock = Stopwatch.StartNew();
        EpochReport? report = null;

        for (int epoch = 0; epoch < settings.Epochs; epoch++)
        {
            double rate = settings.Schedule.RateAt(epoch);
            foreach (var group in optimizer.ParamGroups) group.LearningRate = rate;
            model.train();
            long[] order = [.. Enumerable.Range(0, train.Count).Select(i => (long)i).OrderBy(_ => random.Next())];
            double lossSum = 0;
            long correct = 0, counted = 0, seen = 0;
            var epochClock = Stopwatch.StartNew();
            for (int b = 0; b < batches; b++)
            {
                checkAlive?.Invoke();
                using var scope = NewDisposeScope();
                var index = tensor(order[(b * batchSize)..((b + 1) * batchSize)]);
                var images = input.Normalize(train.Pixels.index_select(0, index).to(device));
                var targets = train.Labels.index_select(0, index).to(device);
                optimizer.zero_grad();
                var output = model.forward(images);
                var loss = objective.Loss(output, targets);
                double lossValue = loss.item<float>();
                string where = $"epoch {epoch + 1}, batch {b + 1}";
                if (!double.IsFinite(lossValue)) throw NonFiniteLoss(model, images, lossValue, where);
                loss.backward();
                if (NonFinite.FirstIn(trainable.Select(p => (p.name, p.parameter.grad ?? p.parameter))) is string badGradient)
                {
                    throw new InvalidOperationException(
                        $"Training diverged in {where}: the gradient of '{badGradient}' is not finite although the loss is {lossValue:G4}. "
                        + "Try a lower LearningRate or AdapterScale.");
                }
                optimizer.step();
                if (NonFinite.FirstIn(trainable.Select(p => (p.name, (Tensor)p.parameter))) is string badWeight)
                {
                    throw new InvalidOperationException(
                        $"Training diverged in {where}: the optimiser step at learning rate {rate:G3} made '{badWeight}' non-finite. "
                        + "Try a lower LearningRate (or WeightDecay), and check that both are finite.");
                }
                lossSum += lossValue * batchSize;
                var (batchCorrect, batchCounted) = objective.Correct(output, targets);
                correct += batchCorrect;
                counted += batchCounted;
                seen += batchSize;
            }
            double? validationMetric = validation is { Count: > 0 } ? Evaluate(model, input, validation, objective, device, settings.BatchSize) : null;
            double perSecond = seen / Math.Max(epochClock.Elapsed.TotalSeconds, 1e-9);
            var remaining = TimeSpan.FromSeconds(clock.Elapsed.TotalSeconds / (epoch + 1) * (settings.Epochs - epoch - 1));
            report = new EpochReport(epoch + 1, settings.Epochs, lossSum / seen, (double)correct / Math.Max(counted, 1), validationMetric,
                objective.MetricName, rate, perSecond, remaining);
            progress?.Invoke(report);
        }
        model.eval();
        return report!;
    }

    /// <summary>
    /// Says why the loss of <paramref name="images"/> is not finite: non-finite weights (from the checkpoint or an earlier
    /// step), non-finite inputs, or neither, in which case the forward pass itself overflowed or a CPU kernel misbehaved.
    /// </summary>
    private static InvalidOperationException NonFiniteLoss(nn.Module model, Tensor images, double loss, string where)
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
        return new InvalidOperationException(
            $"Training diverged: the loss became {loss} in {where}: {cause}. Try a lower LearningRate or AdapterScale.");
    }

    /// <summary>The objective's metric of <paramref name="model"/> on <paramref name="data"/> (eval mode, no gradients).</summary>
    public static double Evaluate(nn.Module<Tensor, Tensor> model, ImageInputSpec input, LabeledImages data, ITrainingObjective objective,
        Device device, int batchSize = 64)
    {
        if (data.Count == 0) throw new ArgumentException("No images to evaluate.", nameof(data));
        bool wasTraining = model.training;
        model.eval();
        var metric = objective.NewMetric();
        using (no_grad())
        {
            for (int start = 0; start < data.Count; start += batchSize)
            {
                using var scope = NewDisposeScope();
                long length = Math.Min(batchSize, data.Count - start);
                var images = input.Normalize(data.Pixels.narrow(0, start, length).to(device));
                metric.Add(model.forward(images), data.Labels.narrow(0, start, length).to(device));
            }
        }
        model.train(wasTraining);
        return metric.Value;
    }
}
