using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Checkpoints;
using Microsoft.ML.RepAdapter.Training;

namespace Microsoft.ML.RepAdapter.MLNet;

/// <summary>
/// Options every RepAdapter trainer shares: the backbone and its weights, the adapters and what trains, the recipe,
/// the device. The recipe's levers (image size, adapted blocks, scale, learning rate, epochs, batch size, warm-up) are
/// null until set: unset, they take the <see cref="Recipe"/> preset's values (for a CPU by default), and the ones the
/// preset searches are chosen on validation data within <see cref="TimeBudget"/>. A lever that is set is kept as set.
/// Each task's trainer adds its own columns.
/// </summary>
public abstract class RepAdapterTrainerOptions
{
    /// <summary>
    /// The recipe the unset levers come from: <see cref="RecipePreset.Cpu"/> (minutes on a laptop, with a short search
    /// on validation data) or <see cref="RecipePreset.Paper"/> (the paper's GPU recipe, no search).
    /// </summary>
    public RecipePreset Recipe = RecipePreset.Cpu;

    /// <summary>
    /// The most time Fit may take, the recipe search included (ML.NET AutoML's habit): candidates that would not fit are
    /// skipped, and when even the final run would not fit, its epochs are cut (unless <see cref="Epochs"/> is set). Null:
    /// the preset's whole search, whatever it takes (deterministic for a seed; with a budget, what fits depends on the
    /// machine's speed). <see cref="TimeSpan.Zero"/>: no search, the recipe as it is.
    /// </summary>
    public TimeSpan? TimeBudget;

    /// <summary>What the search may try for each unset lever; null: the preset's.</summary>
    public RecipeSearchSpace? SearchSpace;

    /// <summary>The image column: MLImage (LoadImages) or encoded image bytes (LoadRawImageBytes, Model Builder's ImageSource).</summary>
    public string ImageColumnName = "Image";

    /// <summary>
    /// Backbone preset (see <see cref="BackbonePresets"/>) or <see cref="PretrainedBackbones.MLNetResNet18"/>. With a
    /// <see cref="CheckpointPath"/> it is optional (null: the architecture is read from the checkpoint). Without one, null
    /// means ML.NET's pretrained ResNet-18 (works offline), and a preset name means that architecture from random
    /// weights, which is only useful for tests.
    /// </summary>
    public string? Architecture;

    /// <summary>
    /// Pretrained weights (Google .npz, timm / Hugging Face .safetensors, PyTorch .pth); format read from the content. With
    /// <see cref="Architecture"/> naming built-in weights (<see cref="PretrainedBackbones.MLNetResNet18"/>), the folder that
    /// holds them (ML.NET's <c>DnnImageModels</c>) when not where their package puts them.
    /// </summary>
    public string? CheckpointPath;

    /// <summary>An already-built (and loaded) backbone; the trainer copies its weights and leaves it untouched.</summary>
    public Backbone? Backbone;

    /// <summary>Input resolution; null: the recipe's for the built-in backbone (112 px on a CPU), else the backbone's or checkpoint's own.</summary>
    public int? ImageSize;

    /// <summary>Per-channel mean override (on the backbone's pixel scale); null uses the backbone's.</summary>
    public float[]? Mean;

    /// <summary>Per-channel standard deviation override (on the backbone's pixel scale); null uses the backbone's.</summary>
    public float[]? Std;

    /// <summary>
    /// What the checkpoint's family can be told beyond its shapes, as that family declares it: e.g.
    /// <see cref="VisionTransformerLoadOptions"/> (a ViT's heads when the width / 64 rule does not hold, Google's
    /// ImageNet-21k pre-logits layer). Null: the family's defaults. Options of another family than the checkpoint's are refused.
    /// </summary>
    public FamilyLoadOptions? BackboneLoadOptions;

    /// <summary>
    /// The adaptation method at each adapter site (RepAdapter, LoRA, DoRA, SSF, RLRR): every one merges into the backbone,
    /// so the saved model costs nothing extra at inference. Null: the recipe's (RepAdapter), or the one the search picks from
    /// <see cref="RecipeSearchSpace.Methods"/>. SSF and RLRR have no scale s: their s is 1, not searched.
    /// </summary>
    public AdaptationMethod? Method;

    /// <summary>Where adapters go ("repblock" or "repattn").</summary>
    public AdapterPlacement Placement = AdapterPlacement.Block;

