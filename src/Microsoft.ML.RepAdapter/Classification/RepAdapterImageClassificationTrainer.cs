using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Checkpoints;
using Microsoft.ML.RepAdapter.MLNet;
using Microsoft.ML.RepAdapter.Training;
using Microsoft.ML.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Classification;

/// <summary>
/// Fine-tunes a pretrained vision backbone for image classification with RepAdapter (or a baseline policy), then
/// merges the adapters so that the returned transformer runs the plain backbone at no extra cost.
/// Input: an image column (MLImage from LoadImages, or encoded bytes from LoadRawImageBytes) and a key label column
/// (MapValueToKey). Output: Score (class probabilities) and PredictedLabel (key).
/// </summary>
public sealed class RepAdapterImageClassificationTrainer : IEstimator<RepAdapterImageClassificationTransformer>
{
    /// <summary>Options of <see cref="RepAdapterImageClassificationTrainer"/>. Defaults follow the paper's VTAB-1k recipe.</summary>
    public sealed class Options
    {
        public string LabelColumnName = DefaultColumnNames.Label;
        public string ImageColumnName = "Image";
        public string ScoreColumnName = DefaultColumnNames.Score;
        public string PredictedLabelColumnName = DefaultColumnNames.PredictedLabel;

        /// <summary>
        /// Backbone preset (see <see cref="BackbonePresets"/>) or <see cref="PretrainedBackbones.MLNetResNet18"/>. With a
        /// <see cref="CheckpointPath"/> it is optional (null: the architecture is read from the checkpoint); without one,
        /// null means <c>vit_base_patch16_224</c> from random weights.
        /// </summary>
        public string? Architecture;

        /// <summary>Pretrained weights (Google .npz, timm / Hugging Face .safetensors, PyTorch .pth); format read from the content.</summary>
        public string? CheckpointPath;

        /// <summary>An already-built (and loaded) backbone; the trainer copies its weights and leaves it untouched.</summary>
        public Backbone? Backbone;

        /// <summary>Input resolution; null uses the backbone's.</summary>
        public int? ImageSize;

        /// <summary>Per-channel mean and std override (on the backbone's pixel scale); null uses the backbone's.</summary>
        public float[]? Mean, Std;

        /// <summary>Keep the pre-logits layer of Google's ImageNet-21k checkpoints (old timm behaviour).</summary>
        public bool KeepPreLogits;

        /// <summary>
        /// ViT attention heads when the checkpoint's shapes do not tell them and the width / 64 rule does not hold (e.g. small
        /// custom ViTs); null uses the preset's or that rule.
        /// </summary>
        public int? NumHeads;

        public AdaptationMethod Method = AdaptationMethod.RepAdapter;
        public AdapterPlacement Placement = AdapterPlacement.Block;
        public TrainableParameters Trainable = TrainableParameters.AdaptersAndHead;
        public int AdapterHidden = 8;
        public int AdapterGroups = 2;
        public float AdapterScale = 1f;
        public double AdapterDropout = 0.1;

        /// <summary>Choose the adapter scale from <see cref="ScaleCandidates"/> by validation accuracy.</summary>
        public bool SearchScale;
        public float[] ScaleCandidates = [.. AdapterConfig.ScaleGrid];

        /// <summary>Fraction of the training data held out for the scale search when no <see cref="ValidationSet"/> is given.</summary>
        public double ValidationFraction = 0.2;

        /// <summary>Stochastic depth rate (ViT), linear over depth.</summary>
        public double DropPathRate = 0.1;

        public int Epochs = 100;
        public int BatchSize = 64;
        public double LearningRate = 1e-3;
        public double WeightDecay = 1e-4;
        public int WarmupEpochs = 10;
        public double WarmupLearningRate = 1e-6;
        public double FinalLearningRate = 1e-5;

        /// <summary>
        /// Seeds shuffling, the new head, adapters, dropout and drop path. On the CPU a run is bitwise reproducible for the
        /// same seed and data on the same machine with the same thread count; across CPUs (libtorch's and oneDNN's kernels)
        /// or thread counts float rounding differs, so results agree only approximately.
        /// </summary>
        public int Seed = 42;

        /// <summary>Reported after each epoch; also used for the scale search when given.</summary>
        public IDataView? ValidationSet;

        /// <summary>CUDA device to train on (needs the CUDA TorchSharp backend); null trains on the CPU.</summary>
        public int? GpuDeviceId;
        public bool FallbackToCpu = true;

        /// <summary>Torch intra-op threads; null keeps TorchSharp's default. Like the seed, this is a process-wide torch setting.</summary>
        public int? NumberOfThreads;

        /// <summary>Rows scored per forward pass by the transformer's batch Transform.</summary>
        public int ScoringBatchSize = 32;

