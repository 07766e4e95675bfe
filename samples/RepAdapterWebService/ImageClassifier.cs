using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.MLNet;
using Microsoft.ML.Transforms.Image;
using Microsoft.ML.Transforms.Onnx;

namespace RepAdapterWebService;

/// <summary>A prediction: the most probable label (null when the scores are not numbers) and every label's probability.</summary>
public sealed record Prediction(string? Label, IReadOnlyDictionary<string, float> Scores);

/// <summary>
/// A saved classification model (.zip) loaded once and scored by pooled PredictionEngines. Either kind of model loads with
/// <c>mlContext.Model.Load</c>; what differs is the input. A pipeline that reads encoded bytes (Model Builder's
/// <c>byte[] ImageSource</c>) gets the body as it is, and the RepAdapter transformer checks it. A pipeline that starts with
/// LoadImages on a path column (the ONNX chain always does) would need a file per request: the service decodes the body
/// itself (<see cref="ImageDecoding"/>) and scores the rest of the chain on the decoded image.
/// </summary>
public sealed class ImageClassifier : IDisposable
{
    private readonly IReadOnlyList<ITransformer> _parts;
    private readonly IDisposable _engines;
    private readonly Func<byte[], float[]> _score;

    private ImageClassifier(ModelKind kind, string input, IReadOnlyList<string> labels, IReadOnlyList<ITransformer> parts, IDisposable engines, Func<byte[], float[]> score)
    {
        Kind = kind;
        Input = input;
        Labels = labels;
        _parts = parts;
        _engines = engines;
        _score = score;
    }

    /// <summary>Torch or Onnx, as found in the file.</summary>
    public ModelKind Kind { get; }

    /// <summary>What the model is fed, in words (for /health and the log).</summary>
    public string Input { get; }

    /// <summary>The labels, in the order of the model's scores.</summary>
    public IReadOnlyList<string> Labels { get; }

    /// <summary>
    /// Loads <paramref name="path"/>. A file that is not a classification model of <paramref name="expected"/> kind, or whose
    /// input the service cannot feed, is an <see cref="InvalidDataException"/> saying what it holds.
    /// </summary>
    /// <param name="engines">PredictionEngines to keep: the most requests scored at once.</param>
    public static ImageClassifier Load(string path, ModelKind expected, int engines)
    {
        var mlContext = new MLContext();
        var model = mlContext.Model.Load(path, out var inputSchema);
        var parts = Flatten(model).ToList();
        try
        {
            var kind = KindOf(parts, path);
            if (expected != ModelKind.Auto && expected != kind)
                throw new InvalidDataException($"'{path}' holds a {kind} model, not the {expected} model asked for (--kind).");
            var loader = parts.OfType<ImageLoadingTransformer>().FirstOrDefault();
            return loader is null ? ForEncodedBytes(mlContext, model, inputSchema, kind, parts, engines, path)
                : ForDecodedImages(mlContext, inputSchema, parts, loader, kind, engines, path);
        }
        catch
        {
            DisposeAll(parts);
            throw;
        }
    }

    /// <summary>Scores one encoded image; an <see cref="InvalidDataException"/> says why a body is not one.</summary>
    public Prediction Predict(byte[] image)
    {
        var scores = _score(image);
        if (scores.Length != Labels.Count) throw new InvalidOperationException($"The model gave {scores.Length} scores for {Labels.Count} labels.");
        int best = 0;
        for (int k = 0; k < scores.Length; k++)
        {
            // A NaN score claims no class, as the RepAdapter transformer's PredictedLabel (a missing key).
            if (float.IsNaN(scores[k])) return new Prediction(null, ByLabel(scores));
            if (scores[k] > scores[best]) best = k;
        }
        return new Prediction(Labels[best], ByLabel(scores));
    }

    public void Dispose()
    {
        _engines.Dispose();
        DisposeAll(_parts);
    }

    private IReadOnlyDictionary<string, float> ByLabel(float[] scores)
    {
        var byLabel = new Dictionary<string, float>(scores.Length);
        for (int k = 0; k < scores.Length; k++) byLabel[Labels[k]] = scores[k];
        return byLabel;
    }

