using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.MLNet;
using Microsoft.ML.RepAdapter.Training;
using Microsoft.ML.Runtime;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Classification;

/// <summary>
/// Image classification: a key label per row, the backbone's own classifier (timm's <c>head</c>, torchvision's
/// <c>fc</c>, so checkpoints and merged exports keep their names) resized to the label's classes, cross-entropy, accuracy.
/// </summary>
internal sealed class ClassificationTask(IHost host, string imageColumnName, string labelColumnName, LabelKeyValues labels)
    : ImageTask(host, imageColumnName)
{
    public LabelKeyValues Labels { get; } = labels;

    public override ITrainingObjective Objective { get; } = new ClassificationObjective();

    public override int NumClasses => Labels.Count;

    public override int BackboneClasses => Labels.Count;

    public override IEnumerable<DataViewSchema.Column> TargetColumns(DataViewSchema schema) => [schema[labelColumnName]];

    /// <summary>The label key; a missing or unknown value (key 0) is an error naming the row.</summary>
    public override Func<object> CreateTargetFetcher(DataViewRowCursor cursor, string what)
    {
        var labelColumn = cursor.Schema[labelColumnName];
        if (labelColumn.Type.GetKeyCount() != (ulong)NumClasses)
            throw Host.Except($"The {what}'s label column '{labelColumnName}' has {labelColumn.Type.GetKeyCount()} keys, the training data {NumClasses}: map both with the same MapValueToKey.");
        var getter = cursor.GetGetter<uint>(labelColumn);
        uint key = 0;
        return () =>
        {
            getter(ref key);
            if (key == 0)
                throw Host.Except($"Row {cursor.Position} of the {what}: label column '{labelColumnName}' is missing or holds a value unknown to its key mapping.");
            return (long)key - 1;
        };
    }

    public override Tensor ToTarget(object fetched, long row, ImageRead image, ImagePreprocessor preprocessor, string what) => tensor((long)fetched);

    protected override IReadOnlyCollection<long> ClassesOf(object fetched, long row, string what) => [(long)fetched];

    protected override void CheckTrainingClasses(IReadOnlySet<long> present)
    {
        if (present.Count < 2)
            throw Host.Except($"The training data has a single class ({present.Single() + 1} of {NumClasses} keys): classification needs at least two.");
    }

    public override nn.Module<Tensor, Tensor> CreateNetwork(Backbone backbone)
    {
        backbone.ResetClassifier(NumClasses);
        return backbone;
    }
}

/// <summary>Cross-entropy on class logits [B, K]; top-1 accuracy.</summary>
internal sealed class ClassificationObjective : ITrainingObjective
{
    public Tensor Loss(Tensor output, Tensor targets) => nn.functional.cross_entropy(output, targets);

    public (long Correct, long Counted) Correct(Tensor output, Tensor targets)
    {
        using var scope = NewDisposeScope();
        return (output.argmax(1).eq(targets).sum().item<long>(), targets.shape[0]);
    }

    public string MetricName => "acc";

    public IMetricAccumulator NewMetric() => new Accuracy(this);

    private sealed class Accuracy(ClassificationObjective objective) : IMetricAccumulator
    {
        private long _correct, _counted;

        public void Add(Tensor output, Tensor targets)
        {
            var (correct, counted) = objective.Correct(output, targets);
            _correct += correct;
            _counted += counted;
        }

        public double Value => _counted == 0 ? 0 : (double)_correct / _counted;
    }
}