        internal FineTuneSettings Settings => new(Epochs, BatchSize, LearningRate, WeightDecay, WarmupEpochs, WarmupLearningRate, FinalLearningRate, Seed);

        internal AdapterConfig Adapters(float scale) => new(Method, Placement, AdapterHidden, AdapterGroups, scale, AdapterDropout);

        /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> naming the first option that cannot work.</summary>
        internal void Validate()
        {
            Settings.Validate();
            OptionCheck.That(ImageSize is null or > 0, nameof(ImageSize), ImageSize, "must be positive (or null for the backbone's)");
            OptionCheck.That(Mean is null || Mean.Length == 3 && Mean.All(float.IsFinite), nameof(Mean), Mean, "needs three finite values (or null)");
            OptionCheck.That(Std is null || Std.Length == 3 && Std.All(v => float.IsFinite(v) && v != 0), nameof(Std), Std,
                "needs three finite, non-zero values (or null)");
            OptionCheck.That(NumHeads is null or > 0, nameof(NumHeads), NumHeads, "must be positive (or null)");
            OptionCheck.That(AdapterHidden > 0, nameof(AdapterHidden), AdapterHidden, "must be positive");
            OptionCheck.That(AdapterGroups > 0 && AdapterHidden % AdapterGroups == 0, nameof(AdapterGroups), AdapterGroups,
                $"must be positive and divide AdapterHidden ({AdapterHidden})");
            OptionCheck.That(float.IsFinite(AdapterScale), nameof(AdapterScale), AdapterScale, "must be finite");
            OptionCheck.That(AdapterDropout is >= 0 and < 1, nameof(AdapterDropout), AdapterDropout, "must be in [0, 1)");
            OptionCheck.That(!SearchScale || ScaleCandidates is { Length: > 0 } && ScaleCandidates.All(float.IsFinite), nameof(ScaleCandidates),
                ScaleCandidates, "needs at least one finite scale to search");
            OptionCheck.That(ValidationFraction is > 0 and < 1, nameof(ValidationFraction), ValidationFraction, "must be in (0, 1)");
            OptionCheck.That(DropPathRate is >= 0 and < 1, nameof(DropPathRate), DropPathRate, "must be in [0, 1)");
            OptionCheck.That(GpuDeviceId is null or >= 0, nameof(GpuDeviceId), GpuDeviceId, "cannot be negative");
            OptionCheck.That(NumberOfThreads is null or > 0, nameof(NumberOfThreads), NumberOfThreads, "must be positive (or null for TorchSharp's default)");
            OptionCheck.That(ScoringBatchSize > 0, nameof(ScoringBatchSize), ScoringBatchSize, "must be positive");
        }
    }

    private readonly IHost _host;
    private readonly Options _options;

    internal RepAdapterImageClassificationTrainer(IHostEnvironment env, Options options)
    {
        _host = Contracts.CheckRef(env, nameof(env)).Register(nameof(RepAdapterImageClassificationTrainer));
        _host.CheckValue(options, nameof(options));
        _host.CheckNonEmpty(options.LabelColumnName, nameof(options.LabelColumnName));
        _host.CheckNonEmpty(options.ImageColumnName, nameof(options.ImageColumnName));
        options.Validate();
        _options = options;
    }

    public SchemaShape GetOutputSchema(SchemaShape inputSchema)
    {
        CheckInputSchema(inputSchema);
        var columns = inputSchema.ToDictionary(c => c.Name);
        inputSchema.TryFindColumn(_options.LabelColumnName, out var label);
        columns[_options.ScoreColumnName] = new SchemaShape.Column(_options.ScoreColumnName, SchemaShape.Column.VectorKind.Vector,
            NumberDataViewType.Single, false, new SchemaShape(AnnotationUtils.AnnotationsForMulticlassScoreColumn(label)));
        columns[_options.PredictedLabelColumnName] = new SchemaShape.Column(_options.PredictedLabelColumnName, SchemaShape.Column.VectorKind.Scalar,
            NumberDataViewType.UInt32, true, label.Annotations);
        return new SchemaShape(columns.Values);
    }

