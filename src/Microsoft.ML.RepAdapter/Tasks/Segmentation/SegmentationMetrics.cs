using Microsoft.ML.RepAdapter.Torch;
using Microsoft.ML.RepAdapter.Training;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Segmentation;

/// <summary>Semantic segmentation metrics over every labelled pixel of a data set (mmsegmentation's definitions).</summary>
public sealed class SegmentationMetrics
{
    internal SegmentationMetrics(long[,] confusion, IReadOnlyList<string> classNames)
    {
        ConfusionMatrix = confusion;
        ClassNames = classNames;
        int k = confusion.GetLength(0);
        long total = 0, correct = 0;
        var iou = new double[k];
        for (int c = 0; c < k; c++)
        {
            long truth = 0, predicted = 0;
            for (int j = 0; j < k; j++)
            {
                truth += confusion[c, j];
                predicted += confusion[j, c];
                total += confusion[c, j];
            }
            correct += confusion[c, c];
            long union = truth + predicted - confusion[c, c];
            iou[c] = union == 0 ? double.NaN : (double)confusion[c, c] / union;
        }
        PerClassIoU = iou;
        var present = iou.Where(v => !double.IsNaN(v)).ToArray();
        MeanIoU = present.Length == 0 ? double.NaN : present.Average();
        PixelAccuracy = total == 0 ? double.NaN : (double)correct / total;
    }

    /// <summary>Mean of <see cref="PerClassIoU"/> over the classes that occur in the truth or the prediction.</summary>
    public double MeanIoU { get; }

    /// <summary>Intersection over union per class; NaN for a class that neither occurs nor is predicted.</summary>
    public IReadOnlyList<double> PerClassIoU { get; }

    /// <summary>Fraction of labelled pixels predicted correctly.</summary>
    public double PixelAccuracy { get; }

    /// <summary>Pixel counts: row = true class, column = predicted class (ignored pixels left out).</summary>
    public long[,] ConfusionMatrix { get; }

    /// <summary>Class names, in class-index order.</summary>
    public IReadOnlyList<string> ClassNames { get; }
}

/// <summary>
/// Per-pixel cross-entropy over labelled pixels (the ignore value is left out), pixel accuracy, and mean IoU as the
/// validation metric.
/// </summary>
internal sealed class SegmentationObjective(int classes, int ignoreIndex) : ITrainingObjective
{
    public Tensor Loss(Tensor output, Tensor targets)
    {
        // A batch without a labelled pixel would make the mean NaN: it contributes nothing instead.
        if (!Scalars.With(ignoreIndex, targets.ne).any().item<bool>()) return output.sum().Times(0);
        return nn.functional.cross_entropy(output, targets, ignore_index: ignoreIndex);
    }

    public (long Correct, long Counted) Correct(Tensor output, Tensor targets)
    {
        using var scope = NewDisposeScope();
        var valid = Scalars.With(ignoreIndex, targets.ne);
        return (output.argmax(1).eq(targets).logical_and(valid).sum().item<long>(), valid.sum().item<long>());
    }

    public string MetricName => "mIoU";

    public IMetricAccumulator NewMetric() => new MeanIoU(this);

    /// <summary>The confusion matrix [K, K] (truth x prediction) of a batch's labelled pixels.</summary>
    public Tensor Confusion(Tensor predictions, Tensor targets)
    {
        using var scope = NewDisposeScope();
        // A prediction outside the classes (the ignore value, given to a NaN pixel) counts for no class.
        var valid = Scalars.With(ignoreIndex, targets.ne).logical_and(Scalars.With(classes, predictions.lt));
        var pairs = Scalars.With(classes, targets.masked_select(valid).mul).Plus(predictions.masked_select(valid));
        return pairs.bincount(null, classes * classes).view(classes, classes).cpu().MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Adds <see cref="Confusion"/> of a batch's logits [B, K, H, W] (or, with <paramref name="predictionsAreIndices"/>,
    /// class indices of the targets' shape) to <paramref name="counts"/> (K * K, row-major).
    /// </summary>
    public void AddConfusion(long[] counts, Tensor output, Tensor targets, bool predictionsAreIndices = false)
    {
        using var scope = NewDisposeScope();
        var batch = Confusion(predictionsAreIndices ? output : output.argmax(1), targets).data<long>().ToArray();
        for (int i = 0; i < counts.Length; i++) counts[i] += batch[i];
    }

    public static SegmentationMetrics Metrics(long[] counts, IReadOnlyList<string> classNames)
    {
        int classes = (int)Math.Round(Math.Sqrt(counts.Length));
        var matrix = new long[classes, classes];
        for (int i = 0; i < classes; i++)
            for (int j = 0; j < classes; j++) matrix[i, j] = counts[i * classes + j];
        return new SegmentationMetrics(matrix, classNames);
    }

    private sealed class MeanIoU(SegmentationObjective objective) : IMetricAccumulator
    {
        private readonly long[] _counts = new long[objective.Classes * objective.Classes];

        public void Add(Tensor output, Tensor targets) => objective.AddConfusion(_counts, output, targets);

        public double Value
        {
            get
            {
                double mean = Metrics(_counts, []).MeanIoU;
                return double.IsNaN(mean) ? 0 : mean;
            }
        }
    }

    public int Classes => classes;
}
