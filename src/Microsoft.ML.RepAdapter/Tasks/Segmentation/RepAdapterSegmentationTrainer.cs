using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.MLNet;
using Microsoft.ML.RepAdapter.Training;
using Microsoft.ML.Runtime;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Segmentation;

/// <summary>
/// Fine-tunes a pretrained vision backbone for semantic segmentation with RepAdapter: a decode head on the backbone's
/// multi-level features, adapters in the backbone, merged after training so that the returned transformer runs the
/// plain backbone and head. Input: an image column and a mask column (both MLImage from LoadImages or encoded bytes;
/// a mask holds a class index per pixel as a grayscale value, <see cref="Options.IgnoreIndex"/> where unlabelled, and
/// has its image's size). Output: the predicted mask at each image's own resolution.
/// </summary>
public sealed class RepAdapterSegmentationTrainer : RepAdapterTrainerBase<RepAdapterSegmentationTrainer.Options, RepAdapterSegmentationTransformer>
{
    /// <summary>Options of <see cref="RepAdapterSegmentationTrainer"/>.</summary>
    public sealed class Options : RepAdapterTrainerOptions
    {
        /// <summary>Creates options with the paper's segmentation setting: adapters, head and the backbone's biases train.</summary>
        public Options() => Trainable = TrainableParameters.AdaptersHeadAndBiases;

        /// <summary>The mask column: an image holding a class index per pixel as its gray value.</summary>
        public string MaskColumnName = "Mask";

        /// <summary>The output column: a vector of class indices, one per pixel of the input image, row-major.</summary>
        public string PredictedMaskColumnName = "PredictedMask";

        /// <summary>When set, an output image column showing the predicted mask in colour (one colour per class).</summary>
        public string? ColorizedMaskColumnName;

        /// <summary>When set, an output column of per-pixel class probabilities at the input resolution ([K, H, W], row-major).</summary>
        public string? ScoresColumnName;

        /// <summary>Class names in class-index order; their count is the number of classes.</summary>
        public string[]? ClassNames;

        /// <summary>Number of classes when <see cref="ClassNames"/> is not given; null: the largest index in the training masks + 1.</summary>
        public int? NumberOfClasses;

        /// <summary>The mask value of unlabelled pixels, left out of the loss and the metrics.</summary>
        public int IgnoreIndex = 255;

        /// <summary>The decode head.</summary>
        public SegmentationHeadKind Head = SegmentationHeadKind.MultiLevel;

        /// <summary>Width of the decode head's hidden layers.</summary>
        public int HeadChannels = 128;

        /// <summary>
        /// The CPU recipe: 24 epochs at s = 1 learned the shapes of a held-out segmentation task where 8 epochs at s = 0.1
        /// learned only the background (issue 18); the search tries a larger scale and a smaller learning rate.
        /// </summary>
        internal override (TrainingRecipe Recipe, RecipeSearchSpace Space) Preset(RecipePreset preset) => preset switch
        {
            RecipePreset.Paper => (new TrainingRecipe(null, TrainingRecipe.AllBlocks, 1f, 1e-3, 100, 16, 10), RecipeSearchSpace.None),
            _ => (new TrainingRecipe(112, TrainingRecipe.AllBlocks, 1f, 1e-2, 24, 8, 0), new RecipeSearchSpace([10f], [3e-3], [])),
        };

        internal override void Validate()
        {
            base.Validate();
            OptionCheck.That(!string.IsNullOrEmpty(MaskColumnName), nameof(MaskColumnName), MaskColumnName, "must name a column");
            OptionCheck.That(!string.IsNullOrEmpty(PredictedMaskColumnName), nameof(PredictedMaskColumnName), PredictedMaskColumnName, "must name a column");
            OptionCheck.That(IgnoreIndex is >= 0 and <= 255, nameof(IgnoreIndex), IgnoreIndex, "must be a mask value, 0..255");
            int? classes = ClassNames?.Length ?? NumberOfClasses;
            OptionCheck.That(classes is null || classes >= 2 && classes <= IgnoreIndex,
                ClassNames is null ? nameof(NumberOfClasses) : nameof(ClassNames), classes, $"must be at least 2, and class indices must stay below the ignore value {IgnoreIndex}");
            OptionCheck.That(HeadChannels > 0, nameof(HeadChannels), HeadChannels, "must be positive");
        }
    }

    internal RepAdapterSegmentationTrainer(IHostEnvironment env, Options options)
        : base(env, options, nameof(RepAdapterSegmentationTrainer))
    {
    }

    private protected override string TrainerName => "RepAdapter segmenter";

    /// <inheritdoc/>
    public override SchemaShape GetOutputSchema(SchemaShape inputSchema)
    {
        CheckInputSchema(inputSchema);
        var columns = inputSchema.ToDictionary(c => c.Name);
        foreach (var (name, itemType, kind) in RepAdapterSegmentationTransformer.OutputKinds(TrainerOptions.PredictedMaskColumnName,
                     TrainerOptions.ColorizedMaskColumnName, TrainerOptions.ScoresColumnName))
            columns[name] = new SchemaShape.Column(name, kind, itemType, false);
        return new SchemaShape(columns.Values);
    }

    private protected override void CheckInputSchema(SchemaShape schema)
    {
        ImageColumn.Check(Host, schema, TrainerOptions.ImageColumnName);
        ImageColumn.Check(Host, schema, TrainerOptions.MaskColumnName);
    }

    private protected override ImageTask CreateTask(IDataView trainingData) => new SegmentationTask(Host, TrainerOptions);

    private protected override RepAdapterSegmentationTransformer CreateTransformer(ImageTask task, nn.Module<Tensor, Tensor> network,
        ImageInputSpec input, TrainingSummary summary, Device device)
    {
        var segmentation = (SegmentationTask)task;
        return new RepAdapterSegmentationTransformer(Host, (SegmentationNetwork)network, input, segmentation.ClassNames, segmentation.IgnoreIndex,
            summary, TrainerOptions.ImageColumnName, TrainerOptions.PredictedMaskColumnName, TrainerOptions.ColorizedMaskColumnName,
            TrainerOptions.ScoresColumnName, TrainerOptions.ScoringBatchSize, device);
    }
}
