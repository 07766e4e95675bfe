using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Training;

/// <summary>
/// What a task trains for: its loss, what counts as a correct prediction, and the metric that chooses between runs
/// (recipe search) and is reported on validation data. Classification and segmentation each provide one.
/// </summary>
public interface ITrainingObjective
{
    /// <summary>The loss of a batch's network output against its targets, averaged over what counts.</summary>
    Tensor Loss(Tensor output, Tensor targets);

    /// <summary>Correct predictions in a batch and how many predictions were counted (images, or labelled pixels).</summary>
    (long Correct, long Counted) Correct(Tensor output, Tensor targets);

    /// <summary>Short name of <see cref="NewMetric"/>'s value in reports, e.g. "acc" or "mIoU".</summary>
    string MetricName { get; }

    /// <summary>A fresh accumulator of the validation metric (higher is better).</summary>
    IMetricAccumulator NewMetric();
}

/// <summary>Accumulates a metric over batches of network outputs and targets.</summary>
public interface IMetricAccumulator
{
    /// <summary>Adds one batch.</summary>
    void Add(Tensor output, Tensor targets);

    /// <summary>The metric over every batch added so far.</summary>
    double Value { get; }
}
