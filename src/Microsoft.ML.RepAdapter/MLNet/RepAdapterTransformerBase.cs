using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Formats;
using Microsoft.ML.RepAdapter.Torch;
using Microsoft.ML.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.MLNet;

/// <summary>The number format a transformer scores in.</summary>
public enum ScoringPrecision
{
    /// <summary>32-bit floats, as trained (the default).</summary>
    Float32,
    /// <summary>bfloat16 weights and activations (8-bit mantissa), float32 output.</summary>
    BFloat16,
    /// <summary>
    /// Whichever of the two is faster on this machine: the first batch scored is timed in both, and bfloat16 is kept when it
    /// takes at most 0.9 of float32's time and every output probability is within
    /// <see cref="RepAdapterTransformerBase.AutoPrecisionTolerance"/> of float32's (<see cref="RepAdapterTransformerBase.PrecisionChoice"/>).
    /// </summary>
    Auto,
}

/// <summary>What <see cref="ScoringPrecision.Auto"/> measured on the first batch and chose.</summary>
/// <param name="Images">Images in the timed batch.</param>
/// <param name="Float32Milliseconds">The batch's forward pass in float32 (the faster of two, after a warm-up).</param>
/// <param name="BFloat16Milliseconds">The same in bfloat16.</param>
/// <param name="MaxProbabilityDifference">The largest difference of an output probability (softmax over classes) between the two.</param>
/// <param name="Chosen">The precision kept.</param>
public sealed record PrecisionChoice(int Images, double Float32Milliseconds, double BFloat16Milliseconds, double MaxProbabilityDifference, ScoringPrecision Chosen);

/// <summary>What <c>mlContext.Model.Save</c> writes for a RepAdapter transformer (<see cref="RepAdapterTransformerBase.Storage"/>).</summary>
public enum ModelStorage
{
    /// <summary>The merged network: the plain architecture with the adapters folded in (the default).</summary>
    Merged,
    /// <summary>
    /// What training changed (the adapters before merging, the head) and where the backbone comes from, with its
    /// fingerprint: kilobytes for a task; loading rebuilds the backbone and merges, so it scores as the merged model.
    /// </summary>
    AdaptersOnly,
}

/// <summary>
/// What every RepAdapter transformer shares: a merged network (the plain architecture, no adapter modules, no extra
/// latency), its preprocessing, batch scoring (<see cref="ScoringBatchSize"/> rows per forward pass) and row-by-row
/// scoring (PredictionEngine), and the .zip layout: one TorchSharp weights stream with its SHA-256, plus the
/// descriptions needed to rebuild the network. A task supplies its output columns and how a forward pass's output becomes
/// their values.
/// </summary>
public abstract class RepAdapterTransformerBase : RowToRowTransformerBase, ITransformer, IDisposable
{
    private const string WeightsStream = "TorchModel";
    private const string ChecksumStream = "TorchModel.sha256";
    private const string ContentChecksumStream = "Model.sha256";
    // An adapters-only task model holds this instead of the merged weights (TaskModel's stream).
    private const string TaskModelStream = "TaskModel";
    // What a task-model stream may hold: far above any adapters and head, below what a MemoryStream can hold.
    private const long MaxTaskModelBytes = 1L << 30;
    private protected static readonly JsonSerializerOptions SummaryJson = new() { Converters = { new JsonStringEnumConverter() } };

    private readonly nn.Module<Tensor, Tensor> _network;
    private readonly Device _device;
    private readonly ReaderWriterLockSlim _gate = new(LockRecursionPolicy.SupportsRecursion);
    private bool _disposed;
    private int _forwardPasses;
    private nn.Module<Tensor, Tensor>? _reduced;
    private ScoringPrecision _precision;
    private volatile bool _autoPending;
    private TaskModel? _taskModel;
    private ModelStorage _storage;

    private protected RepAdapterTransformerBase(IHost host, nn.Module<Tensor, Tensor> network, ImageInputSpec input, TrainingSummary summary,
        string imageColumnName, int scoringBatchSize, Device device)
        : base(host)
    {
        Host.CheckParam(scoringBatchSize > 0, nameof(scoringBatchSize), "must be positive");
        _network = network;
        _network.to(device);
        _network.eval();
        _device = device;
        Input = input;
        Preprocessor = new ImagePreprocessor(input);
        Summary = summary;
        ImageColumnName = imageColumnName;
        ScoringBatchSize = scoringBatchSize;
    }

    /// <summary>What the training run did.</summary>
    public TrainingSummary Summary { get; }

