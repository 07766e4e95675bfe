using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Classification;
using Microsoft.ML.RepAdapter.MLNet;
using Microsoft.ML.RepAdapter.Training;
using Microsoft.ML.Runtime;
using TorchSharp;
using static TorchSharp.torch;

[assembly: LoadableClass(typeof(RepAdapterImageClassificationTransformer), null, typeof(SignatureLoadModel),
    RepAdapterImageClassificationTransformer.UserName, RepAdapterImageClassificationTransformer.LoaderSignature)]
[assembly: LoadableClass(typeof(IRowMapper), typeof(RepAdapterImageClassificationTransformer), null, typeof(SignatureLoadRowMapper),
    RepAdapterImageClassificationTransformer.UserName, RepAdapterImageClassificationTransformer.LoaderSignature)]

namespace Microsoft.ML.RepAdapter.Classification;

/// <summary>What the training run that produced a model did; saved with the model.</summary>
public sealed record TrainingSummary(
    AdaptationMethod Method,
    AdapterPlacement Placement,
    TrainableParameters Trainable,
    float AdapterScale,
    long TrainableParameters,
    int AdaptersMerged,
    IReadOnlyDictionary<string, double>? ScaleSearchAccuracy = null);

/// <summary>
/// Scores images with a fine-tuned backbone whose adapters are already merged: the plain architecture, no adapter
/// modules, no extra latency. Outputs <c>Score</c> (softmax probabilities, one per class, slot names = label names)
/// and <c>PredictedLabel</c> (a key over the training labels). <c>mlContext.Model.Save</c> stores the merged weights
/// (one binary stream), the backbone description, preprocessing and label names.
/// </summary>
public sealed class RepAdapterImageClassificationTransformer : RowToRowTransformerBase, ITransformer, IDisposable
{
    internal const string LoaderSignature = "RepAdaptImgCls";
    internal const string UserName = "RepAdapter Image Classification";
    private const string WeightsStream = "TorchModel";
    private const string ChecksumStream = "TorchModel.sha256";
    private static readonly JsonSerializerOptions SummaryJson = new() { Converters = { new JsonStringEnumConverter() } };

    private readonly Backbone _model;
    private readonly ImagePreprocessor _preprocessor;
    private readonly Device _device;
    private readonly LabelKeyValues _labels;
    private bool _disposed;

    internal RepAdapterImageClassificationTransformer(IHostEnvironment env, Backbone mergedModel, LabelKeyValues labels,
        TrainingSummary summary, string imageColumnName, string scoreColumnName, string predictedLabelColumnName, int scoringBatchSize, Device device)
        : base(Contracts.CheckRef(env, nameof(env)).Register(nameof(RepAdapterImageClassificationTransformer)))
    {
        Host.Check(mergedModel.NumClasses == labels.Count,
            $"The model has {mergedModel.NumClasses} outputs but {labels.Count} label values were given.");
        _model = mergedModel;
        _model.to(device);
        _model.eval();
        _device = device;
        _preprocessor = new ImagePreprocessor(mergedModel.Input);
        _labels = labels;
        Summary = summary;
        ImageColumnName = imageColumnName;
        ScoreColumnName = scoreColumnName;
        PredictedLabelColumnName = predictedLabelColumnName;
        Host.CheckParam(scoringBatchSize > 0, nameof(scoringBatchSize), "must be positive");
        ScoringBatchSize = scoringBatchSize;
    }

    /// <summary>The merged network (plain backbone + head). Shared, not copied: do not dispose it separately.</summary>
    public Backbone Model => _model;

    public int NumberOfClasses => _labels.Count;

    /// <summary>Label values as text, in key order (key k is <c>LabelNames[k - 1]</c>).</summary>
    public IReadOnlyList<string> LabelNames => _labels.Names;

    public TrainingSummary Summary { get; }

    /// <summary>The adapter scale s the model was trained (and merged) with.</summary>
    public float AdapterScale => Summary.AdapterScale;

    /// <summary>Parameters that the training run updated (adapters + head by default).</summary>
    public long TrainableParameterCount => Summary.TrainableParameters;

    public string ImageColumnName { get; }
    public string ScoreColumnName { get; }
    public string PredictedLabelColumnName { get; }

    /// <summary>Rows scored together by <see cref="ITransformer.Transform"/>.</summary>
    public int ScoringBatchSize { get; }

    /// <summary>Number of forward passes run so far (lets tests see batching at work).</summary>
    internal int ForwardPasses => _forwardPasses;
    private int _forwardPasses;

    /// <summary>Class probabilities [N, K] for <paramref name="images"/>, in one forward pass.</summary>
    public float[][] Score(IReadOnlyList<MLImage> images)
    {
        if (images.Count == 0) return [];
        using var scope = NewDisposeScope();
        return Score(_preprocessor.ToPixels(images));
    }