    /// <summary>What the run trains; everything else stays frozen.</summary>
    public TrainableParameters Trainable = TrainableParameters.AdaptersAndHead;

    /// <summary>
    /// Adapters in the last this many blocks of the trunk only (<see cref="TrainingRecipe.AllBlocks"/>: every block, as the
    /// paper); null: the recipe's (searched). The frozen blocks before them are computed once per image (see
    /// <see cref="CacheFrozenPrefix"/>).
    /// </summary>
    public int? AdaptedBlocks;

    /// <summary>
    /// When the first blocks of a classification backbone are frozen (<see cref="AdaptedBlocks"/>, or a head-only run),
    /// compute their output once per image and train the rest on it: exact (the frozen blocks run as in evaluation, without
    /// stochastic depth), and each step does only the trainable part's work. In memory, so only with <see cref="Cache"/> Auto
    /// or Memory and while the outputs fit in <see cref="CacheMemoryLimitMegabytes"/>; not with <see cref="Augmentation"/>.
    /// </summary>
    public bool CacheFrozenPrefix = true;

    /// <summary>
    /// The number format the cached frozen prefix (<see cref="CacheFrozenPrefix"/>) is computed in. It is only scored,
    /// never trained, so bfloat16 there needs no float32 master copy: <see cref="ScoringPrecision.BFloat16"/> runs a
    /// bfloat16 copy of the frozen weights and caches its outputs as float32; the trainable rest trains in float32 as
    /// always. <see cref="ScoringPrecision.Auto"/> times the first batch both ways (once per Fit) and keeps bfloat16 when it
    /// takes at most 0.9 of float32's time and the outputs differ by at most <see cref="AutoPrecisionTolerance"/>, root
    /// mean square relative to float32's; a log line says what it measured and chose. Float32 (the default): the cache,
    /// and so the trained model, does not depend on a timing. Whether bfloat16 pays depends on the CPU (see docs/deployment.md).
    /// </summary>
    public ScoringPrecision FrozenPrefixPrecision = ScoringPrecision.Float32;

    /// <summary>The largest relative root-mean-square difference of the prefix's outputs that <see cref="FrozenPrefixPrecision"/> Auto accepts from bfloat16 (0.05).</summary>
    public float AutoPrecisionTolerance = 0.05f;

    /// <summary>RepAdapter's hidden size r (LoRA's rank).</summary>
    public int AdapterHidden = 8;

    /// <summary>Groups k of RepAdapter's up-projection.</summary>
    public int AdapterGroups = 2;

    /// <summary>The scale s of the adapter branch; null: the recipe's (searched).</summary>
    public float? AdapterScale;

    /// <summary>Dropout on the adapter's hidden features, in training only.</summary>
    public double AdapterDropout = 0.1;

    /// <summary>
    /// When no <see cref="ValidationSet"/> is given, this fraction of each class of the training data is held out as the
    /// validation set (per-epoch metric, early stopping, recipe search) and not trained on; null holds out nothing (the
    /// recipe search then holds out 20 % for itself, or twice when that is under 100 images, and retrains on everything).
    /// </summary>
    public double? ValidationSetFraction;

    /// <summary>Stop when the validation data stops improving and return the best epoch's model; needs validation data.</summary>
    public EarlyStopping? EarlyStopping;

    /// <summary>Called after every epoch of every run (ML.NET's MetricsCallback), besides the log line.</summary>
    public Action<EpochReport>? MetricsCallback;

    /// <summary>
    /// A folder where each run saves its state after every epoch (trainable weights, optimiser and random state,
    /// progress); a Fit started again with the same options and data resumes from it and ends as an uninterrupted run
    /// (on the CPU; on a GPU the CUDA generator, whose state TorchSharp 0.107 cannot read, restarts from the seed, so dropout
    /// masks after a resume differ). Null saves nothing.
    /// </summary>
    public string? TrainingStateFolder;

    /// <summary>Where decoded images are kept between epochs; <see cref="ImageCache.Auto"/> keeps memory bounded.</summary>
    public ImageCache Cache = ImageCache.Auto;

    /// <summary>With <see cref="ImageCache.Auto"/>, the most decoded images (in megabytes) kept in memory before using disk.</summary>
    public int CacheMemoryLimitMegabytes = 1024;

    /// <summary>Threads decoding and resizing images in the background; null uses half the cores.</summary>
    public int? DecodeThreads;