    /// <summary>
    /// What <c>mlContext.Model.Save</c> writes: <see cref="ModelStorage.Merged"/> (the default), the merged network, or
    /// <see cref="ModelStorage.AdaptersOnly"/>, a task model of what training changed (adapters before merging, head) with
    /// the backbone's source and fingerprint, which <c>Model.Load</c> merges into the same backbone again. Possible for a
    /// model trained from built-in weights or a checkpoint file (not a <c>Backbone</c> object, a random preset or a full
    /// fine-tune); a model loaded from an adapters-only file saves as one again.
    /// </summary>
    public ModelStorage Storage
    {
        get => _storage;
        set
        {
            if (value == ModelStorage.AdaptersOnly && (_taskModel is null || Summary.Backbone is null))
                throw new InvalidOperationException("This model can only be saved merged: "
                    + (Summary.Trainable == TrainableParameters.All ? "a full fine-tune changes every backbone weight."
                        : Summary.Backbone is null ? "its backbone was not read from built-in weights or a checkpoint file (a Backbone object or a random preset cannot be loaded again)."
                        : "it was loaded from a merged file, which no longer holds the adapters apart from the backbone."));
            _storage = value;
        }
    }

    /// <summary>Keeps what training changed, for <see cref="ModelStorage.AdaptersOnly"/> saves (the trainer, and the adapters-only loader).</summary>
    internal void KeepTaskModel(TaskModel? taskModel, ModelStorage storage = ModelStorage.Merged)
    {
        _taskModel = taskModel;
        _storage = storage;
    }

    /// <summary>The adapter scale s the model was trained (and merged) with.</summary>
    public float AdapterScale => Summary.AdapterScale;

    /// <summary>Parameters that the training run updated (adapters + head by default).</summary>
    public long TrainableParameterCount => Summary.TrainableParameters;

    /// <summary>The image column scored.</summary>
    public string ImageColumnName { get; }

    /// <summary>Rows scored together by <see cref="ITransformer.Transform"/>.</summary>
    public int ScoringBatchSize { get; }

    /// <summary>
    /// The most pixels (width x height) an image to score may declare in its header, checked before it is decoded: the
    /// trainer's <c>MaxImagePixels</c>, or 8192 x 8192 for a loaded model (a limit of the process that scores, so not saved).
    /// </summary>
    public long MaxImagePixels
    {
        get => Preprocessor.MaxPixels;
        set => Preprocessor.MaxPixels = value > 0 ? value : throw new ArgumentOutOfRangeException(nameof(MaxImagePixels), value, "must be positive");
    }

    /// <summary>Input size and normalisation.</summary>
    public ImageInputSpec Input { get; }

    /// <summary>
    /// The number format of scoring: <see cref="ScoringPrecision.Float32"/> (the default), <see cref="ScoringPrecision.BFloat16"/>,
    /// which scores with a bfloat16 copy of the merged weights (the float32 weights stay, and are what is saved), or
    /// <see cref="ScoringPrecision.Auto"/>, which measures both on the first batch and keeps the faster (see
    /// <see cref="PrecisionChoice"/>). bfloat16 is faster only on CPUs whose kernels use AVX-512 BF16 or AMX well: on the
    /// AMD EPYC of the latency benchmark about twice as fast, on an Intel Xeon of an earlier run slower
    /// (docs/benchmarks/latency.md names the CPU); scores differ from float32 ones in the third significant digit. Float32
    /// stays the default because Auto's choice depends on a timing, so two processes may score in different precisions.
    /// A setting of this instance, not saved with the model.
    /// </summary>
    public ScoringPrecision Precision
    {
        get => _precision;
        set
        {
            _gate.EnterWriteLock();
            try
            {
                ObjectDisposedException.ThrowIf(_disposed, this);
                if (value == _precision) return;
                _reduced?.Dispose();
                _reduced = value == ScoringPrecision.Float32 ? null : ReducedCopy(ScalarType.BFloat16);
                _precision = value;
                PrecisionChoice = null;
                _autoPending = value == ScoringPrecision.Auto;
            }
            finally
            {
                _gate.ExitWriteLock();
            }
        }
    }

    /// <summary>With <see cref="ScoringPrecision.Auto"/>: what the first batch measured and which precision it kept; null until then.</summary>
    public PrecisionChoice? PrecisionChoice { get; private set; }

    /// <summary>The largest difference of an output probability that <see cref="ScoringPrecision.Auto"/> accepts from bfloat16 (0.1).</summary>
    public float AutoPrecisionTolerance { get; set; } = 0.1f;

