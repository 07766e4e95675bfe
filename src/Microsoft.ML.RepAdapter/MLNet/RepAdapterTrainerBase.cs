using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Checkpoints;
using Microsoft.ML.RepAdapter.Torch;
using Microsoft.ML.RepAdapter.Training;
using Microsoft.ML.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.MLNet;

/// <summary>What the training run that produced a model did; saved with the model.</summary>
/// <param name="Method">The adaptation method.</param>
/// <param name="Placement">Where the adapters were.</param>
/// <param name="Trainable">What was trained.</param>
/// <param name="AdapterScale">The scale s trained and merged with.</param>
/// <param name="TrainableParameters">How many parameters the run updated.</param>
/// <param name="AdaptersMerged">How many adapters were folded into the backbone.</param>
/// <param name="ScaleSearchAccuracy">The validation metric of each searched scale, when the scale was searched.</param>
public sealed record TrainingSummary(
    AdaptationMethod Method,
    AdapterPlacement Placement,
    TrainableParameters Trainable,
    float AdapterScale,
    long TrainableParameters,
    int AdaptersMerged,
    IReadOnlyDictionary<string, double>? ScaleSearchAccuracy = null);

/// <summary>
/// The training flow every RepAdapter trainer shares (ML.NET's TorchSharpBaseTrainer, for adapters): choose and load
/// the backbone, read the data, optionally search the adapter scale on validation data, train adapters and head with the
/// paper's recipe, merge the adapters, and hand the merged network to the task's transformer. A task supplies its
/// columns, targets, network head and objective (<see cref="ImageTask"/>) and its transformer.
/// </summary>
/// <typeparam name="TOptions">The task's options.</typeparam>
/// <typeparam name="TTransformer">The task's transformer, holding the merged network.</typeparam>
public abstract class RepAdapterTrainerBase<TOptions, TTransformer> : IEstimator<TTransformer>
    where TOptions : RepAdapterTrainerOptions
    where TTransformer : class, ITransformer
{
    private protected RepAdapterTrainerBase(IHostEnvironment env, TOptions options, string name)
    {
        Host = Contracts.CheckRef(env, nameof(env)).Register(name);
        Host.CheckValue(options, nameof(options));
        options.Validate();
        TrainerOptions = options;
    }

    private protected IHost Host { get; }

    private protected TOptions TrainerOptions { get; }

    /// <summary>What the trainer's log and progress channels are called, e.g. "RepAdapter image classifier".</summary>
    private protected abstract string TrainerName { get; }

    /// <inheritdoc/>
    public abstract SchemaShape GetOutputSchema(SchemaShape inputSchema);

    /// <summary>Throws a schema error naming the column when the task's input columns are missing or of the wrong type.</summary>
    private protected abstract void CheckInputSchema(SchemaShape inputSchema);

    /// <summary>The task for one Fit on <paramref name="trainingData"/>.</summary>
    private protected abstract ImageTask CreateTask(IDataView trainingData);

    /// <summary>The task's transformer around the merged <paramref name="network"/>.</summary>
    private protected abstract TTransformer CreateTransformer(ImageTask task, nn.Module<Tensor, Tensor> network, ImageInputSpec input,
        TrainingSummary summary, Device device);

    /// <summary>Trains adapters (or the chosen baseline) on <paramref name="input"/> and returns the merged model.</summary>
    public TTransformer Fit(IDataView input)
    {
        Host.CheckValue(input, nameof(input));
        CheckInputSchema(SchemaShape.Create(input.Schema));
        using var ch = Host.Start($"Training {TrainerName}");
        if (TrainerOptions.NumberOfThreads is int threads) set_num_threads(threads);
        // MLContext's seed, GpuDeviceId and FallbackToCpu, unless the options override them (as ML.NET's TorchSharp trainers).
        var context = Host as IHostEnvironmentInternal;
        int seed = TrainerOptions.Seed ?? context?.Seed ?? 42;
        var device = TorchDevices.Select(TrainerOptions.GpuDeviceId ?? context?.GpuDeviceId,
            TrainerOptions.FallbackToCpu ?? context?.FallbackToCpu ?? false, ch.Warning);
        var task = CreateTask(input);
        var options = TrainerOptions;

        // A pass over the targets alone (no images): class checks and counts, and the rows for stratified hold-outs.
        var classOfRow = task.ScanTargets(input, "training data", training: true);
        if (options.ValidationSet is not null) task.ScanTargets(options.ValidationSet, "validation set", training: false);
        var heldOut = options.ValidationSet is null && options.ValidationSetFraction is double fraction
            ? TrainingImages.StratifiedHoldOut(classOfRow, fraction, seed)
            : null;
        if (heldOut is { Count: 0 }) throw Host.Except("ValidationSetFraction held out no image: give more training images per class, or a ValidationSet.");

        var (source, ownsSource) = CreateBackbone(ch, task.BackboneClasses);
        using var created = ownsSource ? source : null;
        // Every run (each scale candidate, then the final one) builds a fresh model from this and the source's weights.
        var runs = RunDescriptor(source);
        var preprocessor = new ImagePreprocessor(runs.Input);
        TrainingImages Read(IDataView data, string what, IReadOnlyCollection<long> rows) => TrainingData.Create(Host, data, task, preprocessor, what,
            _ => true, rows, options.Cache, options.CacheMemoryLimitMegabytes * (1L << 20), options.DecodeThreads ?? DefaultDecodeThreads, options.ShuffleBufferSize);
        using var all = Read(input, "training data", [.. classOfRow.Keys]);
        using var train = heldOut is null ? all : all.Subset(row => !heldOut.Contains(row));
        using var validation = options.ValidationSet is { } given ? Read(given, "validation set", [.. task.ScanTargets(given, "validation set", false).Keys])
            : heldOut is null ? null : all.Subset(heldOut.Contains);
        ch.Info($"{train.Count} training images{(validation is null ? "" : $", {validation.Count} validation images")}, {task.NumClasses} classes, "
            + $"backbone {source.Architecture} at {runs.Input.ImageSize} px, device {device}.");

        float scale = options.AdapterScale;
        Dictionary<string, double>? searched = null;
        using var prefixes = new PrefixCaches();
        if (options.SearchScale && options.UsesAdapters)
            (scale, searched) = SearchScale(ch, task, runs, source, train, validation, classOfRow, seed, device, prefixes);
        var network = TrainOnce(ch, task, runs, source, train, validation, scale, seed, device, "final", options.EarlyStopping, prefixes);
        try
        {
            long trainable = network.CountParameters(trainableOnly: true);
            int merged = network.MergeAdapters();
            if (NonFinite.FirstIn(network) is string bad)
                throw Host.Except($"The merged model has non-finite values (NaN or infinity) in '{bad}' (AdapterScale {scale:G} too large?); no model is returned.");
            ch.Info($"Merged {merged} adapters into the backbone ({network.CountParameters():N0} parameters, as the plain architecture).");
            var summary = new TrainingSummary(options.Method, options.Placement, options.Trainable, scale, trainable, merged, searched);
            return CreateTransformer(task, network, runs.Input, summary, device);
        }
        catch
        {
            network.Dispose();
            throw;
        }
    }

    /// <summary>Background decoding threads by default: half the cores, so that decoding overlaps training without starving it.</summary>
    private static int DefaultDecodeThreads => Math.Max(1, Environment.ProcessorCount / 2);

    /// <summary>Fraction of the training images the scale search holds out when there is no validation data.</summary>
    private const double SearchHoldOut = 0.2;

    /// <summary>
    /// Picks s by the task's validation metric, never on test data: on the validation data when there is some, otherwise
    /// on a stratified hold-out of the training data (the final model is then retrained on all of it).
    /// </summary>
    private (float scale, Dictionary<string, double> metric) SearchScale(IChannel ch, ImageTask task, BackboneDescriptor runs, Backbone source,
        TrainingImages train, TrainingImages? validation, IReadOnlyDictionary<long, long> classOfRow, int seed, Device device, PrefixCaches prefixes)
    {
        var trainRows = train.Rows.ToHashSet();
        var heldOut = validation is null
            ? TrainingImages.StratifiedHoldOut(classOfRow.Where(p => trainRows.Contains(p.Key)).ToDictionary(p => p.Key, p => p.Value), SearchHoldOut, seed)
            : null;
        using var searchTrain = heldOut is null ? null : train.Subset(row => !heldOut.Contains(row));
        using var holdout = heldOut is null ? null : train.Subset(heldOut.Contains);
        var fitOn = searchTrain ?? train;
        var judgeOn = holdout ?? validation!;
        if (judgeOn.Count == 0) throw Host.Except("The scale search needs validation images: give a ValidationSet or more training images per class.");
        var metric = new Dictionary<string, double>();
        string name = task.Objective.MetricName;
        foreach (float candidate in TrainerOptions.ScaleCandidates)
        {
            using var network = TrainOnce(ch, task, runs, source, fitOn, null, candidate, seed, device, $"scale {Key(candidate)}", earlyStopping: null, prefixes);
            metric[Key(candidate)] = FineTuning.Evaluate(network, runs.Input.Normalize, judgeOn, task.Objective, device, TrainerOptions.BatchSize).Metric;
            ch.Info($"Scale search: s = {Key(candidate)} -> validation {name} {metric[Key(candidate)]:P2}");
        }
        float best = TrainerOptions.ScaleCandidates.MaxBy(s => metric[Key(s)]);
        ch.Info($"Scale search chose s = {Key(best)} ({(holdout is null ? "the validation data" : $"{holdout.Count} held-out training images")}).");
        return (best, metric);
    }

    private static string Key(float scale) => scale.ToString("G", System.Globalization.CultureInfo.InvariantCulture);

    private nn.Module<Tensor, Tensor> TrainOnce(IChannel ch, ImageTask task, BackboneDescriptor runs, Backbone source,
        TrainingImages train, TrainingImages? validation, float scale, int seed, Device device, string run, EarlyStopping? earlyStopping, PrefixCaches prefixes)
    {
        var backbone = runs.Build();
        nn.Module<Tensor, Tensor> network = backbone;
        try
        {
            backbone.load_state_dict(source.state_dict(), strict: true);
            TorchDevices.Seed(seed);
            network = task.CreateNetwork(backbone);
            var adaptable = (IAdaptableModel)network;
            if (TrainerOptions.UsesAdapters) adaptable.AttachAdapters(TrainerOptions.Adapters(scale));
            adaptable.SetTrainable(TrainerOptions.Trainable);
            network.to(device);
            ch.Info($"Training ({run}): {network.CountParameters(trainableOnly: true):N0} trainable of {network.CountParameters():N0} parameters "
                + $"({TrainerOptions.Trainable}{(TrainerOptions.UsesAdapters ? $", {TrainerOptions.Method} {TrainerOptions.Placement}, s = {scale:G}" : "")}).");
            using var pch = Host.StartProgressChannel($"RepAdapter training ({run})");
            EpochReport? last = null;
            pch.SetHeader(new ProgressHeader(["Loss", "Train accuracy"], ["epochs"]), e =>
            {
                if (last is null) return;
                e.SetProgress(0, last.Epoch, last.Epochs);
                e.SetMetric(0, last.Loss);
                e.SetMetric(1, last.TrainAccuracy);
            });
            var (model, toInput, trainOn, validateOn) = RunInputs(ch, network, runs, train, validation, device, prefixes);
            TrainingResult result;
            try
            {
                result = FineTuning.Train(model, toInput, trainOn, validateOn, task.Objective, TrainerOptions.Settings(seed) with { EarlyStopping = earlyStopping },
                    device, run, TrainerOptions.TrainingStateFolder,
                    progress: r =>
                    {
                        last = r;
                        ch.Info(r.ToString());
                        TrainerOptions.MetricsCallback?.Invoke(r);
                    },
                    checkAlive: Host.CheckAlive);
            }
            finally
            {
                // A SuffixNetwork is a view of the network: dispose the view, keep the network.
                if (!ReferenceEquals(model, network)) model.Dispose();
            }
            if (result.ResumedAfterEpoch > 0)
                ch.Info($"Resumed ({run}) after epoch {result.ResumedAfterEpoch} from the state in {TrainerOptions.TrainingStateFolder}.");
            if (result.Stopped || result.BestEpoch != result.Reports.Count)
                ch.Info($"Early stopping kept epoch {result.BestEpoch} of {result.Reports.Count} trained ({(result.Stopped ? "stopped" : "ran to the end")}).");
            return network;
        }
        catch
        {
            network.Dispose();
            if (!ReferenceEquals(network, backbone)) backbone.Dispose();
            throw;
        }
    }

    /// <summary>
    /// What a run trains on: the network on normalised images, or, when the first steps of a classification backbone's
    /// trunk are frozen (adapters in the last blocks only, or head only), the rest of it on the frozen prefix's outputs,
    /// computed once per Fit (<see cref="FrozenPrefix"/>). Not with augmentation (the prefix would see other images every
    /// epoch), not when the images are asked to stay out of memory (<c>Cache</c> Disk or None), nor when the cached outputs
    /// would exceed <c>CacheMemoryLimitMegabytes</c>.
    /// </summary>
    private (nn.Module<Tensor, Tensor> Model, Func<Tensor, Tensor> ToInput, TrainingImages Train, TrainingImages? Validation) RunInputs(
        IChannel ch, nn.Module<Tensor, Tensor> network, BackboneDescriptor runs, TrainingImages train, TrainingImages? validation, Device device, PrefixCaches prefixes)
    {
        var plain = (network, (Func<Tensor, Tensor>)runs.Input.Normalize, train, validation);
        if (!TrainerOptions.CacheFrozenPrefix || TrainerOptions.Augmentation is not null || network is not Backbone backbone
            || TrainerOptions.Cache is ImageCache.Disk or ImageCache.None) return plain;
        int steps = FrozenPrefix.Steps(backbone);
        if (steps == 0) return plain;
        long bytes = FrozenPrefix.CacheBytes(backbone, steps, train.Count + (validation?.Count ?? 0));
        string what = $"the first {steps} of {backbone.Trunk().Count} trunk steps ({string.Join(", ", backbone.Trunk().Take(steps).Select(s => s.Name).Where((_, i) => i < 2))}...)";
        if (bytes > TrainerOptions.CacheMemoryLimitMegabytes * (1L << 20))
        {
            ch.Info($"The frozen prefix, {what}, runs every step: its outputs would take {bytes / 1e6:F0} MB, over CacheMemoryLimitMegabytes.");
            return plain;
        }
        var cachedTrain = prefixes.Get(train, steps, () => FrozenPrefix.Compute(backbone, steps, runs.Input.Normalize, train, device, TrainerOptions.BatchSize));
        var cachedValidation = validation is null ? null
            : prefixes.Get(validation, steps, () => FrozenPrefix.Compute(backbone, steps, runs.Input.Normalize, validation, device, TrainerOptions.BatchSize));
        ch.Info($"The frozen prefix, {what}, was computed once per image ({bytes / 1e6:F0} MB); each step runs the rest.");
        return (new SuffixNetwork(backbone, steps), x => x, cachedTrain, cachedValidation);
    }

    /// <summary>Frozen prefixes computed in one Fit, by data set and cut, shared by its runs (scale candidates, final run).</summary>
    private sealed class PrefixCaches : IDisposable
    {
        private readonly Dictionary<(TrainingImages Images, int Steps), LabeledImages> _cached = [];

        public TrainingImages Get(TrainingImages images, int steps, Func<LabeledImages> compute)
        {
            if (!_cached.TryGetValue((images, steps), out var cached)) _cached[(images, steps)] = cached = compute();
            return cached;
        }

        public void Dispose()
        {
            foreach (var cached in _cached.Values) cached.Dispose();
        }
    }

    /// <summary>The source backbone, and whether the trainer created it (and so disposes it); a given one is only read.</summary>
    private (Backbone backbone, bool owned) CreateBackbone(IChannel ch, int classes)
    {
        if (TrainerOptions.Backbone is { } given) return (given, false);
        Backbone backbone;
        string builtIn = TrainerOptions.Architecture ?? PretrainedBackbones.MLNetResNet18;
        if (BackboneFamilies.OfBuiltInWeights(builtIn) is not null && (TrainerOptions.Architecture is not null || TrainerOptions.CheckpointPath is null))
        {
            // Built-in weights (ML.NET's ResNet-18): CheckpointPath, when given, is the folder that holds them.
            if (TrainerOptions.CheckpointPath is { } file && File.Exists(file))
                throw Host.Except($"CheckpointPath '{file}' is a file: with Architecture = \"{builtIn}\" it names the folder that holds those built-in weights.");
            var loaded = PretrainedBackbones.LoadBuiltIn(builtIn, classes, TrainerOptions.CheckpointPath, TrainerOptions.ImageSize);
            ch.Info(loaded.Report.ToString());
            backbone = loaded.Backbone;
        }
        else if (TrainerOptions.CheckpointPath is { } path)
        {
            var loaded = PretrainedBackbones.Load(path, TrainerOptions.Architecture, classes, TrainerOptions.ImageSize, TrainerOptions.KeepPreLogits, TrainerOptions.NumHeads);
            ch.Info(loaded.Report.ToString());
            backbone = loaded.Backbone;
        }
        else
        {
            string preset = TrainerOptions.Architecture!;
            ch.Warning($"No CheckpointPath: {preset} starts from random weights. Give pretrained weights for real fine-tuning.");
            backbone = BackbonePresets.Create(preset, classes, imageSize: TrainerOptions.ImageSize);
        }
        return (backbone, true);
    }

    /// <summary>The source's architecture with this run's drop path and normalisation overrides, and the task's classifier.</summary>
    private BackboneDescriptor RunDescriptor(Backbone source)
    {
        if (TrainerOptions.ImageSize is int size && size != source.Input.ImageSize)
            throw Host.Except($"ImageSize {size} differs from the backbone's input size {source.Input.ImageSize}; build the backbone at that size.");
        var input = source.Input with { Mean = TrainerOptions.Mean ?? source.Input.Mean, Std = TrainerOptions.Std ?? source.Input.Std };
        return source.Describe().WithDropPathRate(TrainerOptions.DropPathRate) with { Input = input };
    }
}
