using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Classification;
using Microsoft.ML.RepAdapter.Formats;
using Microsoft.ML.RepAdapter.MLNet;
using Microsoft.ML.Runtime;
using static TorchSharp.torch;

[assembly: LoadableClass(typeof(RepAdapterImageClassificationTransformer), null, typeof(SignatureLoadModel),
    RepAdapterImageClassificationTransformer.UserName, RepAdapterImageClassificationTransformer.LoaderSignature)]
[assembly: LoadableClass(typeof(IRowMapper), typeof(RepAdapterImageClassificationTransformer), null, typeof(SignatureLoadRowMapper),
    RepAdapterImageClassificationTransformer.UserName, RepAdapterImageClassificationTransformer.LoaderSignature)]

namespace Microsoft.ML.RepAdapter.Classification;

/// <summary>
/// Scores images with a fine-tuned backbone whose adapters are already merged: the plain architecture, no adapter
/// modules, no extra latency. Outputs <c>Score</c> (softmax probabilities, one per class, slot names = label names)
/// and <c>PredictedLabel</c> (a key over the training labels; missing when a score is NaN). <c>mlContext.Model.Save</c>
/// stores the merged weights (one binary stream), the backbone description, preprocessing and label values.
/// </summary>
public sealed class RepAdapterImageClassificationTransformer : RepAdapterTransformerBase
{
    internal const string LoaderSignature = "RepAdaptImgCls";
    internal const string UserName = "RepAdapter Image Classification";

    private readonly LabelKeyValues _labels;

    internal RepAdapterImageClassificationTransformer(IHostEnvironment env, Backbone mergedModel, LabelKeyValues labels,
        TrainingSummary summary, string imageColumnName, string scoreColumnName, string predictedLabelColumnName, int scoringBatchSize, Device device)
        : base(Contracts.CheckRef(env, nameof(env)).Register(nameof(RepAdapterImageClassificationTransformer)), mergedModel, mergedModel.Input,
            summary, imageColumnName, scoringBatchSize, device)
    {
        Host.Check(mergedModel.NumClasses == labels.Count,
            $"The model has {mergedModel.NumClasses} outputs but {labels.Count} label values were given.");
        Model = mergedModel;
        _labels = labels;
        ScoreColumnName = scoreColumnName;
        PredictedLabelColumnName = predictedLabelColumnName;
    }

    /// <summary>The merged network (plain backbone + head). Shared, not copied: do not dispose it separately.</summary>
    public Backbone Model { get; }

    /// <summary>Classes the model predicts.</summary>
    public int NumberOfClasses => _labels.Count;

    /// <summary>Label values as text, in key order (key k is <c>LabelNames[k - 1]</c>).</summary>
    public IReadOnlyList<string> LabelNames => _labels.Names;

    /// <summary>The output column of class probabilities.</summary>
    public string ScoreColumnName { get; }

    /// <summary>The output column of the predicted key.</summary>
    public string PredictedLabelColumnName { get; }

    /// <summary>Class probabilities [N, K] for <paramref name="images"/>, in one forward pass.</summary>
    public float[][] Score(IReadOnlyList<MLImage> images)
    {
        if (images.Count == 0) return [];
        using var scope = NewDisposeScope();
        return Probabilities(Forward(Preprocessor.ToPixels(images)));
    }

    private float[][] Probabilities(Tensor logits)
    {
        using var scope = NewDisposeScope();
        var flat = logits.softmax(1).data<float>().ToArray();
        int k = NumberOfClasses;
        return [.. Enumerable.Range(0, (int)logits.shape[0]).Select(i => flat[(i * k)..((i + 1) * k)])];
    }

    private protected override object[] DecodeOutputs(Tensor output, IReadOnlyList<ImageRead> images) => Probabilities(output);

    private protected override DataViewSchema.DetachedColumn[] OutputColumns(DataViewSchema inputSchema)
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

    private protected override Delegate MakeGetter(int column, Func<object> current) => column switch
    {
        0 => (ValueGetter<VBuffer<float>>)((ref VBuffer<float> dst) =>
        {
            var probabilities = (float[])current();
            new VBuffer<float>(probabilities.Length, probabilities).CopyTo(ref dst);
        }),
        1 => (ValueGetter<uint>)((ref uint dst) => dst = PredictedKey((float[])current())),
        _ => throw new ArgumentOutOfRangeException(nameof(column)),
    };

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

    private const string OnnxLogits = "logits";