    /// <summary>Times both precisions on <paramref name="input"/> (normalised) and keeps bfloat16 only when it pays and agrees.</summary>
    private void ChoosePrecision(Tensor input)
    {
        _gate.EnterWriteLock();
        try
        {
            if (!_autoPending || _disposed) return;
            using var scope = NewDisposeScope();
            using var inference = inference_mode();
            var reduced = _reduced!;
            Tensor Float32() => _network.forward(input).cpu();
            Tensor BFloat16() => reduced.forward(input.to(ScalarType.BFloat16)).to(float32).cpu();
            double full, half;
            try
            {
                (full, half) = (PrecisionTrial.Milliseconds(Float32), PrecisionTrial.Milliseconds(BFloat16));
            }
            catch
            {
                // A failed measurement (the second copy out of memory, say) leaves float32, decided.
                (_reduced, _autoPending) = (null, false);
                reduced.Dispose();
                PrecisionChoice = new PrecisionChoice((int)input.shape[0], 0, 0, 0, ScoringPrecision.Float32);
                throw;
            }
            double difference = Float32().softmax(1).sub(BFloat16().softmax(1)).abs().max().item<float>();
            bool keep = PrecisionTrial.Pays(full, half) && difference <= AutoPrecisionTolerance;
            var chosen = keep ? ScoringPrecision.BFloat16 : ScoringPrecision.Float32;
            PrecisionChoice = new PrecisionChoice((int)input.shape[0], full, half, difference, chosen);
            if (!keep)
            {
                _reduced!.Dispose();
                _reduced = null;
            }
            _autoPending = false;
            using var ch = Host.Start("Precision Auto");
            ch.Info(string.Create(System.Globalization.CultureInfo.InvariantCulture,
                $"Precision Auto: a batch of {input.shape[0]} took {full:F1} ms in float32 and {half:F1} ms in bfloat16, probabilities differ by "
                + $"up to {difference:G2} (tolerance {AutoPrecisionTolerance:G2}): scoring in {chosen}."));
        }
        finally
        {
            _gate.ExitWriteLock();
        }
    }

    /// <summary>A copy of the network in <paramref name="dtype"/>, on the scoring device, in eval mode.</summary>
    private nn.Module<Tensor, Tensor> ReducedCopy(ScalarType dtype)
    {
        var copy = BuildNetwork(DescribeNetwork());
        try
        {
            copy.load_state_dict(_network.state_dict(), strict: true);
            copy.to(dtype);
            copy.to(_device);
            copy.eval();
            return copy;
        }
        catch
        {
            copy.Dispose();
            throw;
        }
    }

    internal ImagePreprocessor Preprocessor { get; }

    /// <summary>Number of forward passes run so far (lets tests see batching at work).</summary>
    internal int ForwardPasses => _forwardPasses;

    private protected nn.Module<Tensor, Tensor> Network => _network;

    /// <summary>The task's output columns, in getter order.</summary>
    private protected abstract DataViewSchema.DetachedColumn[] OutputColumns(DataViewSchema inputSchema);

    /// <summary>Turns a forward pass's output (on the CPU, one row per image) into one value object per image.</summary>
    private protected abstract object[] DecodeOutputs(Tensor output, IReadOnlyList<ImageRead> images);

    /// <summary>A getter for output column <paramref name="column"/> reading the current row's value object.</summary>
    private protected abstract Delegate MakeGetter(int column, Func<object> current);

    internal DataViewSchema.DetachedColumn[] OutputColumnsFor(DataViewSchema inputSchema) => OutputColumns(inputSchema);

    internal Delegate GetterFor(int column, Func<object> current) => MakeGetter(column, current);

    /// <summary>The network's output for uint8 input pixels [N, 3, S, S], in one forward pass under inference mode, on the CPU.</summary>
    internal Tensor Forward(Tensor pixels)
    {
        if (_autoPending)
        {
            using var scope = NewDisposeScope();
            ChoosePrecision(Input.Normalize(pixels.to(_device)));
        }
        return WithNetwork(() =>
        {
            Interlocked.Increment(ref _forwardPasses);
            using var scope = NewDisposeScope();
            using var inference = inference_mode();
            var input = Input.Normalize(pixels.to(_device));
            if (_reduced is not null) return _reduced.forward(input.to(ScalarType.BFloat16)).to(float32).cpu().MoveToOuterDisposeScope();
            return _network.forward(input).cpu().MoveToOuterDisposeScope();
        });
    }

    /// <summary>Scores <paramref name="images"/> in one forward pass: one value object per image.</summary>
    internal object[] ScoreRows(IReadOnlyList<ImageRead> images)
    {
        using var scope = NewDisposeScope();
        return DecodeOutputs(Forward(stack(images.Select(i => i.Pixels).ToArray())), images);
    }