    /// <summary>With <see cref="ImageCache.None"/>, how many decoded images the epoch's shuffle draws from.</summary>
    public int ShuffleBufferSize = 1024;

    /// <summary>Random resized crops and horizontal flips of the training images (masks alike); null: none, as the paper's VTAB recipe.</summary>
    public ImageAugmentation? Augmentation;

    /// <summary>Stochastic depth rate (ViT), linear over depth.</summary>
    public double DropPathRate = 0.1;

    /// <summary>Training epochs; null: the recipe's.</summary>
    public int? Epochs;

    /// <summary>Images per optimiser step (the last partial batch is dropped, as the recipe's drop_last); null: the recipe's.</summary>
    public int? BatchSize;

    /// <summary>AdamW's peak learning rate; null: the recipe's (searched).</summary>
    public double? LearningRate;

    /// <summary>AdamW's weight decay, on every trainable parameter (as the official code).</summary>
    public double WeightDecay = 1e-4;

    /// <summary>
    /// Linear warm-up epochs before the cosine decay; null: the recipe's share of the epochs (the paper's 10 in 100, none
    /// on a CPU).
    /// </summary>
    public int? WarmupEpochs;

    /// <summary>Learning rate at the start of the warm-up.</summary>
    public double WarmupLearningRate = 1e-6;

    /// <summary>Learning rate the cosine decays towards.</summary>
    public double FinalLearningRate = 1e-5;

    /// <summary>
    /// Clip the gradient of the trainable parameters to this global L2 norm before each step (as timm's --clip-grad);
    /// null: no clipping, as the paper's recipe. A guard against loss spikes with high learning rates or adapter scales.
    /// </summary>
    public double? MaxGradientNorm;

    /// <summary>
    /// Seeds shuffling, the new head, adapters, dropout and drop path; null takes the MLContext's seed (42 when it has
    /// none). On the CPU a run is bitwise reproducible for the same seed and data on the same machine with the same
    /// thread count; across CPUs (libtorch's and oneDNN's kernels) or thread counts float rounding differs, so results
    /// agree only approximately.
    /// </summary>
    public int? Seed;

    /// <summary>Reported after each epoch; also what the recipe search judges candidates on, when given. Never pass the test data.</summary>
    public IDataView? ValidationSet;

    /// <summary>
    /// CUDA device to train on (needs the CUDA TorchSharp backend); null takes the MLContext's <c>GpuDeviceId</c> (none:
    /// the CPU).
    /// </summary>
    public int? GpuDeviceId;

    /// <summary>
    /// Train on the CPU (with a warning) when the requested GPU is not available, otherwise that is an error; null takes
    /// the MLContext's <c>FallbackToCpu</c>.
    /// </summary>
    public bool? FallbackToCpu;

    /// <summary>Torch intra-op threads; null keeps TorchSharp's default. Like the seed, this is a process-wide torch setting.</summary>
    public int? NumberOfThreads;

    /// <summary>Rows scored per forward pass by the transformer's batch Transform.</summary>
    public int ScoringBatchSize = 32;

    /// <summary>
    /// The most pixels (width x height) an image or mask may declare in its header, checked before it is decoded, in
    /// training and (carried to the transformer's <c>MaxImagePixels</c>) in scoring: 8192 x 8192 by default, above
    /// camera resolutions, while a small file whose header claims more (a 54-byte BMP claiming 30000 x 30000 would take
    /// 3.6 GB) is refused with its size and file named.
    /// </summary>
    public long MaxImagePixels = DefaultMaxImagePixels;

    /// <summary>The default of <see cref="MaxImagePixels"/>: 8192 x 8192.</summary>
    public const long DefaultMaxImagePixels = ImageColumn.DefaultMaxImagePixels;

    /// <summary>The task's preset: its recipe and what its search tries.</summary>
    internal abstract (TrainingRecipe Recipe, RecipeSearchSpace Space) Preset(RecipePreset preset);

