using Microsoft.ML.RepAdapter.Torch;
using System.Text.Json;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Formats;
using Microsoft.ML.RepAdapter.MLNet;
using Microsoft.ML.RepAdapter.Segmentation;
using Microsoft.ML.Runtime;
using Microsoft.ML.Transforms.Image;
using static TorchSharp.torch;

[assembly: LoadableClass(typeof(RepAdapterSegmentationTransformer), null, typeof(SignatureLoadModel),
    RepAdapterSegmentationTransformer.UserName, RepAdapterSegmentationTransformer.LoaderSignature)]
[assembly: LoadableClass(typeof(IRowMapper), typeof(RepAdapterSegmentationTransformer), null, typeof(SignatureLoadRowMapper),
    RepAdapterSegmentationTransformer.UserName, RepAdapterSegmentationTransformer.LoaderSignature)]

namespace Microsoft.ML.RepAdapter.Segmentation;

/// <summary>
/// Segments images with a fine-tuned backbone and decode head whose adapters are already merged. Outputs the predicted
/// mask at each input image's own resolution: a vector of class indices (row-major, width x height of the input image;
/// the column's "ClassNames" annotation names them), and on request a colourised mask image and per-pixel class
/// probabilities. Logits are resized bilinearly to the image's size before the argmax, as mmsegmentation does.
/// </summary>
public sealed class RepAdapterSegmentationTransformer : RepAdapterTransformerBase
{
    internal const string LoaderSignature = "RepAdaptImgSeg";
    internal const string UserName = "RepAdapter Semantic Segmentation";

    /// <summary>The annotation on the predicted-mask column holding the class names (text vector), for evaluation.</summary>
    public const string ClassNamesAnnotation = "ClassNames";

    /// <summary>The annotation on the predicted-mask column holding the training masks' ignore value (Int32), for evaluation.</summary>
    public const string IgnoreIndexAnnotation = "IgnoreIndex";

    /// <summary>
    /// The predicted mask's annotation naming the image column it was predicted from: the mask is a flat vector, so
    /// the evaluation reads that image's width and height to check a true mask against both, not only the pixel count.
    /// </summary>
    public const string ImageColumnAnnotation = "ImageColumn";

    private readonly string[] _classNames;

    internal RepAdapterSegmentationTransformer(IHostEnvironment env, SegmentationNetwork network, ImageInputSpec input, IReadOnlyList<string> classNames,
        int ignoreIndex, TrainingSummary summary, string imageColumnName, string predictedMaskColumnName, string? colorizedMaskColumnName,
        string? scoresColumnName, int scoringBatchSize, Device device)
        : base(Contracts.CheckRef(env, nameof(env)).Register(nameof(RepAdapterSegmentationTransformer)), network, input, summary, imageColumnName,
            scoringBatchSize, device)
    {
        Host.Check(network.NumClasses == classNames.Count, $"The network predicts {network.NumClasses} classes but {classNames.Count} names were given.");
        Model = network;
        _classNames = [.. classNames];
        IgnoreIndex = ignoreIndex;
        PredictedMaskColumnName = predictedMaskColumnName;
        ColorizedMaskColumnName = colorizedMaskColumnName;
        ScoresColumnName = scoresColumnName;
    }

    /// <summary>The merged network (plain backbone + decode head). Shared, not copied: do not dispose it separately.</summary>
    public SegmentationNetwork Model { get; }

    /// <summary>Class names in class-index order.</summary>
    public IReadOnlyList<string> ClassNames => _classNames;

    /// <summary>Classes predicted per pixel.</summary>
    public int NumberOfClasses => _classNames.Length;

    /// <summary>The mask value of unlabelled pixels in the training data.</summary>
    public int IgnoreIndex { get; }

    /// <summary>The output column of class indices.</summary>
    public string PredictedMaskColumnName { get; }

    /// <summary>The output column of colourised masks, or null.</summary>
    public string? ColorizedMaskColumnName { get; }

    /// <summary>The output column of per-pixel probabilities, or null.</summary>
    public string? ScoresColumnName { get; }

    /// <summary>The colour of class <paramref name="classIndex"/> in colourised masks (R, G, B): evenly spread hues.</summary>
    public static (byte R, byte G, byte B) ClassColor(int classIndex)
    {
        if (classIndex == 0) return (0, 0, 0);
        double hue = (classIndex * 0.618033988749895) % 1.0 * 6, f = hue - Math.Floor(hue);
        byte v = 230, p = 40, q = (byte)(230 - 190 * f), t = (byte)(40 + 190 * f);
        return ((int)hue) switch { 0 => (v, t, p), 1 => (q, v, p), 2 => (p, v, t), 3 => (p, q, v), 4 => (t, p, v), _ => (v, p, q) };
    }

