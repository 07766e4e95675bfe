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
/// <param name="Recipe">The recipe the model was trained with (null in models saved before recipes).</param>
/// <param name="Search">What the recipe search tried and why it chose the recipe; null when there was no search.</param>
/// <param name="Adapters">The whole adapter configuration trained and merged (method, placement, hidden size, groups,
/// scale, dropout, adapted blocks); null for a run without adapters and in models saved before it was recorded.</param>
/// <param name="Backbone">Where the frozen backbone's weights came from and their fingerprint; null when they cannot be
/// loaded again (a <c>Backbone</c> object or a random preset) and in models saved before it was recorded.</param>
public sealed record TrainingSummary(
    AdaptationMethod Method,
    AdapterPlacement Placement,
    TrainableParameters Trainable,
    float AdapterScale,
    long TrainableParameters,
    int AdaptersMerged,
    TrainingRecipe? Recipe = null,
    RecipeSearchSummary? Search = null,
    AdapterConfig? Adapters = null,
    BackboneSource? Backbone = null);

/// <summary>
/// The training flow every RepAdapter trainer shares (ML.NET's TorchSharpBaseTrainer, for adapters): choose and load
/// the backbone, read the data, resolve the recipe (the user's levers, the preset's for the rest), search the free levers
/// on validation data, train adapters and head, merge the adapters, and hand the merged network to the task's transformer. A task supplies its
/// columns, targets, network head and objective (<see cref="ImageTask"/>) and its transformer.
/// </summary>
/// <typeparam name="TOptions">The task's options.</typeparam>
/// <typeparam name="TTransformer">The task's transformer, holding the merged network.</typeparam>
public abstract class RepAdapterTrainerBase<TOptions, TTransformer> : IEstimator<TTransformer>
    where TOptions : RepAdapterTrainerOptions
    where TTransformer : RepAdapterTransformerBase
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
        var budget = new FitBudget(TrainerOptions.TimeBudget);
        var task = CreateTask(input);
        var options = TrainerOptions;
        var recipe = options.ResolvedRecipe(UsesBuiltInWeights);

        // A pass over the targets alone (no images): class checks and counts, and the rows for stratified hold-outs.
        var classOfRow = task.ScanTargets(input, "training data", training: true);
        if (options.ValidationSet is not null) task.ScanTargets(options.ValidationSet, "validation set", training: false);
        var heldOut = options.ValidationSet is null && options.ValidationSetFraction is double fraction
            ? TrainingImages.StratifiedHoldOut(classOfRow, fraction, seed)
            : null;
        if (heldOut is { Count: 0 }) throw Host.Except("ValidationSetFraction held out no image: give more training images per class, or a ValidationSet.");

        var (source, ownsSource, origin) = CreateBackbone(ch, task.BackboneClasses, recipe.ImageSize);
        using var created = ownsSource ? source : null;
        // Every run (each search candidate, then the final one) builds a fresh model from this and the source's weights.
        var runs = RunDescriptor(source);
        recipe = recipe with { ImageSize = runs.Input.ImageSize };
        var preprocessor = new ImagePreprocessor(runs.Input, options.MaxImagePixels);
        TrainingImages Read(IDataView data, string what, IReadOnlyCollection<long> rows) => TrainingData.Create(Host, data, task, preprocessor, what,
            _ => true, rows, options.Cache, options.CacheMemoryLimitMegabytes * (1L << 20), options.DecodeThreads ?? DefaultDecodeThreads, options.ShuffleBufferSize);
        using var prefixes = new PrefixCaches();
        using var all = Read(input, "training data", [.. classOfRow.Keys]);
        using var train = heldOut is null ? all : prefixes.Derive(all, row => !heldOut.Contains(row));
        using var validation = options.ValidationSet is { } given ? Read(given, "validation set", [.. task.ScanTargets(given, "validation set", false).Keys])
            : heldOut is null ? null : prefixes.Derive(all, heldOut.Contains);
        ch.Info($"{train.Count} training images{(validation is null ? "" : $", {validation.Count} validation images")}, {task.NumClasses} classes, "
            + $"backbone {source.Architecture} at {runs.Input.ImageSize} px, device {device}.");

        var candidates = RecipeSearch.Candidates(recipe, options.FreeLevers());
        RecipeSearch.Outcome? searched = null;
        if (candidates.Count > 1 && options.TimeBudget != TimeSpan.Zero)
        {
            searched = Search(ch, task, runs, source, train, validation, classOfRow, candidates, seed, device, prefixes, budget);
            recipe = searched?.Chosen ?? recipe;
        }
        else ch.Info($"Recipe: {recipe}{(candidates.Count > 1 ? " (TimeBudget zero: no search)" : "")}.");
        var network = searched?.Network;
        if (network is null)
        {
            if (options.Epochs is null && budget.EpochsThatFit(recipe.Epochs, train.Count) is int fits && fits < recipe.Epochs)
            {
                ch.Warning($"TimeBudget {options.TimeBudget}: the final run trains {fits} of the recipe's {recipe.Epochs} epochs to finish in time.");
                recipe = recipe with { Epochs = fits, WarmupEpochs = (int)((long)recipe.WarmupEpochs * fits / recipe.Epochs) };
            }
            network = TrainOnce(ch, task, runs, source, train, validation, recipe, seed, device, "final", options.EarlyStopping, prefixes).Network;
        }
        TaskModel? taskModel = null;
        try
        {
            long trainable = network.CountParameters(trainableOnly: true);
            taskModel = origin is null ? null : TaskModel.Capture(network, options.Trainable);
            int merged = network.MergeAdapters();
            if (NonFinite.FirstIn(network) is string bad)
                throw Host.Except($"The merged model has non-finite values (NaN or infinity) in '{bad}' (AdapterScale {recipe.AdapterScale:G} too large?); no model is returned.");
            ch.Info($"Merged {merged} adapters into the backbone ({network.CountParameters():N0} parameters, as the plain architecture).");
            var summary = new TrainingSummary(recipe.Method, options.Placement, options.Trainable, recipe.AdapterScale, trainable, merged, recipe, searched?.Summary,
                options.UsesAdapters ? options.Adapters(recipe) : null, origin);
            var transformer = CreateTransformer(task, network, runs.Input, summary, device);
            transformer.KeepTaskModel(taskModel);
            transformer.MaxImagePixels = options.MaxImagePixels;
            return transformer;
        }
        catch
        {
            network.Dispose();
            taskModel?.Dispose();
            throw;
        }
    }

    /// <summary>Background decoding threads by default: half the cores, so that decoding overlaps training without starving it.</summary>
    private static int DefaultDecodeThreads => Math.Max(1, Environment.ProcessorCount / 2);

    /// <summary>Fraction of the training images the recipe search holds out when there is no validation data.</summary>
    private const double SearchHoldOut = 0.2;

    /// <summary>Below this many held-out images, the search judges on a second hold-out too (one is too noisy).</summary>
    private const int SmallHoldOut = 100;

    /// <summary>
    /// Chooses among <paramref name="candidates"/> by the task's validation metric, never on test data: on the validation
    /// data when there is some (the chosen run is then the final model), otherwise on stratified hold-outs of the
    /// training data (two when one is small), after which the final model is trained on all of it. Null when no training
    /// image can be held out.
    /// </summary>
    private RecipeSearch.Outcome? Search(IChannel ch, ImageTask task, BackboneDescriptor runs, Backbone source, TrainingImages train,
        TrainingImages? validation, IReadOnlyDictionary<long, long> classOfRow, IReadOnlyList<TrainingRecipe> candidates, int seed, Device device,
        PrefixCaches prefixes, FitBudget budget)
    {
        var owned = new List<TrainingImages>();
        try
        {
            List<SearchFold> folds;
            string where;
            if (validation is not null)
            {
                folds = [new SearchFold(train, validation)];
                where = TrainerOptions.ValidationSet is null ? "the ValidationSetFraction hold-out" : "the validation set";
            }
            else
            {
                var trainRows = train.Rows.ToHashSet();
                var classes = classOfRow.Where(p => trainRows.Contains(p.Key)).ToDictionary(p => p.Key, p => p.Value);
                folds = [];
                for (int f = 0; f < 2 && (f == 0 || folds[0].JudgeOn.Count < SmallHoldOut); f++)
                {
                    var heldOut = TrainingImages.StratifiedHoldOut(classes, SearchHoldOut, seed + f);
                    if (heldOut.Count == 0 || heldOut.Count == train.Count) break;
                    var fitOn = prefixes.Derive(train, row => !heldOut.Contains(row));
                    var judgeOn = prefixes.Derive(train, heldOut.Contains);
                    owned.Add(fitOn);
                    owned.Add(judgeOn);
                    folds.Add(new SearchFold(fitOn, judgeOn));
                }
                if (folds.Count == 0)
                {
                    ch.Warning("No class has two training images to hold one out, so there is no recipe search: the recipe as it is. Give a ValidationSet to search.");
                    return null;
                }
                where = "held-out training images";
            }
            bool keep = validation is not null && TrainerOptions.EarlyStopping is null;
            return RecipeSearch.Run(ch, candidates, folds, where, train.Count, keep, budget,
                (recipe, fold, run) =>
                {
                    var (network, score) = TrainOnce(ch, task, runs, source, fold.FitOn, null, recipe, seed, device, run, null, prefixes, fold.JudgeOn);
                    return (network, score!);
                },
                task.Objective.MetricName);
        }
        finally
        {
            foreach (var images in owned) images.Dispose();
        }
    }

    /// <summary>
    /// One training run of <paramref name="recipe"/> from the source's weights: the network (in eval mode), and its score
    /// on <paramref name="judgeOn"/> when given (a search trial; <paramref name="validation"/> is reported every epoch).
    /// </summary>
    private (nn.Module<Tensor, Tensor> Network, ValidationScore? Score) TrainOnce(IChannel ch, ImageTask task, BackboneDescriptor runs, Backbone source,
        TrainingImages train, TrainingImages? validation, TrainingRecipe recipe, int seed, Device device, string run, EarlyStopping? earlyStopping,
        PrefixCaches prefixes, TrainingImages? judgeOn = null)
    {
        var backbone = runs.Build();
        nn.Module<Tensor, Tensor> network = backbone;
        try
        {
            backbone.load_state_dict(source.state_dict(), strict: true);
            TorchDevices.Seed(seed);
            network = task.CreateNetwork(backbone);
            var adaptable = (IAdaptableModel)network;
            if (TrainerOptions.UsesAdapters) adaptable.AttachAdapters(TrainerOptions.Adapters(recipe));
            adaptable.SetTrainable(TrainerOptions.Trainable);
            network.to(device);
            ch.Info($"Training ({run}): {network.CountParameters(trainableOnly: true):N0} trainable of {network.CountParameters():N0} parameters "
                + $"({TrainerOptions.Trainable}{(TrainerOptions.UsesAdapters ? $", {TrainerOptions.Placement}" : "")}; {recipe}).");
            using var pch = Host.StartProgressChannel($"RepAdapter training ({run})");
            EpochReport? last = null;
            pch.SetHeader(new ProgressHeader(["Loss", "Train accuracy"], ["epochs"]), e =>
            {
                if (last is null) return;
                e.SetProgress(0, last.Epoch, last.Epochs);
                e.SetMetric(0, last.Loss);
                e.SetMetric(1, last.TrainAccuracy);
            });
            var (model, toInput, inputs) = RunInputs(ch, network, source, runs, [train, validation, judgeOn], recipe.BatchSize, device, prefixes);
            TrainingResult result;
            ValidationScore? score = null;
            try
            {
                result = FineTuning.Train(model, toInput, inputs(train)!, inputs(validation), task.Objective,
                    TrainerOptions.Settings(recipe, seed) with { EarlyStopping = earlyStopping }, device, run, TrainerOptions.TrainingStateFolder,
                    progress: r =>
                    {
                        last = r;
                        ch.Info(r.ToString());
                        TrainerOptions.MetricsCallback?.Invoke(r);
                    },
                    checkAlive: Host.CheckAlive);
                if (judgeOn is not null) score = FineTuning.Score(model, toInput, inputs(judgeOn)!, task.Objective, device, recipe.BatchSize);
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
            return (network, score);
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
    /// would exceed <c>CacheMemoryLimitMegabytes</c>. <c>Inputs</c> maps each of <paramref name="sets"/> to what the model takes.
    /// </summary>
    private (nn.Module<Tensor, Tensor> Model, Func<Tensor, Tensor> ToInput, Func<TrainingImages?, TrainingImages?> Inputs) RunInputs(IChannel ch,
        nn.Module<Tensor, Tensor> network, Backbone source, BackboneDescriptor runs, TrainingImages?[] sets, int batchSize, Device device, PrefixCaches prefixes)
    {
        var plain = (network, (Func<Tensor, Tensor>)runs.Input.Normalize, (Func<TrainingImages?, TrainingImages?>)(images => images));
        if (!TrainerOptions.CacheFrozenPrefix || TrainerOptions.Augmentation is not null || network is not Backbone backbone
            || TrainerOptions.Cache is ImageCache.Disk or ImageCache.None) return plain;
        int steps = FrozenPrefix.Steps(backbone);
        if (steps == 0) return plain;
        var roots = sets.OfType<TrainingImages>().Select(prefixes.RootOf).Distinct().ToList();
        long bytes = FrozenPrefix.CacheBytes(backbone, steps, roots.Sum(r => r.Count));
        string what = $"the first {steps} of {backbone.Trunk().Count} trunk steps ({string.Join(", ", backbone.Trunk().Take(steps).Select(s => s.Name).Where((_, i) => i < 2))}...)";
        if (bytes > TrainerOptions.CacheMemoryLimitMegabytes * (1L << 20))
        {
            ch.Info($"The frozen prefix, {what}, runs every step: its outputs would take {bytes / 1e6:F0} MB, over CacheMemoryLimitMegabytes.");
            return plain;
        }
        var cached = sets.OfType<TrainingImages>().Distinct().ToDictionary(images => images,
            images => prefixes.Get(images, steps, root => ComputePrefix(ch, backbone, source, runs, steps, root, device, batchSize, prefixes)));
        ch.Info($"The frozen prefix, {what}, was computed once per image ({bytes / 1e6:F0} MB); each step runs the rest.");
        return (new SuffixNetwork(backbone, steps), x => x, images => images is null ? null : cached[images]);
    }

    /// <summary>
    /// The frozen prefix's outputs for <paramref name="root"/> in <c>FrozenPrefixPrecision</c>: bfloat16 runs a bfloat16
    /// copy of <paramref name="source"/>'s weights; Auto times the first batch both ways, once per Fit, and keeps bfloat16
    /// only when it pays and its outputs agree (<c>AutoPrecisionTolerance</c>).
    /// </summary>
    private LabeledImages ComputePrefix(IChannel ch, Backbone backbone, Backbone source, BackboneDescriptor runs, int steps, TrainingImages root, Device device,
        int batchSize, PrefixCaches prefixes)
    {
        var precision = TrainerOptions.FrozenPrefixPrecision;
        Backbone? reduced = null;
        try
        {
            if (precision != ScoringPrecision.Float32 && prefixes.BFloat16 != false)
            {
                reduced = FrozenPrefix.ReducedCopy(runs.Build, source, ScalarType.BFloat16, device);
                if (precision == ScoringPrecision.Auto && prefixes.BFloat16 is null)
                {
                    var (full, half, difference) = FrozenPrefix.Trial(backbone, reduced, steps, runs.Input.Normalize, root, device, batchSize);
                    bool keep = PrecisionTrial.Pays(full, half) && difference <= TrainerOptions.AutoPrecisionTolerance;
                    prefixes.BFloat16 = keep;
                    ch.Info(string.Create(System.Globalization.CultureInfo.InvariantCulture,
                        $"Frozen prefix precision Auto: a batch took {full:F1} ms in float32 and {half:F1} ms in bfloat16, outputs differ by {difference:G2} "
                        + $"(root mean square, relative; tolerance {TrainerOptions.AutoPrecisionTolerance:G2}): computing it in {(keep ? "bfloat16" : "float32")}."));
                    if (!keep)
                    {
                        reduced.Dispose();
                        reduced = null;
                    }
                }
            }
            return FrozenPrefix.Compute(backbone, steps, runs.Input.Normalize, root, device, batchSize, reduced);
        }
        finally
        {
            reduced?.Dispose();
        }
    }

    /// <summary>
    /// Frozen prefixes computed in one Fit, by data set and cut, shared by its runs (search candidates, final run): a
    /// subset made through <see cref="Derive"/> takes its rows from its root's prefix, so that every hold-out of the
    /// training data costs no more prefix computation than the training data itself.
    /// </summary>
    private sealed class PrefixCaches : IDisposable
    {
        private readonly Dictionary<(TrainingImages Images, int Steps), TrainingImages> _cached = [];

        /// <summary>With <c>FrozenPrefixPrecision = Auto</c>: whether bfloat16 was chosen (null until the first prefix is computed).</summary>
        public bool? BFloat16 { get; set; }
        private readonly Dictionary<TrainingImages, TrainingImages> _rootOf = [];

        /// <summary>The images of <paramref name="parent"/> whose rows <paramref name="keepRow"/> keeps, remembered as derived from its root.</summary>
        public TrainingImages Derive(TrainingImages parent, Func<long, bool> keepRow)
        {
            var subset = parent.Subset(keepRow);
            _rootOf[subset] = RootOf(parent);
            return subset;
        }

        public TrainingImages RootOf(TrainingImages images) => _rootOf.GetValueOrDefault(images, images);

        /// <summary>The prefix outputs of <paramref name="images"/>: computed once for its root by <paramref name="compute"/>, then subset.</summary>
        public TrainingImages Get(TrainingImages images, int steps, Func<TrainingImages, LabeledImages> compute)
        {
            if (_cached.TryGetValue((images, steps), out var cached)) return cached;
            var root = RootOf(images);
            if (!_cached.TryGetValue((root, steps), out var rootCached)) _cached[(root, steps)] = rootCached = compute(root);
            if (ReferenceEquals(root, images)) return rootCached;
            var rows = images.Rows.ToHashSet();
            return _cached[(images, steps)] = rootCached.Subset(rows.Contains);
        }

        public void Dispose()
        {
            foreach (var cached in _cached.Values) cached.Dispose();
        }
    }

    /// <summary>Whether the trainer loads built-in weights (ML.NET's ResNet-18 by default), for which the CPU recipe's image size is meant.</summary>
    private bool UsesBuiltInWeights => TrainerOptions.Backbone is null
        && BackboneFamilies.OfBuiltInWeights(TrainerOptions.Architecture ?? PretrainedBackbones.MLNetResNet18) is not null
        && (TrainerOptions.Architecture is not null || TrainerOptions.CheckpointPath is null);

    /// <summary>The source backbone, and whether the trainer created it (and so disposes it); a given one is only read.</summary>
    private (Backbone Backbone, bool Owned, BackboneSource? Source) CreateBackbone(IChannel ch, int classes, int? imageSize)
    {
        if (TrainerOptions.Backbone is { } given) return (given, false, null);
        Backbone backbone;
        BackboneSource? source = null;
        if (UsesBuiltInWeights)
        {
            // Built-in weights (ML.NET's ResNet-18): CheckpointPath, when given, is the folder that holds them.
            string builtIn = TrainerOptions.Architecture ?? PretrainedBackbones.MLNetResNet18;
            if (TrainerOptions.CheckpointPath is { } file && File.Exists(file))
                throw Host.Except($"CheckpointPath '{file}' is a file: with Architecture = \"{builtIn}\" it names the folder that holds those built-in weights.");
            var loaded = PretrainedBackbones.LoadBuiltIn(builtIn, classes, TrainerOptions.CheckpointPath, imageSize);
            ch.Info(loaded.Report.ToString());
            backbone = loaded.Backbone;
            source = BackboneSource.OfBuiltIn(builtIn, TrainerOptions.CheckpointPath, imageSize, backbone);
        }
        else if (TrainerOptions.CheckpointPath is { } path)
        {
            var loaded = PretrainedBackbones.Load(path, TrainerOptions.Architecture, classes, imageSize, TrainerOptions.BackboneLoadOptions);
            ch.Info(loaded.Report.ToString());
            backbone = loaded.Backbone;
            source = BackboneSource.OfCheckpoint(path, TrainerOptions.Architecture, imageSize, TrainerOptions.BackboneLoadOptions, backbone);
        }
        else
        {
            string preset = TrainerOptions.Architecture!;
            ch.Warning($"No CheckpointPath: {preset} starts from random weights. Give pretrained weights for real fine-tuning.");
            backbone = BackbonePresets.Create(preset, classes, imageSize: imageSize);
        }
        return (backbone, true, source);
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