    /// <summary>
    /// The recipe with every lever the user set kept as set and the rest from the preset; the warm-up follows the epochs
    /// (the preset's share of them) unless set. <paramref name="builtInBackbone"/>: the trainer loads the built-in
    /// backbone, which the preset's image size is for.
    /// </summary>
    internal TrainingRecipe ResolvedRecipe(bool builtInBackbone)
    {
        var preset = Preset(Recipe).Recipe;
        int epochs = Epochs ?? preset.Epochs;
        int warmup = WarmupEpochs ?? (Epochs is null ? preset.WarmupEpochs : (int)((long)epochs * preset.WarmupEpochs / preset.Epochs));
        var method = Method ?? preset.Method;
        return new TrainingRecipe(ImageSize ?? (builtInBackbone ? preset.ImageSize : null), AdaptedBlocks ?? preset.AdaptedBlocks,
            AdapterScale ?? (AdapterMethods.Of(method).UsesScale ? preset.AdapterScale : 1f), LearningRate ?? preset.LearningRate, epochs,
            BatchSize ?? preset.BatchSize, warmup, method);
    }

    /// <summary>What the search may vary: the preset's (or <see cref="SearchSpace"/>'s) values for the levers left unset.</summary>
    internal RecipeSearchSpace FreeLevers()
    {
        var space = SearchSpace ?? Preset(Recipe).Space;
        var method = Method ?? Preset(Recipe).Recipe.Method;
        bool scaleIsFree = AdapterScale is null && UsesAdapters && AdapterMethods.Of(method).UsesScale;
        // An explicit scale other than 1 rules out the methods that have none.
        var methods = Method is null && UsesAdapters
            ? space.Methods?.Where(m => AdapterScale is null or 1f || AdapterMethods.Of(m).UsesScale).ToArray()
            : null;
        return new RecipeSearchSpace(scaleIsFree ? space.AdapterScales : [], LearningRate is null ? space.LearningRates : [],
            AdaptedBlocks is null && UsesAdapters ? space.AdaptedBlocks : [], methods);
    }

    internal FineTuneSettings Settings(TrainingRecipe recipe, int seed) =>
        new(recipe.Epochs, recipe.BatchSize, recipe.LearningRate, WeightDecay, recipe.WarmupEpochs, WarmupLearningRate, FinalLearningRate, seed,
            EarlyStopping, Augmentation, MaxGradientNorm);

    internal AdapterConfig Adapters(TrainingRecipe recipe) =>
        new(recipe.Method, Placement, AdapterHidden, AdapterGroups, recipe.AdapterScale, AdapterDropout, recipe.LastBlocks);

    internal bool UsesAdapters => Trainable is TrainableParameters.AdaptersAndHead or TrainableParameters.AdaptersHeadAndBiases;