    private static ImageClassifier ForEncodedBytes(MLContext mlContext, ITransformer model, DataViewSchema inputSchema, ModelKind kind,
        IReadOnlyList<ITransformer> parts, int engines, string path)
    {
        var bytes = inputSchema.Where(c => c.Type is VectorDataViewType { ItemType: var item } && item == NumberDataViewType.Byte).ToList();
        var others = inputSchema.Where(c => !bytes.Contains(c)).ToList();
        if (bytes.Count != 1 || others.Count > 1 || others.Any(c => c.Type is not TextDataViewType))
            throw new InvalidDataException($"'{path}' has no LoadImages, so its input should be one column of encoded image bytes (Vector<Byte>) " +
                $"and at most one text column (the label); it has: {Describe(inputSchema)}.");
        var definition = SchemaDefinition.Create(typeof(EncodedImageRow));
        Rename(definition, nameof(EncodedImageRow.Image), bytes[0].Name);
        if (others.Count == 1) Rename(definition, nameof(EncodedImageRow.Label), others[0].Name);
        else definition.RemoveAll(c => c.MemberName == nameof(EncodedImageRow.Label));
        var labels = LabelsOf(mlContext, model, definition, Array.Empty<EncodedImageRow>(), path);
        var pool = new EnginePool<EncodedImageRow>(mlContext, model, definition, engines);
        return new ImageClassifier(kind, $"encoded image bytes in column '{bytes[0].Name}'", labels, parts, pool,
            image => pool.Score(new EncodedImageRow { Image = image }));
    }

    private static ImageClassifier ForDecodedImages(MLContext mlContext, DataViewSchema inputSchema, IReadOnlyList<ITransformer> parts,
        ImageLoadingTransformer loader, ModelKind kind, int engines, string path)
    {
        // The column LoadImages writes: the image column of its output that its input did not have.
        var before = new TransformerChain<ITransformer>([.. parts.TakeWhile(p => p != loader)]);
        var loaderInput = before.GetOutputSchema(inputSchema);
        var loaded = loader.GetOutputSchema(loaderInput)
            .Where(c => !c.IsHidden && c.Type is ImageDataViewType && loaderInput.GetColumnOrNull(c.Name)?.Type is not ImageDataViewType).ToList();
        if (loaded.Count != 1)
            throw new InvalidDataException($"'{path}' loads {loaded.Count} image columns; the service feeds one image per request.");
        string column = loaded[0].Name;
        // What comes before LoadImages prepares columns scoring does not read (MapValueToKey of the label): left out.
        var scoring = new TransformerChain<ITransformer>([.. parts.SkipWhile(p => p != loader).Skip(1)]);
        var definition = DecodedImageRow.Definition(column);
        var labels = LabelsOf(mlContext, scoring, definition, Array.Empty<DecodedImageRow>(), path);
        var pool = new EnginePool<DecodedImageRow>(mlContext, scoring, definition, engines);
        return new ImageClassifier(kind, $"decoded images in column '{column}' (the body decoded as LoadImages would)", labels, parts, pool, image =>
        {
            using var decoded = ImageDecoding.Decode(image);
            return pool.Score(new DecodedImageRow { Image = decoded });
        });
    }

    /// <summary>The slot names of the model's Score column: its labels, in score order.</summary>
    private static string[] LabelsOf<TInput>(MLContext mlContext, ITransformer model, SchemaDefinition definition, TInput[] noRows, string path)
        where TInput : class
    {
        var output = model.GetOutputSchema(mlContext.Data.LoadFromEnumerable(noRows, definition).Schema);
        var score = output.GetColumnOrNull(ScoreRow.Column);
        if (score?.Type is not VectorDataViewType { ItemType: var item, Size: > 0 } || item != NumberDataViewType.Single
            || !score.Value.HasSlotNames())
            throw new InvalidDataException($"'{path}' has no '{ScoreRow.Column}' column of class probabilities with the labels as slot names " +
                $"(a classification model); its output: {Describe(output)}.");
        var names = default(VBuffer<ReadOnlyMemory<char>>);
        score.Value.GetSlotNames(ref names);
        return [.. names.DenseValues().Select(n => n.ToString())];
    }

    private static ModelKind KindOf(IReadOnlyList<ITransformer> parts, string path)
    {
        if (parts.Any(p => p is RepAdapterTransformerBase)) return ModelKind.Torch;
        if (parts.Any(p => p is OnnxTransformer)) return ModelKind.Onnx;
        throw new InvalidDataException($"'{path}' has neither a RepAdapter transformer nor an ONNX model; it holds: {string.Join(", ", parts.Select(p => p.GetType().Name))}.");
    }

    /// <summary>Nested chains (Append of a chain) as one sequence of transformers, in the order they run.</summary>
    private static IEnumerable<ITransformer> Flatten(ITransformer model) =>
        model is IEnumerable<ITransformer> chain ? chain.SelectMany(Flatten) : [model];

    private static void Rename(SchemaDefinition definition, string member, string column) =>
        definition.Single(c => c.MemberName == member).ColumnName = column;

    private static string Describe(DataViewSchema schema) => string.Join(", ", schema.Select(c => $"{c.Name} ({c.Type})"));

    // The torch transformer holds the network's native memory, the ONNX transformer its session.
    private static void DisposeAll(IEnumerable<ITransformer> parts)
    {
        foreach (var part in parts.OfType<IDisposable>()) part.Dispose();
    }
}