    /// <summary>
    /// Writes the merged network as a standard ONNX model (opset 17, dynamic batch): input <c>pixels</c>, float
    /// [batch, 3, S, S], raw pixel values 0..255 in <see cref="Input"/>'s channel order, NCHW (the normalisation is in the
    /// graph, BatchNorm folded). Outputs, classification: <c>logits</c> [batch, K] and <c>probabilities</c> [batch, K]
    /// (their softmax: the Score column's values); segmentation: <c>logits</c> [batch, K, S, S] and <c>mask</c>
    /// [batch, S, S] (int64 class indices at the model's resolution). Resizing images to S x S is not in the graph.
    /// float32 unless <see cref="OnnxExportOptions.Quantization"/> says otherwise (<see cref="Precision"/> is a scoring
    /// setting, not exported).
    /// </summary>
    /// <param name="stream">Where the model is written. Weights over protobuf's 2 GB limit need <see cref="ExportOnnx(string, OnnxExportOptions?)"/>.</param>
    public void ExportOnnx(Stream stream)
    {
        Host.CheckValue(stream, nameof(stream));
        WithNetwork(() => OnnxExport.Write(OnnxGraph(mlNet: false), stream));
    }

    /// <summary>Writes the model as <see cref="ExportOnnx(Stream)"/> does, with <paramref name="options"/> (e.g. int8 weights: <see cref="OnnxQuantization.DynamicInt8"/>).</summary>
    public void ExportOnnx(Stream stream, OnnxExportOptions options)
    {
        Host.CheckValue(stream, nameof(stream));
        Host.CheckValue(options, nameof(options));
        WithNetwork(() => OnnxExport.Write(OnnxGraph(mlNet: false), stream, options));
    }

    /// <summary>Writes the model as <see cref="ExportOnnx(Stream)"/> does, to a file (large weights as ONNX external data next to it).</summary>
    /// <param name="path">The .onnx file to write.</param>
    /// <param name="options">External data and quantization settings; null for the defaults.</param>
    public void ExportOnnx(string path, OnnxExportOptions? options = null)
    {
        Host.CheckNonWhiteSpace(path, nameof(path));
        WithNetwork(() => OnnxExport.Write(OnnxGraph(mlNet: false), path, options));
    }

    /// <summary>
    /// The model as a chain of ML.NET's own transformers that needs neither TorchSharp nor this library to load and score:
    /// ResizeImages (to S x S, or to <paramref name="sourceImageSize"/>, ignoring the aspect ratio) and ExtractPixels (raw 0..255, planar, in <see cref="Input"/>'s
    /// channel order) on <see cref="ImageColumnName"/>, which must hold images (LoadImages); ApplyOnnxModel with the
    /// merged network's ONNX bytes, which <c>mlContext.Model.Save</c> stores inside the .zip; then the task's output
    /// columns under this transformer's names. Classification: Score and PredictedLabel with this transformer's types and
    /// annotations (ML.NET's multiclass scorer over the logits). Segmentation: the predicted mask only, at the model's
    /// resolution (S * S class indices, not resized to each image's size), no colourised mask or scores. An application loads the saved
    /// .zip with Microsoft.ML, Microsoft.ML.ImageAnalytics, Microsoft.ML.OnnxTransformer and Microsoft.ML.OnnxRuntime.
    /// ML.NET's ResizeImages takes the nearest pixel where this transformer resamples bicubically with antialiasing, so
    /// on images of another size than S x S predictions can differ; <paramref name="sourceImageSize"/> avoids that.
    /// </summary>
    /// <param name="mlContext">The context the chain's transformers are created in.</param>
    /// <param name="sourceImageSize">
    /// The size of the images to score, when they all have one (e.g. 28 x 28 for Fashion-MNIST). ResizeImages then
    /// leaves them as they are and the graph resamples them to S x S as this transformer does (bicubic, rounded to
    /// 0..255), so predictions agree: exactly up to rounding when enlarging or keeping the size; when shrinking, the
    /// graph (opset 17) does not antialias and results differ somewhat. Images of another size are first resized to it
    /// (nearest pixel). Null (the default): ResizeImages goes straight to S x S.
    /// </param>
    /// <param name="quantization">The ONNX model's number format: float32 (the default), or int8 linear layers
    /// (<see cref="OnnxQuantization.DynamicInt8"/>), faster on CPUs with int8 kernels at a small cost in accuracy.</param>
    public TransformerChain<ITransformer> ToOnnxPipeline(MLContext mlContext, (int Width, int Height)? sourceImageSize = null,
        OnnxQuantization quantization = OnnxQuantization.None)
    {
        Host.CheckValue(mlContext, nameof(mlContext));
        if (sourceImageSize is var (width, height) && (width <= 0 || height <= 0))
            throw new ArgumentOutOfRangeException(nameof(sourceImageSize), sourceImageSize, "The source image size must be positive.");
        var column = OnnxScoringChain.UniqueColumns();
        byte[] onnx = WithNetwork(() =>
        {
            using var stream = new MemoryStream();
            var graph = OnnxGraph(mlNet: true, sourceImageSize);
            graph.RenameInterface(column);
            OnnxExport.Write(graph, stream, new OnnxExportOptions { Quantization = quantization });
            return stream.ToArray();
        });
        return OnnxScoringChain.Create(mlContext, this, onnx, column, sourceImageSize ?? (Input.ImageSize, Input.ImageSize));
    }

