using Microsoft.ML.RepAdapter.Torch;
using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.MLNet;
using Microsoft.ML.Runtime;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Segmentation;

/// <summary>Compares predicted masks with true masks over a whole data set.</summary>
internal static class SegmentationEvaluation
{
    public static SegmentationMetrics Evaluate(IHostEnvironment env, IDataView data, string maskColumnName, string predictedMaskColumnName, int? ignoreIndex)
    {
        var host = env.Register(nameof(SegmentationEvaluation));
        host.CheckValue(data, nameof(data));
        ImageColumn.Check(host, data.Schema, maskColumnName);
        var predicted = data.Schema.GetColumnOrNull(predictedMaskColumnName) is { } found ? found
            : throw host.ExceptSchemaMismatch(nameof(data), "predicted mask", predictedMaskColumnName);
        var namesType = predicted.Annotations.Schema.GetColumnOrNull(RepAdapterSegmentationTransformer.ClassNamesAnnotation);
        if (predicted.Type is not VectorDataViewType { ItemType: var item } || item != NumberDataViewType.UInt32 || namesType is null)
            throw host.ExceptSchemaMismatch(nameof(data), "predicted mask", predictedMaskColumnName,
                "the class indices of a RepAdapterSegmentationTransformer (with its class names)", predicted.Type.ToString());
        var names = default(VBuffer<ReadOnlyMemory<char>>);
        predicted.Annotations.GetValue(RepAdapterSegmentationTransformer.ClassNamesAnnotation, ref names);
        string[] classNames = [.. names.DenseValues().Select(n => n.ToString())];
        // The model's own ignore value unless the caller gives one.
        if (ignoreIndex is null && predicted.Annotations.Schema.GetColumnOrNull(RepAdapterSegmentationTransformer.IgnoreIndexAnnotation) is not null)
        {
            int saved = 0;
            predicted.Annotations.GetValue(RepAdapterSegmentationTransformer.IgnoreIndexAnnotation, ref saved);
            ignoreIndex = saved;
        }
        int ignore = ignoreIndex ?? 255;
        var objective = new SegmentationObjective(classNames.Length, ignore);

        // The image the mask was predicted from, when the data still holds it: its width and height are the prediction's.
        string? imageColumn = null;
        if (predicted.Annotations.Schema.GetColumnOrNull(RepAdapterSegmentationTransformer.ImageColumnAnnotation) is not null)
        {
            var name = default(ReadOnlyMemory<char>);
            predicted.Annotations.GetValue(RepAdapterSegmentationTransformer.ImageColumnAnnotation, ref name);
            imageColumn = data.Schema.GetColumnOrNull(name.ToString()) is { } source && ImageColumn.IsImageType(source.Type) ? name.ToString() : null;
        }
        var counts = new long[classNames.Length * classNames.Length];
        using var cursor = data.GetRowCursor(imageColumn is null ? [data.Schema[maskColumnName], predicted] : [data.Schema[maskColumnName], predicted, data.Schema[imageColumn]]);
        var fetchMask = ImageColumn.CreateFetcher(cursor, maskColumnName);
        var fetchImage = imageColumn is null ? null : ImageColumn.CreateFetcher(cursor, imageColumn);
        var getPredicted = cursor.GetGetter<VBuffer<uint>>(predicted);
        var values = default(VBuffer<uint>);
        while (cursor.MoveNext())
        {
            host.CheckAlive();
            using var scope = NewDisposeScope();
            var mask = MaskImages.Read(fetchMask());
            if (fetchImage is not null && ImageColumn.Size(fetchImage()) is var (width, height) && (mask.shape[0] != height || mask.shape[1] != width))
            {
                throw host.Except($"Row {cursor.Position}: the mask in '{maskColumnName}' is {mask.shape[1]} x {mask.shape[0]} pixels, the image in "
                    + $"'{imageColumn}' that '{predictedMaskColumnName}' was predicted from {width} x {height}: they must be the same image's.");
            }
            var truth = mask.flatten().to(ScalarType.Int64);
            getPredicted(ref values);
            if (values.Length != truth.shape[0])
                throw host.Except($"Row {cursor.Position}: '{predictedMaskColumnName}' has {values.Length} pixels, the mask in '{maskColumnName}' {truth.shape[0]}: they must come from the same image.");
            var prediction = tensor(values.DenseValues().Select(v => (long)v).ToArray());
            var labelled = truth.masked_select(Scalars.With(ignore, truth.ne));
            long largest = labelled.numel() == 0 ? -1 : labelled.max().item<long>();
            if (largest >= classNames.Length)
                throw host.Except($"Row {cursor.Position}: mask column '{maskColumnName}' holds class index {largest}, but the model has {classNames.Length} classes.");
            objective.AddConfusion(counts, prediction, truth, predictionsAreIndices: true);
        }
        return SegmentationObjective.Metrics(counts, classNames);
    }
}
