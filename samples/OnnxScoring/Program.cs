// Scores images with a .zip saved from Microsoft.ML.RepAdapter's ToOnnxPipeline: LoadImages, ResizeImages, ExtractPixels,
// ApplyOnnxModel (the ONNX bytes are inside the .zip) and ML.NET's multiclass scorer. Needs ML.NET and ONNX Runtime only.
//   OnnxScoring <model.zip> <predictions.tsv> <image file or folder>...
// Writes one line per image: path, predicted label, its probability (tab-separated, invariant culture).
using System.Globalization;
using Microsoft.ML;
using Microsoft.ML.Data;

if (args.Length < 3)
{
    Console.Error.WriteLine("usage: OnnxScoring <model.zip> <predictions.tsv> <image file or folder>...");
    return 2;
}
string modelPath = args[0], outputPath = args[1];
if (!File.Exists(modelPath))
{
    Console.Error.WriteLine($"No model file '{modelPath}'.");
    return 2;
}
string[] extensions = [".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"];
var images = new List<string>();
foreach (var item in args[2..])
{
    if (Directory.Exists(item))
        images.AddRange(Directory.EnumerateFiles(item, "*", SearchOption.AllDirectories)
            .Where(f => extensions.Contains(Path.GetExtension(f).ToLowerInvariant())).Order(StringComparer.Ordinal));
    else if (File.Exists(item))
        images.Add(item);
    else
    {
        Console.Error.WriteLine($"No image file or folder '{item}'.");
        return 2;
    }
}
if (images.Count == 0)
{
    Console.Error.WriteLine("No images found.");
    return 2;
}

var mlContext = new MLContext();
var model = mlContext.Model.Load(modelPath, out var inputSchema);
// The saved chain starts with LoadImages on a text column of paths: feed the paths under that column's name.
var pathColumns = inputSchema.Where(c => c.Type is TextDataViewType).ToList();
if (pathColumns.Count != 1)
{
    Console.Error.WriteLine($"The model's input should be one text column of image paths; it has: {string.Join(", ", inputSchema.Select(c => $"{c.Name} ({c.Type})"))}.");
    return 2;
}
var definition = SchemaDefinition.Create(typeof(ImageInput));
definition[0].ColumnName = pathColumns[0].Name;
var scored = model.Transform(mlContext.Data.LoadFromEnumerable(images.Select(p => new ImageInput { ImagePath = p }), definition));

// PredictedLabel is a key over the labels as ToOnnxPipeline leaves it, or the label text after a MapKeyToValue.
var predicted = scored.Schema.GetColumnOrNull("PredictedLabel");
string[] labels;
if (predicted?.Type is KeyDataViewType)
{
    var names = default(VBuffer<ReadOnlyMemory<char>>);
    bool named = predicted.Value.Annotations.Schema.GetColumnOrNull("KeyValues")?.Type is VectorDataViewType { ItemType: TextDataViewType };
    if (named) predicted.Value.GetKeyValues(ref names);
    var keyNames = names.DenseValues().Select(v => v.ToString()).ToArray();
    // Key 0 means no prediction (a NaN score); keys 1..K are the labels in training order.
    labels = [.. scored.GetColumn<uint>("PredictedLabel").Select(k => k == 0 ? "" : named ? keyNames[k - 1] : k.ToString(CultureInfo.InvariantCulture))];
}
else if (predicted?.Type is TextDataViewType)
    labels = [.. scored.GetColumn<string>("PredictedLabel")];
else
{
    Console.Error.WriteLine($"The model has no PredictedLabel column of a key or text type (a classification model from ToOnnxPipeline); its columns: {string.Join(", ", scored.Schema.Select(c => $"{c.Name} ({c.Type})"))}.");
    return 2;
}
var scores = scored.GetColumn<float[]>("Score").ToArray();

using (var writer = new StreamWriter(outputPath))
{
    for (int row = 0; row < images.Count; row++)
    {
        // The predicted label is the most probable one: its probability is the largest score.
        float probability = labels[row].Length == 0 ? float.NaN : scores[row].Max();
        writer.WriteLine(string.Join('\t', images[row], labels[row], probability.ToString("R", CultureInfo.InvariantCulture)));
    }
}
Console.WriteLine($"{images.Count} predictions written to {outputPath}");
return 0;

internal sealed class ImageInput
{
    public string ImagePath { get; set; } = "";
}