    /// <summary>
    /// Runs <paramref name="work"/> on the network, which cannot be disposed meanwhile: Dispose waits for running work,
    /// since freeing the weights under a forward pass would crash natively.
    /// </summary>
    private T WithNetwork<T>(Func<T> work)
    {
        _gate.EnterReadLock();
        try
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return work();
        }
        finally
        {
            _gate.ExitReadLock();
        }
    }

    private void WithNetwork(Action work) => WithNetwork(() => { work(); return true; });

    /// <summary>
    /// The ONNX graph of the merged network and the task's outputs. <paramref name="mlNet"/>: the graph ML.NET's
    /// OnnxTransformer scores, one row per run, so batch 1 and outputs of fixed shapes (ML.NET types a column from the
    /// declared shape; a symbolic batch would make it a vector of unknown size); otherwise a dynamic batch.
    /// </summary>
    /// <remarks><paramref name="source"/>: the size of the images fed when the graph resamples them (see <see cref="ToOnnxPipeline"/>).</remarks>
    internal abstract OnnxGraphBuilder OnnxGraph(bool mlNet, (int Width, int Height)? source = null);

    /// <summary>The outputs of <see cref="OnnxGraph"/>(mlNet: true) that ApplyOnnxModel reads.</summary>
    internal abstract string[] OnnxScoringOutputs { get; }

    /// <summary>
    /// The ML.NET transformers after ApplyOnnxModel that turn <see cref="OnnxScoringOutputs"/>, in the columns
    /// <paramref name="column"/> names them (see <see cref="OnnxScoringChain.UniqueColumns"/>), into this transformer's
    /// output columns; <paramref name="scored"/> is the (empty) view they are fitted on. The chain drops the graph's columns afterwards.
    /// </summary>
    internal abstract IEnumerable<ITransformer> OnnxScoringTail(MLContext mlContext, IDataView scored, Func<string, string> column);

    /// <summary>Scores in batches of <see cref="ScoringBatchSize"/> rather than row by row.</summary>
    public new IDataView Transform(IDataView input) => BatchScoringDataView.Create(Host, input, this);

    IDataView ITransformer.Transform(IDataView input) => Transform(input);

    /// <summary>ML.NET plumbing: the row-by-row mapper behind prediction engines. Not part of this library's API.</summary>
    public override IRowMapper MakeRowMapper(DataViewSchema schema) => new Mapper(this, schema);

    // ML.NET plumbing below: its base members are internal in ML.NET and compiled here against publicized references
    // (build/Publicize.targets), so overrides must be declared public; they are not part of this library's API.

    /// <summary>The version a model of this storage is saved with (an adapters-only model needs a reader that knows task models).</summary>
    private protected abstract VersionInfo VersionInfoFor(ModelStorage storage);

    /// <summary>Writes the task's column names (after the image column name).</summary>
    private protected abstract void SaveColumns(ModelSaveContext ctx);

    /// <summary>The JSON that rebuilds the network's modules (not its weights).</summary>
    private protected abstract string DescribeNetwork();

    /// <summary>The network's modules (freshly initialised) from <see cref="DescribeNetwork"/>'s JSON.</summary>
    private protected abstract nn.Module<Tensor, Tensor> BuildNetwork(string description);

    /// <summary>Writes the task's own data (e.g. label values), before the weights.</summary>
    private protected abstract void SaveTaskData(ModelSaveContext ctx);

    /// <summary>
    /// The task's columns and data as text, in a fixed order: with the base's fields and the weights, what
    /// <see cref="ContentChecksumStream"/> covers. The task's loader rebuilds the same parts from what it read.
    /// </summary>
    private protected abstract IEnumerable<string> TaskContent();

    /// <summary>
    /// Format: image column name; the task's column names; scoring batch size; the network's description (JSON); the
    /// training summary (JSON); the task's data; then the merged weights as one TorchSharp stream, and that stream's
    /// SHA-256 in another, and one SHA-256 over all of it in a third (see <see cref="VerifyContent"/>). A model with
    /// non-finite weights is not saved.
    /// </summary>
    public override void SaveModel(ModelSaveContext ctx)
    {
        Host.CheckValue(ctx, nameof(ctx));
        ctx.CheckAtModel();
        if (NonFinite.FirstIn(_network) is string bad)
            throw Host.Except($"The model has non-finite values (NaN or infinity) in '{bad}'; it is not saved.");
        ctx.SetVersionInfo(VersionInfoFor(Storage));
        ctx.SaveNonEmptyString(ImageColumnName);
        SaveColumns(ctx);
        ctx.Writer.Write(ScoringBatchSize);
        ctx.Writer.Write(DescribeNetwork());
        ctx.Writer.Write(JsonSerializer.Serialize(Summary, SummaryJson));
        SaveTaskData(ctx);
        byte[] checksum = [];
        if (Storage == ModelStorage.AdaptersOnly)
            ctx.SaveBinaryStream(TaskModelStream, writer => checksum = WeightsChecksum.Write(writer.BaseStream, _taskModel!.Write));
        else
            ctx.SaveBinaryStream(WeightsStream, writer => checksum = WeightsChecksum.Write(writer.BaseStream, w => _network.save(w)));
        ctx.SaveBinaryStream(ChecksumStream, writer => writer.Write(checksum));
        ctx.SaveBinaryStream(ContentChecksumStream, writer => writer.Write(ContentChecksum(checksum)));
    }

    /// <summary>The content checksum this model is saved with, given its weights stream's SHA-256.</summary>
    internal byte[] ContentChecksum(byte[] weightsSha256) => ContentChecksumWithDescription(DescribeNetwork(), weightsSha256);

    /// <summary>The content checksum of this model with another network description (what a forger would compute).</summary>
    internal byte[] ContentChecksumWithDescription(string networkJson, byte[] weightsSha256) => ContentChecksum(ImageColumnName,
        new SavedHeader(ScoringBatchSize, networkJson, Summary, JsonSerializer.Serialize(Summary, SummaryJson)), TaskContent(), weightsSha256);

    /// <summary>What <see cref="SaveModel"/> wrote between the task's columns and its data (the summary also as saved).</summary>
    private protected sealed record SavedHeader(int ScoringBatchSize, string NetworkJson, TrainingSummary Summary, string SummaryJson);

    /// <summary>SHA-256 over every part a saved model holds, each length-prefixed, then the weights stream's SHA-256.</summary>
    private static byte[] ContentChecksum(string imageColumn, SavedHeader header, IEnumerable<string> task, byte[] weights)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        string[] parts = [imageColumn, header.ScoringBatchSize.ToString(CultureInfo.InvariantCulture), header.NetworkJson, header.SummaryJson, .. task];
        foreach (string part in parts)
        {
            var bytes = Encoding.UTF8.GetBytes(part);
            hash.AppendData(BitConverter.GetBytes(bytes.Length));
            hash.AppendData(bytes);
        }
        hash.AppendData(weights);
        return hash.GetHashAndReset();
    }

    /// <summary>
    /// Checks the saved model's content checksum, before any module is built: an edited image size, mean, label order,
    /// column name or architecture would otherwise load and score differently, or build modules of any size. Models
    /// written before <paramref name="checksummedFrom"/> have no such checksum; their weights are still checked by
    /// <see cref="LoadWeights"/>. Then bounds-checks the network description, since a recomputed checksum proves nothing.
    /// </summary>
    private protected static void VerifyContent(ModelLoadContext ctx, uint checksummedFrom, string imageColumn, SavedHeader header, IEnumerable<string> task)
    {
        byte[]? expected = null;
        if (ctx.TryLoadBinaryStream(ContentChecksumStream, reader => expected = reader.ReadBytes(32)))
        {
            byte[]? weights = null;
            string stream = WeightsStreamOf(ctx);
            ctx.TryLoadBinaryStream(stream, reader => weights = WeightsChecksum.Hash(reader.BaseStream));
            byte[]? weightsExpected = null;
            if (ctx.TryLoadBinaryStream(ChecksumStream, reader => weightsExpected = reader.ReadBytes(32)) && !weightsExpected.AsSpan().SequenceEqual(weights))
                throw new InvalidDataException($"The model's '{stream}' stream does not match its SHA-256 checksum: the file was damaged or altered.");
            if (!expected.AsSpan().SequenceEqual(ContentChecksum(imageColumn, header, task, weights!)))
            {
                throw new InvalidDataException($"The model's columns, settings, network description or labels do not match its SHA-256 checksum "
                    + $"('{ContentChecksumStream}'): the file was damaged or altered.");
            }
        }
        else if (ctx.Header.ModelVerWritten >= checksummedFrom)
        {
            throw new InvalidDataException($"The model has no '{ContentChecksumStream}' checksum stream, which its version always writes: the file was altered.");
        }
        SavedDescription.CheckBounds(header.NetworkJson);
    }

    /// <summary>
    /// Where a loaded model scores: the MLContext's <c>GpuDeviceId</c> when CUDA has it, else the CPU if its
    /// <c>FallbackToCpu</c> allows (with a warning in the log), else an error.
    /// </summary>
    private protected static Device ScoringDevice(IHostEnvironment env)
    {
        var context = env as IHostEnvironmentInternal;
        if (context?.GpuDeviceId is null) return CPU;
        using var ch = env.Register("RepAdapterModelLoad").Start("Choosing the scoring device");
        return TorchDevices.Select(context.GpuDeviceId, context.FallbackToCpu, ch.Warning);
    }

    private protected static SavedHeader LoadHeader(IHostEnvironment env, ModelLoadContext ctx)
    {
        TorchDevices.EnsureLibTorch();
        int batchSize = ctx.Reader.ReadInt32();
        env.CheckDecode(batchSize > 0, "The scoring batch size must be positive.");
        string network = ctx.Reader.ReadString();
        string summaryJson = ctx.Reader.ReadString();
        var summary = JsonSerializer.Deserialize<TrainingSummary>(summaryJson, SummaryJson) ?? throw env.ExceptDecode("Missing training summary.");
        return new SavedHeader(batchSize, network, summary, summaryJson);
    }

    /// <summary>
    /// The stream that holds the model's weights: the merged weights, or an adapters-only task model. Both at once is
    /// refused, since the checksums cover one and the loader would read the other.
    /// </summary>
    private static string WeightsStreamOf(ModelLoadContext ctx)
    {
        bool merged = ctx.TryLoadBinaryStream(WeightsStream, _ => { }), taskModel = ctx.TryLoadBinaryStream(TaskModelStream, _ => { });
        return (merged, taskModel) switch
        {
            (true, false) => WeightsStream,
            (false, true) => TaskModelStream,
            (true, true) => throw new InvalidDataException($"The model holds both a '{WeightsStream}' and a '{TaskModelStream}' stream: the file was altered."),
            _ => throw new InvalidDataException($"The model has no '{WeightsStream}' weights stream (nor a '{TaskModelStream}' one)."),
        };
    }

    /// <summary>
    /// The saved network, built from its description: with the merged weights of the weights stream, or, for an
    /// adapters-only task model, from its backbone's source with the task model applied and merged. The task model (null
    /// for a merged save) comes back too, so that the model can be saved the same way again.
    /// </summary>
    /// <param name="ctx">The model's load context.</param>
    /// <param name="header">What the loader read before the weights.</param>
    /// <param name="build">Builds the network's modules from its description.</param>
    /// <param name="adaptersOnlyFrom">The task's first model version that writes task models: an older file holding one was altered.</param>
    private protected static (T Network, TaskModel? TaskModel) LoadNetwork<T>(ModelLoadContext ctx, SavedHeader header, Func<string, T> build, uint adaptersOnlyFrom)
        where T : nn.Module<Tensor, Tensor>
    {
        if (WeightsStreamOf(ctx) == WeightsStream)
        {
            var merged = SavedDescription.Build(header.NetworkJson, build);
            LoadWeights(ctx, merged);
            return (merged, null);
        }
        if (ctx.Header.ModelVerWritten < adaptersOnlyFrom)
            throw new InvalidDataException($"The model's version {ctx.Header.ModelVerWritten:X8} writes no '{TaskModelStream}' stream: the file was altered.");
        var network = SavedDescription.Build(header.NetworkJson, build);
        TaskModel? taskModel = null;
        try
        {
            ctx.TryLoadBinaryStream(TaskModelStream, reader => taskModel = ReadTaskModel(ctx, reader.BaseStream));
            var source = header.Summary.Backbone ?? throw new InvalidDataException("The task model does not say where its backbone comes from.");
            taskModel!.Rebuild(network, source, header.Summary.Adapters);
            NonFinite.ThrowIfAny(network, $"The model's '{TaskModelStream}' task model, merged");
            return (network, taskModel);
        }
        catch
        {
            network.Dispose();
            taskModel?.Dispose();
            throw;
        }
    }

    /// <summary>The task-model stream read into memory (at most <see cref="MaxTaskModelBytes"/>), checked against its SHA-256, then parsed.</summary>
    private static TaskModel ReadTaskModel(ModelLoadContext ctx, Stream source)
    {
        using var copy = new MemoryStream();
        var buffer = new byte[81920];
        for (int read; (read = source.Read(buffer)) > 0;)
        {
            if (copy.Length + read > MaxTaskModelBytes) throw new InvalidDataException($"The model's '{TaskModelStream}' stream is over {MaxTaskModelBytes:N0} bytes.");
            copy.Write(buffer, 0, read);
        }
        byte[]? expected = null;
        if (!ctx.TryLoadBinaryStream(ChecksumStream, reader => expected = reader.ReadBytes(32)) || !expected.AsSpan().SequenceEqual(SHA256.HashData(copy.ToArray())))
            throw new InvalidDataException($"The model's '{TaskModelStream}' stream does not match its SHA-256 checksum: the file was damaged or altered.");
        copy.Position = 0;
        return TaskModel.Read(copy, TaskModelStream);
    }

    /// <summary>
    /// Loads the weights stream into <paramref name="network"/> (built from the saved description), checks it against
    /// its SHA-256 (models saved before the checksum have none) and checks that every value is finite. On failure the
    /// network is disposed and the error names the stream and why.
    /// </summary>
    private static void LoadWeights(ModelLoadContext ctx, nn.Module network)
    {
        try
        {
            byte[]? actual = null;
            if (!ctx.TryLoadBinaryStream(WeightsStream, reader => actual = WeightsChecksum.Read(reader.BaseStream, WeightsStream, network)))
                throw new InvalidDataException($"The model has no '{WeightsStream}' weights stream.");
            byte[]? expected = null;
            if (ctx.TryLoadBinaryStream(ChecksumStream, reader => expected = reader.ReadBytes(32)) && !expected.AsSpan().SequenceEqual(actual))
                throw new InvalidDataException($"The model's '{WeightsStream}' weights stream does not match its SHA-256 checksum: the file was damaged or altered.");
            NonFinite.ThrowIfAny(network, $"The model's '{WeightsStream}' weights stream");
        }
        catch
        {
            network.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Creates the transformer around a loaded <paramref name="network"/> and keeps its <paramref name="taskModel"/> (an
    /// adapters-only file saves as one again); both are disposed if that fails.
    /// </summary>
    private protected static T CreateLoaded<T>(nn.Module network, TaskModel? taskModel, Func<T> create) where T : RepAdapterTransformerBase
    {
        try
        {
            var transformer = create();
            transformer.KeepTaskModel(taskModel, taskModel is null ? ModelStorage.Merged : ModelStorage.AdaptersOnly);
            return transformer;
        }
        catch
        {
            network.Dispose();
            taskModel?.Dispose();
            throw;
        }
    }

    /// <summary>Frees the network's native memory, once no forward pass is running.</summary>
    public void Dispose()
    {
        _gate.EnterWriteLock();
        try
        {
            if (_disposed) return;
            _disposed = true;
            _network.Dispose();
            _reduced?.Dispose();
            _taskModel?.Dispose();
        }
        finally
        {
            _gate.ExitWriteLock();
        }
    }

    /// <summary>Row-by-row scoring (PredictionEngine); the batch path is <see cref="BatchScoringDataView"/>.</summary>
    private sealed class Mapper : MapperBase
    {
        private readonly RepAdapterTransformerBase _transformer;
        private readonly int _imageColumnIndex;
        private readonly int _outputCount;

        public Mapper(RepAdapterTransformerBase parent, DataViewSchema inputSchema)
            : base(parent.Host.Register(nameof(Mapper)), inputSchema, parent)
        {
            _transformer = parent;
            ImageColumn.Check(Host, inputSchema, parent.ImageColumnName);
            _imageColumnIndex = inputSchema[parent.ImageColumnName].Index;
            _outputCount = parent.OutputColumns(inputSchema).Length;
        }

        public override DataViewSchema.DetachedColumn[] GetOutputColumnsCore() => _transformer.OutputColumns(InputSchema);

        public override Delegate[] CreateGetters(DataViewRow input, Func<int, bool> activeOutput, out Action disposer)
        {
            // Every output column shares one forward pass per row.
            var readImage = ImageColumn.CreateReader(input, _transformer.ImageColumnName, _transformer.Preprocessor);
            long cachedPosition = -1;
            object cached = null!;
            object Current()
            {
                if (cachedPosition != input.Position)
                {
                    using var scope = NewDisposeScope();
                    cached = _transformer.ScoreRows([readImage()])[0];
                    cachedPosition = input.Position;
                }
                return cached;
            }
            disposer = null!;
            return [.. Enumerable.Range(0, _outputCount).Select(c => activeOutput(c) ? _transformer.MakeGetter(c, Current) : null!)];
        }

        public override Delegate MakeGetter(DataViewRow input, int iinfo, Func<int, bool> activeOutput, out Action disposer) =>
            throw new NotSupportedException("Getters are created together in CreateGetters.");

        public override Func<int, bool> GetDependenciesCore(Func<int, bool> activeOutput) =>
            column => column == _imageColumnIndex && Enumerable.Range(0, _outputCount).Any(activeOutput);

        public override void SaveModel(ModelSaveContext ctx) => _transformer.SaveModel(ctx);
    }
}