    /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> naming the first option that cannot work.</summary>
    internal virtual void Validate()
    {
        OptionCheck.That(!string.IsNullOrEmpty(ImageColumnName), nameof(ImageColumnName), ImageColumnName, "must name a column");
        OptionCheck.That(Method is null || Enum.IsDefined(Method.Value), nameof(Method), Method, $"is not a method ({string.Join(", ", Enum.GetNames<AdaptationMethod>())})");
        OptionCheck.That(Epochs is null or > 0, nameof(Epochs), Epochs, "must be positive (or null for the recipe's)");
        OptionCheck.That(WarmupEpochs is null || Epochs is null || WarmupEpochs < Epochs || WarmupEpochs == 0, nameof(WarmupEpochs), WarmupEpochs,
            $"must be less than Epochs ({Epochs}), or the learning rate never leaves its warm-up");
        var recipe = ResolvedRecipe(builtInBackbone: true);
        OptionCheck.That(WarmupEpochs is null || recipe.WarmupEpochs == 0 || recipe.WarmupEpochs < recipe.Epochs, nameof(WarmupEpochs), WarmupEpochs,
            $"must be less than the recipe's {recipe.Epochs} epochs (set Epochs too)");
        Settings(recipe, Seed ?? 0).Validate();
        OptionCheck.That(TimeBudget is null || TimeBudget >= TimeSpan.Zero, nameof(TimeBudget), TimeBudget, "cannot be negative (TimeSpan.Zero: no search)");
        OptionCheck.That(AdapterScale is null || float.IsFinite(AdapterScale.Value), nameof(AdapterScale), AdapterScale, "must be finite (or null for the recipe's)");
        OptionCheck.That(AdapterScale is null or 1f || !UsesAdapters || AdapterMethods.Of(recipe.Method).UsesScale, nameof(AdapterScale), AdapterScale,
            $"must be 1 or null: {recipe.Method} has no scale s");
        if (SearchSpace is { } space)
        {
            OptionCheck.That(space.AdapterScales is not null && space.AdapterScales.All(float.IsFinite), "SearchSpace.AdapterScales", space.AdapterScales, "must be finite");
            OptionCheck.That(space.LearningRates is not null && space.LearningRates.All(r => double.IsFinite(r) && r > 0), "SearchSpace.LearningRates",
                space.LearningRates, "must be positive and finite");
            OptionCheck.That(space.AdaptedBlocks is not null && space.AdaptedBlocks.All(b => b > 0), "SearchSpace.AdaptedBlocks", space.AdaptedBlocks, "must be positive");
            OptionCheck.That(space.Methods is null || space.Methods.All(Enum.IsDefined), "SearchSpace.Methods", space.Methods, "must name methods of AdaptationMethod");
        }
        OptionCheck.That(ImageSize is null or > 0, nameof(ImageSize), ImageSize, "must be positive (or null for the backbone's)");
        OptionCheck.That(Mean is null || Mean.Length == 3 && Mean.All(float.IsFinite), nameof(Mean), Mean, "needs three finite values (or null)");
        OptionCheck.That(Std is null || Std.Length == 3 && Std.All(v => float.IsFinite(v) && v != 0), nameof(Std), Std,
            "needs three finite, non-zero values (or null)");
        BackboneLoadOptions?.Validate();
        OptionCheck.That(AdapterHidden > 0, nameof(AdapterHidden), AdapterHidden, "must be positive");
        OptionCheck.That(Enum.IsDefined(FrozenPrefixPrecision), nameof(FrozenPrefixPrecision), FrozenPrefixPrecision,
            $"is not a precision ({string.Join(", ", Enum.GetNames<ScoringPrecision>())})");
        OptionCheck.That(float.IsFinite(AutoPrecisionTolerance) && AutoPrecisionTolerance >= 0, nameof(AutoPrecisionTolerance), AutoPrecisionTolerance,
            "must be finite and not negative");
        OptionCheck.That(AdaptedBlocks is null or > 0, nameof(AdaptedBlocks), AdaptedBlocks, "must be positive (TrainingRecipe.AllBlocks: every block; null: the recipe's)");
        OptionCheck.That(AdapterGroups > 0 && AdapterHidden % AdapterGroups == 0, nameof(AdapterGroups), AdapterGroups,
            $"must be positive and divide AdapterHidden ({AdapterHidden})");
        OptionCheck.That(AdapterDropout is >= 0 and < 1, nameof(AdapterDropout), AdapterDropout, "must be in [0, 1)");
        OptionCheck.That(ValidationSetFraction is null or > 0 and < 1, nameof(ValidationSetFraction), ValidationSetFraction, "must be in (0, 1) (or null)");
        OptionCheck.That(EarlyStopping is null || ValidationSet is not null || ValidationSetFraction is not null, nameof(EarlyStopping), EarlyStopping,
            "needs validation data: give a ValidationSet or a ValidationSetFraction");
        OptionCheck.That(TrainingStateFolder is null || !File.Exists(TrainingStateFolder), nameof(TrainingStateFolder), TrainingStateFolder,
            "is a file: name a folder (it is created if missing)");
        OptionCheck.That(CacheMemoryLimitMegabytes >= 0, nameof(CacheMemoryLimitMegabytes), CacheMemoryLimitMegabytes, "cannot be negative");
        OptionCheck.That(DecodeThreads is null or > 0, nameof(DecodeThreads), DecodeThreads, "must be positive (or null)");
        OptionCheck.That(ShuffleBufferSize > 0, nameof(ShuffleBufferSize), ShuffleBufferSize, "must be positive");
        Augmentation?.Validate();
        OptionCheck.That(DropPathRate is >= 0 and < 1, nameof(DropPathRate), DropPathRate, "must be in [0, 1)");
        OptionCheck.That(GpuDeviceId is null or >= 0, nameof(GpuDeviceId), GpuDeviceId, "cannot be negative");
        OptionCheck.That(NumberOfThreads is null or > 0, nameof(NumberOfThreads), NumberOfThreads, "must be positive (or null for TorchSharp's default)");
        OptionCheck.That(ScoringBatchSize > 0, nameof(ScoringBatchSize), ScoringBatchSize, "must be positive");
        OptionCheck.That(MaxImagePixels > 0, nameof(MaxImagePixels), MaxImagePixels, "must be positive");
    }
}