    /// <summary>Class probabilities for uint8 input pixels [N, 3, S, S] (see <see cref="ImagePreprocessor"/>).</summary>
    internal float[][] Score(Tensor pixels)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        Interlocked.Increment(ref _forwardPasses);
        using var scope = NewDisposeScope();
        using var inference = inference_mode();
        var probabilities = _model.forward(_model.Input.Normalize(pixels.to(_device))).softmax(1).cpu();
        var flat = probabilities.data<float>().ToArray();
        int rows = (int)pixels.shape[0];
        return [.. Enumerable.Range(0, rows).Select(i => flat[(i * NumberOfClasses)..((i + 1) * NumberOfClasses)])];
    }

    internal ImagePreprocessor Preprocessor => _preprocessor;

    /// <summary>Scores in batches of <see cref="ScoringBatchSize"/> rather than row by row.</summary>
    public new IDataView Transform(IDataView input) => BatchScoringDataView.Create(Host, input, this);

    IDataView ITransformer.Transform(IDataView input) => Transform(input);

    public override IRowMapper MakeRowMapper(DataViewSchema schema) => new Mapper(this, schema);

    internal DataViewSchema.DetachedColumn[] OutputColumns(DataViewSchema inputSchema)
    {
        var names = LabelKeyValues.FromNames(_labels.Names);

        uint scoreSetId = checked(inputSchema.GetMaxAnnotationKind(out _, AnnotationUtils.Kinds.ScoreColumnSetId) + 1);
        var score = new DataViewSchema.Annotations.Builder();
        score.Add(AnnotationUtils.Kinds.SlotNames, names.Type, names.Getter());
        score.Add(AnnotationUtils.Kinds.TrainingLabelValues, _labels.Type, _labels.Getter());
        score.Add(AnnotationUtils.Kinds.ScoreColumnSetId, AnnotationUtils.ScoreColumnSetIdType, (ref uint id) => id = scoreSetId);
        score.Add(AnnotationUtils.Kinds.ScoreColumnKind, TextDataViewType.Instance,
            (ref ReadOnlyMemory<char> kind) => kind = AnnotationUtils.Const.ScoreColumnKind.MulticlassClassification.AsMemory());
        score.Add(AnnotationUtils.Kinds.ScoreValueKind, TextDataViewType.Instance,
            (ref ReadOnlyMemory<char> kind) => kind = AnnotationUtils.Const.ScoreValueKind.Score.AsMemory());
        var predicted = new DataViewSchema.Annotations.Builder();
        predicted.Add(AnnotationUtils.Kinds.KeyValues, _labels.Type, _labels.Getter());
        return
        [
            new(ScoreColumnName, new VectorDataViewType(NumberDataViewType.Single, NumberOfClasses), score.ToAnnotations()),
            new(PredictedLabelColumnName, new KeyDataViewType(typeof(uint), NumberOfClasses), predicted.ToAnnotations()),
        ];
    }

    /// <summary>1-based key of the most probable class; 0 (missing) when a score is NaN, which no class may claim.</summary>
    internal static uint PredictedKey(float[] probabilities)
    {
        int best = 0;
        for (int k = 0; k < probabilities.Length; k++)
        {
            if (float.IsNaN(probabilities[k])) return 0;
            if (probabilities[k] > probabilities[best]) best = k;
        }
        return (uint)best + 1;
    }

    // ML.NET plumbing below: its base members are internal in ML.NET and compiled here against publicized references
    // (build/Publicize.targets), so overrides must be declared public; they are not part of this library's API.
    // 0x00010002 adds the weights' SHA-256 in a stream of its own, which 0x00010001 readers ignore.
    private static VersionInfo GetVersionInfo() => new(
        modelSignature: "RPADPCLS",
        verWrittenCur: 0x00010002,
        verReadableCur: 0x00010001,
        verWeCanReadBack: 0x00010001,
        loaderSignature: LoaderSignature,
        loaderAssemblyName: typeof(RepAdapterImageClassificationTransformer).Assembly.FullName);

    public override void SaveModel(ModelSaveContext ctx)
    {
        Host.CheckValue(ctx, nameof(ctx));
        ctx.CheckAtModel();
        if (NonFinite.FirstIn(_model) is string bad)
            throw Host.Except($"The model has non-finite values (NaN or infinity) in '{bad}'; it is not saved.");
        ctx.SetVersionInfo(GetVersionInfo());
        // Format: image, score, predicted-label column names; scoring batch size; backbone descriptor (JSON);
        // training summary (JSON); label key values (ML.NET's binary codec); then the merged weights as one TorchSharp
        // stream, and that stream's SHA-256 in another.
        ctx.SaveNonEmptyString(ImageColumnName);
        ctx.SaveNonEmptyString(ScoreColumnName);
        ctx.SaveNonEmptyString(PredictedLabelColumnName);
        ctx.Writer.Write(ScoringBatchSize);
        ctx.Writer.Write(_model.Describe().ToJson());
        ctx.Writer.Write(JsonSerializer.Serialize(Summary, SummaryJson));
        _labels.Save(Host, ctx.Writer.BaseStream);
        byte[] checksum = [];
        ctx.SaveBinaryStream(WeightsStream, writer => checksum = WeightsChecksum.Write(writer.BaseStream, w => _model.save(w)));
        ctx.SaveBinaryStream(ChecksumStream, writer => writer.Write(checksum));
    }

    // Factory for SignatureLoadModel.
    private static RepAdapterImageClassificationTransformer Create(IHostEnvironment env, ModelLoadContext ctx)
    {
        Contracts.CheckValue(env, nameof(env));
        env.CheckValue(ctx, nameof(ctx));
        ctx.CheckAtModel(GetVersionInfo());
        string image = ctx.LoadNonEmptyString(), score = ctx.LoadNonEmptyString(), predicted = ctx.LoadNonEmptyString();
        int batchSize = ctx.Reader.ReadInt32();
        env.CheckDecode(batchSize > 0, "The scoring batch size must be positive.");
        var descriptor = BackboneDescriptor.FromJson(ctx.Reader.ReadString());
        var summary = JsonSerializer.Deserialize<TrainingSummary>(ctx.Reader.ReadString(), SummaryJson)
            ?? throw env.ExceptDecode("Missing training summary.");
        var labels = LabelKeyValues.Load(env, ctx.Reader.BaseStream);
        var model = descriptor.Build();
        try
        {
            byte[]? actual = null;
            if (!ctx.TryLoadBinaryStream(WeightsStream, reader => actual = WeightsChecksum.Read(reader.BaseStream, WeightsStream, model)))
                throw new InvalidDataException($"The model has no '{WeightsStream}' weights stream.");
            byte[]? expected = null;
            if (ctx.TryLoadBinaryStream(ChecksumStream, reader => expected = reader.ReadBytes(32)) && !expected.AsSpan().SequenceEqual(actual))
                throw new InvalidDataException($"The model's '{WeightsStream}' weights stream does not match its SHA-256 checksum: the file was damaged or altered.");
            NonFinite.ThrowIfAny(model, $"The model's '{WeightsStream}' weights stream");
            return new RepAdapterImageClassificationTransformer(env, model, labels, summary, image, score, predicted, batchSize, CPU);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    // Factory for SignatureLoadRowMapper.
    private static IRowMapper Create(IHostEnvironment env, ModelLoadContext ctx, DataViewSchema inputSchema) =>
        Create(env, ctx).MakeRowMapper(inputSchema);

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _model.Dispose();
    }

    /// <summary>Row-by-row scoring (PredictionEngine); the batch path is <see cref="BatchScoringDataView"/>.</summary>
    private sealed class Mapper : MapperBase
    {
        private readonly RepAdapterImageClassificationTransformer _transformer;
        private readonly int _imageColumnIndex;

        public Mapper(RepAdapterImageClassificationTransformer parent, DataViewSchema inputSchema)
            : base(parent.Host.Register(nameof(Mapper)), inputSchema, parent)
        {
            _transformer = parent;
            ImageColumn.Check(Host, inputSchema, parent.ImageColumnName);
            _imageColumnIndex = inputSchema[parent.ImageColumnName].Index;
        }

        public override DataViewSchema.DetachedColumn[] GetOutputColumnsCore() => _transformer.OutputColumns(InputSchema);

        public override Delegate[] CreateGetters(DataViewRow input, Func<int, bool> activeOutput, out Action disposer)
        {
            // Score and PredictedLabel share one forward pass per row.
            var readPixels = ImageColumn.CreatePixelReader(input, _transformer.ImageColumnName, _transformer.Preprocessor);
            long cachedPosition = -1;
            float[] cached = [];
            float[] Current()
            {
                if (cachedPosition != input.Position)
                {
                    using var scope = NewDisposeScope();
                    cached = _transformer.Score(readPixels().unsqueeze(0))[0];
                    cachedPosition = input.Position;
                }
                return cached;
            }
            disposer = null!;
            return
            [
                activeOutput(0) ? (ValueGetter<VBuffer<float>>)((ref VBuffer<float> dst) => new VBuffer<float>(Current().Length, Current()).CopyTo(ref dst)) : null!,
                activeOutput(1) ? (ValueGetter<uint>)((ref uint dst) => dst = PredictedKey(Current())) : null!,
            ];
        }

        public override Delegate MakeGetter(DataViewRow input, int iinfo, Func<int, bool> activeOutput, out Action disposer) =>
            throw new NotSupportedException("Getters are created together in CreateGetters.");

        public override Func<int, bool> GetDependenciesCore(Func<int, bool> activeOutput) =>
            column => column == _imageColumnIndex && (activeOutput(0) || activeOutput(1));

        public override void SaveModel(ModelSaveContext ctx) => _transformer.SaveModel(ctx);
    }
}
