// What a user of the NuGet package writes: the README's first snippet (between the markers, kept identical to the README
// by a test), then the rest of the path: load the saved model in a new MLContext and predict.
//
//   dotnet run --project samples/PackageConsumer -- samples/data/fashion-mnist/train
//
// (after `dotnet pack`, see PackageConsumer.csproj). Exits 1 when the reloaded model does not score as the trained one.
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter;

string imageFolder = args.Length > 0 ? args[0] : Path.Combine("samples", "data", "fashion-mnist", "train");

// README snippet: begin
var mlContext = new MLContext(seed: 1);
var rows = Directory.GetFiles(imageFolder, "*", SearchOption.AllDirectories)     // one sub-folder of images per label
    .Select(path => new ImageData { ImagePath = path, Label = Path.GetFileName(Path.GetDirectoryName(path))! });
var data = mlContext.Data.LoadFromEnumerable(rows);
var split = mlContext.Data.TrainTestSplit(data, testFraction: 0.25, seed: 1);

var pipeline = mlContext.Transforms.Conversion.MapValueToKey("Label")
    .Append(mlContext.Transforms.LoadImages("Image", imageFolder: "", inputColumnName: "ImagePath"))
    .Append(mlContext.MulticlassClassification.Trainers.RepAdapter())   // ML.NET's ResNet-18, offline, CPU recipe
    .Append(mlContext.Transforms.Conversion.MapKeyToValue("PredictedLabel"));
var model = pipeline.Fit(split.TrainSet);                 // adapters trained, then merged into the backbone
var metrics = mlContext.MulticlassClassification.Evaluate(model.Transform(split.TestSet));
Console.WriteLine($"Test accuracy: {metrics.MicroAccuracy:P1}");
mlContext.Model.Save(model, data.Schema, "MLModel.zip");
// README snippet: end

// A new context, as another application would: load, predict, and compare with the model that was trained.
var appContext = new MLContext();
var loaded = appContext.Model.Load("MLModel.zip", out _);
using var engine = appContext.Model.CreatePredictionEngine<ImageData, Prediction>(loaded);
var expected = model.Transform(split.TestSet).GetColumn<float[]>("Score").ToList();
var testRows = appContext.Data.CreateEnumerable<ImageData>(split.TestSet, reuseRowObject: false).ToList();
float largest = 0;
for (int i = 0; i < testRows.Count; i++)
{
    var prediction = engine.Predict(new ImageData { ImagePath = testRows[i].ImagePath });
    largest = Math.Max(largest, prediction.Score.Zip(expected[i]).Max(p => Math.Abs(p.First - p.Second)));
    if (i < 3) Console.WriteLine($"{Path.GetFileName(testRows[i].ImagePath)} ({testRows[i].Label}): predicted {prediction.PredictedLabel}, {prediction.Score.Max():P0}");
}
Console.WriteLine($"Reloaded in a new MLContext: {testRows.Count} test images, largest score difference {largest:E1}");
return largest <= 1e-5f ? 0 : 1;

public sealed class ImageData
{
    public string ImagePath { get; set; } = "";
    public string Label { get; set; } = "";
}

public sealed class Prediction
{
    public string PredictedLabel { get; set; } = "";
    public float[] Score { get; set; } = [];
}