    /// <summary>What one row's forward pass gave: class indices (and probabilities) at the image's own size.</summary>
    private sealed record SegmentedRow(uint[] Mask, int Width, int Height, float[]? Scores);

    /// <summary>The output columns: the mask, then the optional colourised image and scores.</summary>
    internal static IEnumerable<(string Name, DataViewType ItemType, SchemaShape.Column.VectorKind Kind)> OutputKinds(string mask, string? colorized, string? scores)
    {
        yield return (mask, NumberDataViewType.UInt32, SchemaShape.Column.VectorKind.VariableVector);
        if (colorized is not null) yield return (colorized, new ImageDataViewType(), SchemaShape.Column.VectorKind.Scalar);
        if (scores is not null) yield return (scores, NumberDataViewType.Single, SchemaShape.Column.VectorKind.VariableVector);
    }

    private IEnumerable<(string Name, DataViewType ItemType, SchemaShape.Column.VectorKind Kind)> Outputs =>
        OutputKinds(PredictedMaskColumnName, ColorizedMaskColumnName, ScoresColumnName);

    private protected override DataViewSchema.DetachedColumn[] OutputColumns(DataViewSchema inputSchema)
    {
        var names = new VBuffer<ReadOnlyMemory<char>>(_classNames.Length, [.. _classNames.Select(n => n.AsMemory())]);
        var annotations = new DataViewSchema.Annotations.Builder();
        annotations.Add(ClassNamesAnnotation, new VectorDataViewType(TextDataViewType.Instance, _classNames.Length),
            (ref VBuffer<ReadOnlyMemory<char>> dst) => names.CopyTo(ref dst));
        int ignore = IgnoreIndex;
        annotations.Add(IgnoreIndexAnnotation, NumberDataViewType.Int32, (ref int dst) => dst = ignore);
        var image = ImageColumnName.AsMemory();
        annotations.Add(ImageColumnAnnotation, TextDataViewType.Instance, (ref ReadOnlyMemory<char> dst) => dst = image);
        return [.. Outputs.Select((c, i) => new DataViewSchema.DetachedColumn(c.Name,
            c.Kind == SchemaShape.Column.VectorKind.Scalar ? c.ItemType : new VectorDataViewType((PrimitiveDataViewType)c.ItemType),
            i == 0 ? annotations.ToAnnotations() : null))];
    }

    private protected override object[] DecodeOutputs(Tensor output, IReadOnlyList<ImageRead> images)
    {
        var rows = new object[images.Count];
        for (int i = 0; i < images.Count; i++)
        {
            using var scope = NewDisposeScope();
            var (width, height) = (images[i].Width, images[i].Height);
            var logits = output.narrow(0, i, 1);
            if (ScoresColumnName is not null || (long)width * height * NumberOfClasses <= StripThreshold)
            {
                var full = nn.functional.interpolate(logits, [height, width], mode: InterpolationMode.Bilinear, align_corners: false)[0];
                var mask = new uint[(long)width * height];
                WriteClasses(full, mask, 0, IgnoreIndex);
                float[]? scores = ScoresColumnName is null ? null : full.softmax(0).data<float>().ToArray();
                rows[i] = new SegmentedRow(mask, width, height, scores);
            }
            else
            {
                rows[i] = new SegmentedRow(StripwiseClasses(logits, width, height, IgnoreIndex), width, height, null);
            }
        }
        return rows;
    }

    /// <summary>
    /// Logits (classes x pixels) above which a mask is upsampled a strip of rows at a time: the whole [K, H, W] float map
    /// of a 10,000 x 10,000 image with 11 classes is 4.4 GB, a strip of it a few megabytes.
    /// </summary>
    internal const long StripThreshold = 16L << 20;

    /// <summary>The argmax class of each pixel of <paramref name="logits"/> [K, rows, W] into <paramref name="mask"/> from <paramref name="offset"/>; a NaN pixel gets the ignore value.</summary>
    private static void WriteClasses(Tensor logits, uint[] mask, long offset, int ignoreIndex)
    {
        using var scope = NewDisposeScope();
        var classes = logits.argmax(0).to(ScalarType.Int32).data<int>().ToArray();
        long count = classes.LongLength;
        for (long p = 0; p < count; p++) mask[offset + p] = (uint)classes[p];
        // A NaN logit would make argmax meaningless: such a pixel gets no class (the ignore value) instead.
        var nan = logits.isnan().any(dim: 0);
        if (!nan.any().item<bool>()) return;
        var bad = nan.flatten().data<bool>().ToArray();
        for (long p = 0; p < count; p++) if (bad[p]) mask[offset + p] = (uint)ignoreIndex;
    }