    public RepAdapterImageClassificationTransformer Fit(IDataView input)
    {
        _host.CheckValue(input, nameof(input));
        CheckInputSchema(SchemaShape.Create(input.Schema));
        using var ch = _host.Start("Training RepAdapter image classifier");
        if (_options.NumberOfThreads is int threads) set_num_threads(threads);
        var device = TorchDevices.Select(_options.GpuDeviceId, _options.FallbackToCpu);
        var labels = LabelKeyValues.FromColumn(input.Schema[_options.LabelColumnName]);

        var (source, ownsSource) = CreateBackbone(ch, labels.Count);
        using var created = ownsSource ? source : null;
        // Every run (each scale candidate, then the final one) builds a fresh model from this and the source's weights.
        var runs = RunDescriptor(source);
        var preprocessor = new ImagePreprocessor(runs.Input);
        using var data = ReadImages(input, preprocessor, labels.Count, "training data");
        using var validation = _options.ValidationSet is null ? null : ReadImages(_options.ValidationSet, preprocessor, labels.Count, "validation set");
        ch.Info($"{data.Count} training images, {labels.Count} classes, backbone {source.Architecture} at {runs.Input.ImageSize} px, device {device}.");

        float scale = _options.AdapterScale;
        Dictionary<string, double>? searched = null;
        if (_options.SearchScale && UsesAdapters) (scale, searched) = SearchScale(ch, runs, source, data, validation, labels.Count, device);
        var (model, _) = TrainOnce(ch, runs, source, data, validation, labels.Count, scale, device, "final");
        long trainable = model.CountParameters(trainableOnly: true);
        int merged = model.MergeAdapters();
        if (NonFinite.FirstIn(model) is string bad)
        {
            model.Dispose();
            throw _host.Except($"The merged model has non-finite values (NaN or infinity) in '{bad}' (AdapterScale {scale:G} too large?); no model is returned.");
        }
        ch.Info($"Merged {merged} adapters into the backbone ({model.CountParameters():N0} parameters, as the plain architecture).");
        var summary = new TrainingSummary(_options.Method, _options.Placement, _options.Trainable, scale, trainable, merged, searched);
        return new RepAdapterImageClassificationTransformer(_host, model, labels, summary, _options.ImageColumnName,
            _options.ScoreColumnName, _options.PredictedLabelColumnName, _options.ScoringBatchSize, device);
    }

    private bool UsesAdapters => _options.Trainable is TrainableParameters.AdaptersAndHead or TrainableParameters.AdaptersHeadAndBiases;

    /// <summary>
    /// Picks s by validation accuracy, never on test data: on the validation set when given, otherwise on a
    /// stratified hold-out of the training data (the final model is then retrained on all of it).
    /// </summary>
    private (float scale, Dictionary<string, double> accuracy) SearchScale(IChannel ch, BackboneDescriptor runs, Backbone source,
        LabeledImages data, LabeledImages? validation, int classes, Device device)
    {
        var (train, holdout) = validation is null ? data.SplitStratified(_options.ValidationFraction, _options.Seed) : (data, validation);
        try
        {
            if (holdout.Count == 0) throw _host.Except("The scale search needs validation images: give a ValidationSet or more training images per class.");
            var accuracy = new Dictionary<string, double>();
            foreach (float candidate in _options.ScaleCandidates)
            {
                var (model, _) = TrainOnce(ch, runs, source, train, null, classes, candidate, device, $"scale {Key(candidate)}");
                using (model) accuracy[Key(candidate)] = FineTuning.Accuracy(model, holdout, device, _options.BatchSize);
                ch.Info($"Scale search: s = {Key(candidate)} -> validation accuracy {accuracy[Key(candidate)]:P2}");
            }
            float best = _options.ScaleCandidates.MaxBy(s => accuracy[Key(s)]);
            ch.Info($"Scale search chose s = {Key(best)} ({(validation is null ? $"{holdout.Count} held-out training images" : "the validation set")}).");
            return (best, accuracy);
        }
        finally
        {
            if (validation is null)
            {
                train.Dispose();
                holdout.Dispose();
            }
        }
    }

    private static string Key(float scale) => scale.ToString("G", System.Globalization.CultureInfo.InvariantCulture);

