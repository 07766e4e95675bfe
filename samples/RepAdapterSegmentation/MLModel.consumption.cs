// Model Builder style consumption code: load MLModel.zip once and segment one image.
using Microsoft.ML;
using Microsoft.ML.Data;

namespace RepAdapterSegmentation;

public partial class MLModel
{
    /// <summary>Model input: the image's path.</summary>
    public class ModelInput
    {
        [ColumnName("ImagePath")]
        public string ImagePath { get; set; } = "";
    }

    /// <summary>Model output: a class index per pixel (row-major, the image's own size).</summary>
    public class ModelOutput
    {
        [ColumnName("PredictedMask")]
        public uint[] PredictedMask { get; set; } = [];
    }

    public static string MLNetModelPath { get; set; } = Path.GetFullPath("MLModel.zip");

    private static readonly Lazy<PredictionEngine<ModelInput, ModelOutput>> PredictEngine = new(CreatePredictEngine, isThreadSafe: true);

    /// <summary>Segments one image.</summary>
    public static ModelOutput Predict(ModelInput input) => PredictEngine.Value.Predict(input);

    private static PredictionEngine<ModelInput, ModelOutput> CreatePredictEngine()
    {
        var mlContext = new MLContext();
        ITransformer model = mlContext.Model.Load(MLNetModelPath, out _);
        return mlContext.Model.CreatePredictionEngine<ModelInput, ModelOutput>(model);
    }
}
