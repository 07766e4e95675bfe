using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Training;
using Microsoft.ML.Runtime;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.MLNet;

/// <summary>
/// What one task contributes to a training run, for <see cref="RepAdapterTrainerBase{TOptions, TTransformer}"/>: how
/// its targets are read from a row (fetched cheaply on the cursor's thread, decoded on any), the network it trains on
/// top of the backbone, and its objective. Everything else (backbone, data streaming and caching, adapters, recipe,
/// recipe search, merge) is the trainer base's.
/// </summary>
internal abstract class ImageTask(IHost host, string imageColumnName)
{
    protected IHost Host { get; } = host;

    /// <summary>The image column.</summary>
    public string ImageColumnName { get; } = imageColumnName;

    /// <summary>The loss, accuracy and validation metric.</summary>
    public abstract ITrainingObjective Objective { get; }

    /// <summary>Classes the network predicts (known once <see cref="ScanTargets"/> has seen the training data).</summary>
    public abstract int NumClasses { get; }

    /// <summary>Classes of the source backbone's own classifier: the task's classes if it uses it, else 0 (none).</summary>
    public abstract int BackboneClasses { get; }

    /// <summary>The columns a row's target is read from.</summary>
    public abstract IEnumerable<DataViewSchema.Column> TargetColumns(DataViewSchema schema);

    /// <summary>A function that takes the current row's target from its columns, cheaply, on the cursor's thread.</summary>
    public abstract Func<object> CreateTargetFetcher(DataViewRowCursor cursor, string what);

    /// <summary>
    /// The target tensor of a fetched target, for the image read from the same row: int64 [] (a class) or [S, S] (a class
    /// per pixel, at the model's input size). Runs on any thread; errors name the column and the row.
    /// </summary>
    public abstract Tensor ToTarget(object fetched, long row, ImageRead image, ImagePreprocessor preprocessor, string what);

    /// <summary>The classes a fetched target holds (a target-only pass, before training: class count, checks, stratification).</summary>
    protected abstract IReadOnlyCollection<long> ClassesOf(object fetched, long row, string what);

    /// <summary>Checks the classes of the training data as a whole (e.g. more than one) and learns what it needs from them.</summary>
    protected virtual void CheckTrainingClasses(IReadOnlySet<long> present) { }

    /// <summary>
    /// The network one run trains: <paramref name="backbone"/> (a fresh copy of the source's weights, the random
    /// generator already seeded) with this task's head.
    /// </summary>
    public abstract nn.Module<Tensor, Tensor> CreateNetwork(Backbone backbone);

    /// <summary>
    /// Reads every target once, without the images: the rows, a class per row (its smallest, for stratified
    /// hold-outs), and for training data the checks on the classes as a whole. Errors name the column and the row.
    /// </summary>
    public IReadOnlyDictionary<long, long> ScanTargets(IDataView data, string what, bool training)
    {
        ImageColumn.Check(Host, data.Schema, ImageColumnName);
        var classOfRow = new Dictionary<long, long>();
        var present = new HashSet<long>();
        var textColumns = data.Schema.Where(c => c.Type is TextDataViewType);
        using var cursor = data.GetRowCursor([.. TargetColumns(data.Schema), .. textColumns]);
        var fetch = CreateTargetFetcher(cursor, what);
        while (cursor.MoveNext())
        {
            Host.CheckAlive();
            var classes = ClassesOf(fetch(), cursor.Position, what);
            classOfRow[cursor.Position] = classes.Count == 0 ? -1 : classes.Min();
            present.UnionWith(classes);
        }
        if (classOfRow.Count == 0) throw Host.Except($"The {what} has no rows.");
        if (training) CheckTrainingClasses(present);
        return classOfRow;
    }
}