    private (Backbone model, EpochReport report) TrainOnce(IChannel ch, BackboneDescriptor runs, Backbone source,
        LabeledImages train, LabeledImages? validation, int classes, float scale, Device device, string run)
    {
        var model = runs.Build();
        try
        {
            model.load_state_dict(source.state_dict(), strict: true);
            TorchDevices.Seed(_options.Seed);
            model.ResetClassifier(classes);
            if (UsesAdapters) model.AttachAdapters(_options.Adapters(scale));
            model.SetTrainable(_options.Trainable);
            model.to(device);
            ch.Info($"Training ({run}): {model.CountParameters(trainableOnly: true):N0} trainable of {model.CountParameters():N0} parameters "
                + $"({_options.Trainable}{(UsesAdapters ? $", {_options.Method} {_options.Placement}, s = {scale:G}" : "")}).");
            using var pch = _host.StartProgressChannel($"RepAdapter training ({run})");
            EpochReport? last = null;
            pch.SetHeader(new ProgressHeader(["Loss", "Train accuracy"], ["epochs"]), e =>
            {
                if (last is null) return;
                e.SetProgress(0, last.Epoch, last.Epochs);
                e.SetMetric(0, last.Loss);
                e.SetMetric(1, last.TrainAccuracy);
            });
            var report = FineTuning.Train(model, train, validation, _options.Settings, device,
                progress: r => { last = r; ch.Info(r.ToString()); },
                checkAlive: _host.CheckAlive);
            return (model, report);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>The source backbone, and whether the trainer created it (and so disposes it); a given one is only read.</summary>
    private (Backbone backbone, bool owned) CreateBackbone(IChannel ch, int classes)
    {
        if (_options.Backbone is { } given) return (given, false);
        Backbone backbone;
        if (_options.CheckpointPath is { } path)
        {
            var loaded = PretrainedBackbones.Load(path, _options.Architecture, classes, _options.ImageSize, _options.KeepPreLogits, _options.NumHeads);
            ch.Info(loaded.Report.ToString());
            backbone = loaded.Backbone;
        }
        else if (_options.Architecture == PretrainedBackbones.MLNetResNet18)
        {
            var loaded = PretrainedBackbones.LoadMLNetResNet18(classes);
            ch.Info(loaded.Report.ToString());
            backbone = loaded.Backbone;
        }
        else
        {
            string preset = _options.Architecture ?? "vit_base_patch16_224";
            ch.Warning($"No CheckpointPath: {preset} starts from random weights. Give pretrained weights for real fine-tuning.");
            backbone = BackbonePresets.Create(preset, classes, imageSize: _options.ImageSize);
        }
        return (backbone, true);
    }

    /// <summary>The source's architecture with this run's drop path and normalisation overrides.</summary>
    private BackboneDescriptor RunDescriptor(Backbone source)
    {
        if (_options.ImageSize is int size && size != source.Input.ImageSize)
            throw _host.Except($"ImageSize {size} differs from the backbone's input size {source.Input.ImageSize}; build the backbone at that size.");
        var input = source.Input with { Mean = _options.Mean ?? source.Input.Mean, Std = _options.Std ?? source.Input.Std };
        if (input.Mean.Length != 3 || input.Std.Length != 3) throw _host.Except("Mean and Std need one value per channel (3).");
        return source.Describe().WithDropPathRate(_options.DropPathRate) with { Input = input };
    }

    /// <summary>Decodes, resizes and labels every row; errors name the column, the row and the value at fault.</summary>
    private LabeledImages ReadImages(IDataView data, ImagePreprocessor preprocessor, int classes, string what)
    {
        CheckInputSchema(SchemaShape.Create(data.Schema));
        var labelColumn = data.Schema[_options.LabelColumnName];
        if (labelColumn.Type.GetKeyCount() != (ulong)classes)
            throw _host.Except($"The {what}'s label column '{_options.LabelColumnName}' has {labelColumn.Type.GetKeyCount()} keys, the training data {classes}: map both with the same MapValueToKey.");
        var pixels = new List<Tensor>();
        var labels = new List<long>();
        try
        {
            // Text columns too (cheap): an image that cannot be loaded is then reported with its path.
            var textColumns = data.Schema.Where(c => c.Type is TextDataViewType);
            using var cursor = data.GetRowCursor([labelColumn, data.Schema[_options.ImageColumnName], .. textColumns]);
            var labelGetter = cursor.GetGetter<uint>(labelColumn);
            var readPixels = ImageColumn.CreatePixelReader(cursor, _options.ImageColumnName, preprocessor);
            uint key = 0;
            while (cursor.MoveNext())
            {
                _host.CheckAlive();
                labelGetter(ref key);
                if (key == 0)
                    throw _host.Except($"Row {cursor.Position} of the {what}: label column '{_options.LabelColumnName}' is missing or holds a value unknown to its key mapping.");
                pixels.Add(readPixels());
                labels.Add(key - 1);
            }
            if (pixels.Count == 0) throw _host.Except($"The {what} has no rows.");
            if (what == "training data" && labels.Distinct().Count() < 2)
                throw _host.Except($"The training data has a single class ({labels[0] + 1} of {classes} keys): classification needs at least two.");
            return new LabeledImages(stack(pixels), tensor(labels.ToArray()));
        }
        finally
        {
            foreach (var p in pixels) p.Dispose();
        }
    }

    private void CheckInputSchema(SchemaShape schema)
    {
        if (!schema.TryFindColumn(_options.LabelColumnName, out var label))
            throw _host.ExceptSchemaMismatch(nameof(schema), "label", _options.LabelColumnName);
        if (!label.IsKey || label.Kind != SchemaShape.Column.VectorKind.Scalar || label.ItemType.RawType != typeof(uint))
            throw _host.ExceptSchemaMismatch(nameof(schema), "label", _options.LabelColumnName,
                "a key (map it with mlContext.Transforms.Conversion.MapValueToKey)", label.GetTypeString());
        ImageColumn.Check(_host, schema, _options.ImageColumnName);
    }
}
