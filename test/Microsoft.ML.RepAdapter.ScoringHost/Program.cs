// Usage: ScoringHost <model.zip> <image-list.txt> <scores.json>
// Loads the model in this fresh process, scores every image path of the list with a PredictionEngine (row by row)
// and with one batch Transform, and writes both score matrices as JSON.
using System.Text.Json;
using Microsoft.ML;
using Microsoft.ML.Data;

if (args.Length != 3)
{
    Console.Error.WriteLine("usage: ScoringHost <model.zip> <image-list.txt> <scores.json>");
    return 2;
}

var mlContext = new MLContext(seed: 0);
var model = mlContext.Model.Load(args[0], out _);
var inputs = File.ReadAllLines(args[1]).Where(line => line.Length > 0).Select(path => new ImageInput { ImagePath = path }).ToList();

using var engine = mlContext.Model.CreatePredictionEngine<ImageInput, ScoreOutput>(model);
var engineScores = inputs.Select(input => engine.Predict(input).Score).ToList();

var scored = model.Transform(mlContext.Data.LoadFromEnumerable(inputs));
var batchScores = scored.GetColumn<float[]>("Score").ToList();

File.WriteAllText(args[2], JsonSerializer.Serialize(new { engine = engineScores, batch = batchScores }));
Console.WriteLine($"scored {inputs.Count} images");
return 0;

internal sealed class ImageInput
{
    public string ImagePath { get; set; } = "";
}

internal sealed class ScoreOutput
{
    public float[] Score { get; set; } = [];
}
