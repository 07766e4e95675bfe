using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.MLNet;
using Microsoft.ML.RepAdapter.Torch;
using Microsoft.ML.RepAdapter.Training;
using Microsoft.ML.Runtime;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Segmentation;

/// <summary>
/// Semantic segmentation: a mask per row (a class index per pixel, the ignore value where unlabelled), a decode head
/// on the backbone's multi-level features, per-pixel cross-entropy, mean IoU.
/// </summary>
internal sealed class SegmentationTask : ImageTask
{
    private readonly string _maskColumnName;
    private readonly SegmentationHeadKind _head;
    private readonly int _headChannels;
    private readonly int _ignoreIndex;
    private readonly string[]? _classNames;
    private int? _numClasses;
    private SegmentationObjective? _objective;

    public SegmentationTask(IHost host, RepAdapterSegmentationTrainer.Options options) : base(host, options.ImageColumnName)
    {
        _maskColumnName = options.MaskColumnName;
        _head = options.Head;
        _headChannels = options.HeadChannels;
        _ignoreIndex = options.IgnoreIndex;
        _classNames = options.ClassNames;
        _numClasses = options.ClassNames?.Length ?? options.NumberOfClasses;
    }

    /// <summary>Classes: from the options, else (after reading the training data) the largest class index in its masks + 1.</summary>
    public override int NumClasses => _numClasses ?? throw new InvalidOperationException("The number of classes is known once the training masks are read.");

    public IReadOnlyList<string> ClassNames => _classNames ?? [.. Enumerable.Range(0, NumClasses).Select(k => k.ToString(System.Globalization.CultureInfo.InvariantCulture))];

    public int IgnoreIndex => _ignoreIndex;

    public override int BackboneClasses => 0;

    public override ITrainingObjective Objective => _objective ??= new SegmentationObjective(NumClasses, _ignoreIndex);

    public override IEnumerable<DataViewSchema.Column> TargetColumns(DataViewSchema schema)
    {
        ImageColumn.Check(Host, schema, _maskColumnName);
        return [schema[_maskColumnName]];
    }

    public override Func<object> CreateTargetFetcher(DataViewRowCursor cursor, string what) => ImageColumn.CreateFetcher(cursor, _maskColumnName);

    /// <summary>The mask's class indices, checked (same size as its image, labelled pixels, classes in range) and resized (nearest).</summary>
    public override Tensor ToTarget(object fetched, long row, ImageRead image, ImagePreprocessor preprocessor, string what)
    {
        string where = $"Mask column '{_maskColumnName}', row {row} of the {what}";
        int size = preprocessor.Spec.ImageSize;
        using var scope = NewDisposeScope();
        var mask = MaskImages.Read((FetchedImage)fetched, preprocessor.MaxPixels);
        if (mask.shape[0] != image.Height || mask.shape[1] != image.Width)
            throw new InvalidDataException($"{where}: the mask is {mask.shape[1]}x{mask.shape[0]} pixels, its image {image.Width}x{image.Height}; they must have the same size.");
        CheckLabels(mask, where);
        return LabelMaps.Resize(mask, size).MoveToOuterDisposeScope();
    }

    /// <summary>A mask needs labelled pixels, and (once the classes are known) indices within them or the ignore value.</summary>
    private void CheckLabels(Tensor mask, string where)
    {
        var labelled = Scalars.With(_ignoreIndex, mask.ne);
        if (!labelled.any().item<bool>())
            throw new InvalidDataException($"{where}: every pixel holds the ignore value {_ignoreIndex}; a training mask needs labelled pixels.");
        if (_numClasses is int classes && mask.masked_select(labelled).max().item<byte>() is var largest && largest >= classes)
        {
            var at = Scalars.With(largest, mask.eq).nonzero()[0].data<long>().ToArray();
            throw new InvalidDataException(
                $"{where}: class index {largest} at pixel (x {at[1]}, y {at[0]}) is out of range: {classes} classes (0..{classes - 1}), and {_ignoreIndex} for unlabelled pixels.");
        }
    }

    protected override IReadOnlyCollection<long> ClassesOf(object fetched, long row, string what)
    {
        using var scope = NewDisposeScope();
        var mask = MaskImages.Read((FetchedImage)fetched);
        CheckLabels(mask, $"Mask column '{_maskColumnName}', row {row} of the {what}");
        return mask.masked_select(Scalars.With(_ignoreIndex, mask.ne)).unique().Item1.to(ScalarType.Int64).data<long>().ToArray();
    }

    protected override void CheckTrainingClasses(IReadOnlySet<long> present)
    {
        _numClasses ??= (int)present.Max() + 1;
        if (_numClasses > _ignoreIndex)
            throw Host.Except($"The training masks in '{_maskColumnName}' hold class indices up to {_numClasses - 1}, at or above the ignore value {_ignoreIndex}: choose an IgnoreIndex above every class.");
        if (present.Count < 2)
            throw Host.Except($"The training masks in '{_maskColumnName}' hold a single class ({present.Single()}): segmentation needs at least two (e.g. background and an object).");
    }

    public override nn.Module<Tensor, Tensor> CreateNetwork(Backbone backbone) =>
        new SegmentationNetwork(backbone, new SegmentationHeadConfig(_head, _headChannels, NumClasses, backbone.FeatureLevels));
}