    // The ONNX graph: logits and (exported) their softmax; for ML.NET, logits alone, which its multiclass scorer turns
    // into the Score and PredictedLabel columns.
    internal override OnnxGraphBuilder OnnxGraph(bool mlNet, (int Width, int Height)? source = null)
    {
        int k = NumberOfClasses;
        if (mlNet)
            return OnnxExport.Build(Model.Architecture, Model, Model.Input, 1, (graph, pixels) => graph.Reshape(Model.EmitForward(graph, pixels), k),
                (graph, logits) => graph.Output(logits, OnnxLogits, OnnxFields.DataType.Float, k), source);
        return OnnxExport.Build(Model.Architecture, Model, Model.Input, "batch", Model.EmitForward,
            (graph, logits) =>
            {
                graph.Output(logits, OnnxLogits, OnnxFields.DataType.Float, "batch", k);
                graph.Output(graph.Softmax(logits, 1), "probabilities", OnnxFields.DataType.Float, "batch", k);
            }, source);
    }

    internal override string[] OnnxScoringOutputs => [OnnxLogits];

    internal override IEnumerable<ITransformer> OnnxScoringTail(MLContext mlContext, IDataView scored, Func<string, string> column) =>
        [OnnxMulticlassScorer.Create(CatalogUtils.GetEnvironment(mlContext.Transforms), column(OnnxLogits), _labels, ScoreColumnName, PredictedLabelColumnName)];

    // 0x00010002 adds the weights' SHA-256 in a stream of its own, which 0x00010001 readers ignore; 0x00010003 one over
    // everything the model holds (ignored by older readers too).
    private const uint ContentChecksummed = 0x00010003;
    // 0x00010004 writes adapters-only task models (a TaskModel stream instead of the merged weights); only such files carry
    // it, so that an older reader refuses them as too new rather than as damaged.
    private const uint AdaptersOnly = 0x00010004;

    private static VersionInfo GetVersionInfo(ModelStorage storage = ModelStorage.AdaptersOnly) => new(
        modelSignature: "RPADPCLS",
        verWrittenCur: storage == ModelStorage.AdaptersOnly ? AdaptersOnly : ContentChecksummed,
        verReadableCur: storage == ModelStorage.AdaptersOnly ? AdaptersOnly : 0x00010001,
        verWeCanReadBack: 0x00010001,
        loaderSignature: LoaderSignature,
        loaderAssemblyName: typeof(RepAdapterImageClassificationTransformer).Assembly.FullName);

    private protected override VersionInfo VersionInfoFor(ModelStorage storage) => GetVersionInfo(storage);

    private protected override void SaveColumns(ModelSaveContext ctx)
    {
        ctx.SaveNonEmptyString(ScoreColumnName);
        ctx.SaveNonEmptyString(PredictedLabelColumnName);
    }

    private protected override string DescribeNetwork() => Model.Describe().ToJson();

    private protected override nn.Module<Tensor, Tensor> BuildNetwork(string description) => BackboneDescriptor.FromJson(description).Build();

    private protected override void SaveTaskData(ModelSaveContext ctx) => _labels.Save(Host, ctx.Writer.BaseStream);

    private protected override IEnumerable<string> TaskContent() => Content(ScoreColumnName, PredictedLabelColumnName, _labels);

    /// <summary>The columns and labels (type, then names in key order) as the content checksum covers them.</summary>
    private static IEnumerable<string> Content(string score, string predicted, LabelKeyValues labels) =>
        [score, predicted, $"{labels.Type.ItemType}", .. labels.Names];

    // Factory for SignatureLoadModel.
    private static RepAdapterImageClassificationTransformer Create(IHostEnvironment env, ModelLoadContext ctx)
    {
        Contracts.CheckValue(env, nameof(env));
        env.CheckValue(ctx, nameof(ctx));
        ctx.CheckAtModel(GetVersionInfo());
        string image = ctx.LoadNonEmptyString(), score = ctx.LoadNonEmptyString(), predicted = ctx.LoadNonEmptyString();
        var header = LoadHeader(env, ctx);
        var labels = LabelKeyValues.Load(env, ctx.Reader.BaseStream);
        VerifyContent(ctx, ContentChecksummed, image, header, Content(score, predicted, labels));
        var (model, taskModel) = LoadNetwork(ctx, header, json => BackboneDescriptor.FromJson(json).Build(), AdaptersOnly);
        return CreateLoaded(model, taskModel, () => new RepAdapterImageClassificationTransformer(env, model, labels, header.Summary, image, score, predicted,
            header.ScoringBatchSize, ScoringDevice(env)));
    }

    // Factory for SignatureLoadRowMapper.
    private static IRowMapper Create(IHostEnvironment env, ModelLoadContext ctx, DataViewSchema inputSchema) =>
        Create(env, ctx).MakeRowMapper(inputSchema);
}