    /// <summary>
    /// The bilinear upsampling of <paramref name="logits"/> [1, K, S, S] to <paramref name="height"/> x
    /// <paramref name="width"/> (align_corners false, as the one-shot path) and its argmax, computed a strip of output
    /// rows at a time: each strip's rows are blended from their two source rows, then resized across only (which
    /// leaves the rows as they are), so memory is bounded by a strip whatever the image's size.
    /// </summary>
    internal static uint[] StripwiseClasses(Tensor logits, int width, int height, int ignoreIndex)
    {
        var mask = new uint[(long)width * height];
        int source = (int)logits.shape[2], classes = (int)logits.shape[1];
        int strip = (int)Math.Max(1, StripThreshold / ((long)classes * width));
        for (int top = 0; top < height; top += strip)
        {
            using var scope = NewDisposeScope();
            int rows = Math.Min(strip, height - top);
            var (upper, lower, weight) = (new long[rows], new long[rows], new float[rows]);
            for (int r = 0; r < rows; r++)
            {
                double at = Math.Max(0, (top + r + 0.5) * source / height - 0.5);
                upper[r] = Math.Min((long)at, source - 1);
                lower[r] = Math.Min(upper[r] + 1, source - 1);
                weight[r] = (float)(at - upper[r]);
            }
            var w = tensor(weight).view(1, 1, rows, 1);
            // (1 - w) a + w b as a + w (b - a): no number reaches libtorch (Scalars).
            var above = logits.index_select(2, tensor(upper));
            var blended = above.Plus((logits.index_select(2, tensor(lower)) - above) * w);
            var across = nn.functional.interpolate(blended, [rows, width], mode: InterpolationMode.Bilinear, align_corners: false)[0];
            WriteClasses(across, mask, (long)top * width, ignoreIndex);
        }
        return mask;
    }

    private protected override Delegate MakeGetter(int column, Func<object> current)
    {
        if (column == 0)
        {
            return (ValueGetter<VBuffer<uint>>)((ref VBuffer<uint> dst) =>
            {
                var row = (SegmentedRow)current();
                new VBuffer<uint>(row.Mask.Length, row.Mask).CopyTo(ref dst);
            });
        }
        if (Outputs.ElementAt(column).Kind == SchemaShape.Column.VectorKind.Scalar)
        {
            return (ValueGetter<MLImage>)((ref MLImage dst) =>
            {
                dst?.Dispose();
                dst = Colorize((SegmentedRow)current());
            });
        }
        return (ValueGetter<VBuffer<float>>)((ref VBuffer<float> dst) =>
        {
            var row = (SegmentedRow)current();
            new VBuffer<float>(row.Scores!.Length, row.Scores).CopyTo(ref dst);
        });
    }

    private static MLImage Colorize(SegmentedRow row)
    {
        var bgra = new byte[row.Mask.Length * 4];
        for (int p = 0; p < row.Mask.Length; p++)
        {
            var (r, g, b) = ClassColor((int)row.Mask[p]);
            (bgra[4 * p], bgra[4 * p + 1], bgra[4 * p + 2], bgra[4 * p + 3]) = (b, g, r, 255);
        }
        return MLImage.CreateFromPixels(row.Width, row.Height, MLPixelFormat.Bgra32, bgra);
    }

    // The ONNX graph: logits and the argmax mask at the model's resolution, S x S (this transformer resizes the logits to
    // each image's own size first: the graph cannot know it). For ML.NET, the mask alone, as the predicted-mask column:
    // uint32 class indices, S * S values row-major (batch 1, a fixed size, so ML.NET types the column as a known-size vector).
    internal override OnnxGraphBuilder OnnxGraph(bool mlNet, (int Width, int Height)? source = null)
    {
        int size = Input.ImageSize;
        if (mlNet)
        {
            return Model.OnnxGraph(1, (graph, logits) => graph.Output(
                graph.Reshape(graph.Cast(graph.ArgMax(logits, 1, keepDims: false), OnnxFields.DataType.UInt32), (long)size * size),
                PredictedMaskColumnName, OnnxFields.DataType.UInt32, (long)size * size), source);
        }
        return Model.OnnxGraph("batch", (graph, logits) =>
        {
            graph.Output(logits, "logits", OnnxFields.DataType.Float, "batch", NumberOfClasses, size, size);
            graph.Output(graph.ArgMax(logits, 1, keepDims: false), "mask", OnnxFields.DataType.Int64, "batch", size, size);
        }, source);
    }

