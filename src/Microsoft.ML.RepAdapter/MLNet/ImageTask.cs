using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Training;
using Microsoft.ML.Runtime;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.MLNet;

/// <summary>
/// What one task contributes to a training run, for <see cref="RepAdapterTrainerBase{TOptions, TTransformer}"/>: how
/// its targets are read from a row, the network it trains on top of the backbone, and its objective. Everything else
/// (backbone, adapters, recipe, scale search, merge) is the trainer base's.
/// </summary>
internal abstract class ImageTask(IHost host, string imageColumnName)
{
    protected IHost Host { get; } = host;

    protected string ImageColumnName { get; } = imageColumnName;

    /// <summary>The loss, accuracy and validation metric.</summary>
    public abstract ITrainingObjective Objective { get; }

    /// <summary>Classes the network predicts (known after the training data was read).</summary>
    public abstract int NumClasses { get; }

    /// <summary>Classes of the source backbone's own classifier: the task's classes if it uses it, else 0 (none).</summary>
    public abstract int BackboneClasses { get; }

    /// <summary>The columns a row's target is read from.</summary>
    protected abstract IEnumerable<DataViewSchema.Column> TargetColumns(DataViewSchema schema);

    /// <summary>
    /// Returns a reader of the current row's target for an image read from that row: int64 [] (a class) or [S, S] (a class
    /// per pixel, at the model's input size). Errors name the column and the row.
    /// </summary>
    protected abstract Func<ImageRead, Tensor> CreateTargetReader(DataViewRowCursor cursor, ImagePreprocessor preprocessor, string what);

    /// <summary>Checks the targets of the training data as a whole (e.g. more than one class).</summary>
    protected virtual void CheckTrainingTargets(Tensor targets) { }

    /// <summary>
    /// The network one run trains: <paramref name="backbone"/> (a fresh copy of the source's weights, the random
    /// generator already seeded) with this task's head.
    /// </summary>
    public abstract nn.Module<Tensor, Tensor> CreateNetwork(Backbone backbone);

    /// <summary>Decodes, resizes and reads the target of every row; errors name the column, the row and the value at fault.</summary>
    public LabeledImages Read(IDataView data, ImagePreprocessor preprocessor, string what, bool training)
    {
        ImageColumn.Check(Host, data.Schema, ImageColumnName);
        var pixels = new List<Tensor>();
        var targets = new List<Tensor>();
        try
        {
            // Text columns too (cheap): an image that cannot be loaded is then reported with its path.
            var textColumns = data.Schema.Where(c => c.Type is TextDataViewType);
            using var cursor = data.GetRowCursor([data.Schema[ImageColumnName], .. TargetColumns(data.Schema), .. textColumns]);
            var readImage = ImageColumn.CreateReader(cursor, ImageColumnName, preprocessor);
            var readTarget = CreateTargetReader(cursor, preprocessor, what);
            while (cursor.MoveNext())
            {
                Host.CheckAlive();
                var image = readImage();
                pixels.Add(image.Pixels);
                targets.Add(readTarget(image));
            }
            if (pixels.Count == 0) throw Host.Except($"The {what} has no rows.");
            var stacked = stack(targets);
            if (training) CheckTrainingTargets(stacked);
            return new LabeledImages(stack(pixels), stacked);
        }
        finally
        {
            foreach (var tensor in pixels.Concat(targets)) tensor.Dispose();
        }
    }
}
