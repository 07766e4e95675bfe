using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.MLNet;
using Microsoft.ML.Runtime;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Classification;

/// <summary>
/// Fine-tunes a pretrained vision backbone for image classification with RepAdapter (or a baseline policy), then
/// merges the adapters so that the returned transformer runs the plain backbone at no extra cost.
/// Input: an image column (MLImage from LoadImages, or encoded bytes from LoadRawImageBytes) and a key label column
/// (MapValueToKey). Output: Score (class probabilities) and PredictedLabel (key).
/// </summary>
public sealed class RepAdapterImageClassificationTrainer
    : RepAdapterTrainerBase<RepAdapterImageClassificationTrainer.Options, RepAdapterImageClassificationTransformer>
{
    /// <summary>
    /// Options of <see cref="RepAdapterImageClassificationTrainer"/>. Unset levers come from <see cref="RepAdapterTrainerOptions.Recipe"/>:
    /// for a CPU by default, the paper's VTAB-1k recipe with <see cref="RecipePreset.Paper"/>.
    /// </summary>
    public sealed class Options : RepAdapterTrainerOptions
    {
        /// <summary>The label column: a key (MapValueToKey).</summary>
        public string LabelColumnName = DefaultColumnNames.Label;

        /// <summary>The output column of class probabilities (slot names: the label values).</summary>
        public string ScoreColumnName = DefaultColumnNames.Score;

        /// <summary>The output column of the predicted key.</summary>
        public string PredictedLabelColumnName = DefaultColumnNames.PredictedLabel;

        /// <summary>
        /// The CPU recipe comes from docs/benchmarks/recipe-exploration.md (ML.NET's ResNet-18, Fashion-MNIST-1k) and held on
        /// the held-out tasks of docs/benchmarks/accuracy.md; its search tries the neighbours of each lever one at a time.
        /// </summary>
        internal override (TrainingRecipe Recipe, RecipeSearchSpace Space) Preset(RecipePreset preset) => preset switch
        {
            RecipePreset.Paper => (new TrainingRecipe(null, TrainingRecipe.AllBlocks, 1f, 1e-3, 100, 64, 10), RecipeSearchSpace.None),
            _ => (new TrainingRecipe(112, 3, 10f, 3e-3, 12, 16, 0), new RecipeSearchSpace([1f], [1e-3, 1e-2], [5])),
        };

        internal override void Validate()
        {
            base.Validate();
            foreach (var (name, value) in new[] { (nameof(LabelColumnName), LabelColumnName), (nameof(ScoreColumnName), ScoreColumnName),
                         (nameof(PredictedLabelColumnName), PredictedLabelColumnName) })
                Training.OptionCheck.That(!string.IsNullOrEmpty(value), name, value, "must name a column");
        }
    }

    internal RepAdapterImageClassificationTrainer(IHostEnvironment env, Options options)
        : base(env, options, nameof(RepAdapterImageClassificationTrainer))
    {
    }

    private protected override string TrainerName => "RepAdapter image classifier";

    /// <inheritdoc/>
    public override SchemaShape GetOutputSchema(SchemaShape inputSchema)
    {
        CheckInputSchema(inputSchema);
        var columns = inputSchema.ToDictionary(c => c.Name);
        inputSchema.TryFindColumn(TrainerOptions.LabelColumnName, out var label);
        columns[TrainerOptions.ScoreColumnName] = new SchemaShape.Column(TrainerOptions.ScoreColumnName, SchemaShape.Column.VectorKind.Vector,
            NumberDataViewType.Single, false, new SchemaShape(AnnotationUtils.AnnotationsForMulticlassScoreColumn(label)));
        columns[TrainerOptions.PredictedLabelColumnName] = new SchemaShape.Column(TrainerOptions.PredictedLabelColumnName, SchemaShape.Column.VectorKind.Scalar,
            NumberDataViewType.UInt32, true, label.Annotations);
        return new SchemaShape(columns.Values);
    }

    private protected override void CheckInputSchema(SchemaShape schema)
    {
        if (!schema.TryFindColumn(TrainerOptions.LabelColumnName, out var label))
            throw Host.ExceptSchemaMismatch(nameof(schema), "label", TrainerOptions.LabelColumnName);
        if (!label.IsKey || label.Kind != SchemaShape.Column.VectorKind.Scalar || label.ItemType.RawType != typeof(uint))
            throw Host.ExceptSchemaMismatch(nameof(schema), "label", TrainerOptions.LabelColumnName,
                "a key (map it with mlContext.Transforms.Conversion.MapValueToKey)", label.GetTypeString());
        ImageColumn.Check(Host, schema, TrainerOptions.ImageColumnName);
    }

    private protected override ImageTask CreateTask(IDataView trainingData) =>
        new ClassificationTask(Host, TrainerOptions.ImageColumnName, TrainerOptions.LabelColumnName, LabelKeyValues.FromColumn(trainingData.Schema[TrainerOptions.LabelColumnName]));

    private protected override RepAdapterImageClassificationTransformer CreateTransformer(ImageTask task, nn.Module<Tensor, Tensor> network,
        ImageInputSpec input, TrainingSummary summary, Device device) =>
        new(Host, (Backbone)network, ((ClassificationTask)task).Labels, summary, TrainerOptions.ImageColumnName,
            TrainerOptions.ScoreColumnName, TrainerOptions.PredictedLabelColumnName, TrainerOptions.ScoringBatchSize, device);
}