    internal override string[] OnnxScoringOutputs => [PredictedMaskColumnName];

    internal override IEnumerable<ITransformer> OnnxScoringTail(MLContext mlContext, IDataView scored, Func<string, string> column) =>
        [mlContext.Transforms.CopyColumns(PredictedMaskColumnName, column(PredictedMaskColumnName)).Fit(scored)];

    // 0x00010002 adds a SHA-256 over everything the model holds, in a stream older readers ignore.
    private const uint ContentChecksummed = 0x00010002;
    // 0x00010003 writes adapters-only task models (a TaskModel stream instead of the merged weights); only such files carry
    // it, so that an older reader refuses them as too new rather than as damaged.
    private const uint AdaptersOnly = 0x00010003;

    private static VersionInfo GetVersionInfo(ModelStorage storage = ModelStorage.AdaptersOnly) => new(
        modelSignature: "RPADPSEG",
        verWrittenCur: storage == ModelStorage.AdaptersOnly ? AdaptersOnly : ContentChecksummed,
        verReadableCur: storage == ModelStorage.AdaptersOnly ? AdaptersOnly : 0x00010001,
        verWeCanReadBack: 0x00010001,
        loaderSignature: LoaderSignature,
        loaderAssemblyName: typeof(RepAdapterSegmentationTransformer).Assembly.FullName);

    private protected override VersionInfo VersionInfoFor(ModelStorage storage) => GetVersionInfo(storage);

    private protected override void SaveColumns(ModelSaveContext ctx)
    {
        ctx.SaveNonEmptyString(PredictedMaskColumnName);
        ctx.SaveStringOrNull(ColorizedMaskColumnName);
        ctx.SaveStringOrNull(ScoresColumnName);
    }

    private protected override string DescribeNetwork() => Model.Describe();

    private protected override nn.Module<Tensor, Tensor> BuildNetwork(string description) => SegmentationNetwork.FromDescription(description);

    private protected override void SaveTaskData(ModelSaveContext ctx)
    {
        ctx.Writer.Write(JsonSerializer.Serialize(_classNames));
        ctx.Writer.Write(IgnoreIndex);
    }

    private protected override IEnumerable<string> TaskContent() =>
        Content(PredictedMaskColumnName, ColorizedMaskColumnName, ScoresColumnName, _classNames, IgnoreIndex);

    /// <summary>The columns (null as a NUL) and the class names and ignored index as the content checksum covers them.</summary>
    private static IEnumerable<string> Content(string mask, string? colorized, string? scores, string[] classNames, int ignoreIndex) =>
        [mask, colorized ?? "\0", scores ?? "\0", ignoreIndex.ToString(System.Globalization.CultureInfo.InvariantCulture), .. classNames];

    // Factory for SignatureLoadModel.
    private static RepAdapterSegmentationTransformer Create(IHostEnvironment env, ModelLoadContext ctx)
    {
        Contracts.CheckValue(env, nameof(env));
        env.CheckValue(ctx, nameof(ctx));
        ctx.CheckAtModel(GetVersionInfo());
        string image = ctx.LoadNonEmptyString(), mask = ctx.LoadNonEmptyString();
        string? colorized = ctx.LoadStringOrNull(), scores = ctx.LoadStringOrNull();
        var header = LoadHeader(env, ctx);
        var classNames = JsonSerializer.Deserialize<string[]>(ctx.Reader.ReadString()) ?? throw env.ExceptDecode("Missing class names.");
        int ignoreIndex = ctx.Reader.ReadInt32();
        VerifyContent(ctx, ContentChecksummed, image, header, Content(mask, colorized, scores, classNames, ignoreIndex));
        var (network, taskModel) = LoadNetwork(ctx, header, SegmentationNetwork.FromDescription, AdaptersOnly);
        return CreateLoaded(network, taskModel, () => new RepAdapterSegmentationTransformer(env, network, network.Backbone.Input, classNames, ignoreIndex,
            header.Summary, image, mask, colorized, scores, header.ScoringBatchSize, ScoringDevice(env)));
    }

    // Factory for SignatureLoadRowMapper.
    private static IRowMapper Create(IHostEnvironment env, ModelLoadContext ctx, DataViewSchema inputSchema) =>
        Create(env, ctx).MakeRowMapper(inputSchema);
}
