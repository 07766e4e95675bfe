// Model Builder style consumption code: load MLModel.zip once, predict one image, or all labels with their scores.
using Microsoft.ML;
using Microsoft.ML.Data;

namespace RepAdapterImageClassification;

public partial class MLModel
{
    /// <summary>Model input: the encoded image (as Model Builder's ImageSource) and its label.</summary>
    public class ModelInput
    {
        [LoadColumn(0)]
        [ColumnName("Label")]
        public string Label { get; set; } = "";

        [LoadColumn(1)]
        [ColumnName("ImageSource")]
        public byte[] ImageSource { get; set; } = [];
    }

    /// <summary>Model output: the predicted label and one probability per class.</summary>
    public class ModelOutput
    {
        [ColumnName("PredictedLabel")]
        public string PredictedLabel { get; set; } = "";

        [ColumnName("Score")]
        public float[] Score { get; set; } = [];
    }

    public static string MLNetModelPath { get; set; } = Path.GetFullPath("MLModel.zip");

    private static readonly Lazy<PredictionEngine<ModelInput, ModelOutput>> PredictEngine = new(CreatePredictEngine, isThreadSafe: true);

    /// <summary>Predicts the label of one image.</summary>
    public static ModelOutput Predict(ModelInput input) => PredictEngine.Value.Predict(input);

    /// <summary>Every label with its probability, most probable first.</summary>
    public static IOrderedEnumerable<KeyValuePair<string, float>> PredictAllLabels(ModelInput input)
    {
        var engine = PredictEngine.Value;
        var result = engine.Predict(input);
        return GetSortedScoresWithLabels(engine.OutputSchema, result.Score);
    }

    public static IOrderedEnumerable<KeyValuePair<string, float>> GetSortedScoresWithLabels(DataViewSchema schema, float[] scores)
    {
        var labels = default(VBuffer<ReadOnlyMemory<char>>);
        schema["Score"].GetSlotNames(ref labels);
        return labels.DenseValues().Select(l => l.ToString()).Zip(scores, (label, score) => new KeyValuePair<string, float>(label, score))
            .OrderByDescending(kv => kv.Value);
    }

    private static PredictionEngine<ModelInput, ModelOutput> CreatePredictEngine()
    {
        var mlContext = new MLContext();
        ITransformer model = mlContext.Model.Load(MLNetModelPath, out _);
        return mlContext.Model.CreatePredictionEngine<ModelInput, ModelOutput>(model);
    }
}
