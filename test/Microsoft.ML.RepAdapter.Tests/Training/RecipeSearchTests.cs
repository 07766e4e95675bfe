using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Classification;
using Microsoft.ML.RepAdapter.MLNet;
using Microsoft.ML.RepAdapter.Segmentation;
using Microsoft.ML.RepAdapter.Tests.Classification;
using Microsoft.ML.RepAdapter.Tests.Segmentation;
using Microsoft.ML.RepAdapter.Training;

namespace Microsoft.ML.RepAdapter.Tests.Training;

/// <summary>
/// The recipe a bare call trains with, and the search that chooses the unset levers on validation data: deterministic
/// for a seed, explicit levers kept, judged on the validation set or held-out training rows only, within a time budget.
/// </summary>
[TestClass]
public class RecipeSearchTests
{
    /// <summary>Tiny options with the scale and adapted blocks left to the search (the learning rate and epochs set, for speed).</summary>
    private static RepAdapterImageClassificationTrainer.Options Searching(int epochs = 4)
    {
        var options = TinyTrainerOptions.Create(epochs);
        options.AdapterScale = null;
        options.AdaptedBlocks = null;
        options.SearchSpace = new RecipeSearchSpace([0.1f, 5f], [], [1]);
        return options;
    }

    [TestMethod]
    public void BareOptionsTakeTheCpuRecipeAndThePaperRecipeIsOnePresetAway()
    {
        var cpu = new RepAdapterImageClassificationTrainer.Options().ResolvedRecipe(builtInBackbone: true);
        Assert.AreEqual(new TrainingRecipe(112, 3, 10f, 3e-3, 12, 16, 0), cpu);
        var paper = new RepAdapterImageClassificationTrainer.Options { Recipe = RecipePreset.Paper }.ResolvedRecipe(builtInBackbone: true);
        Assert.AreEqual(new TrainingRecipe(null, TrainingRecipe.AllBlocks, 1f, 1e-3, 100, 64, 10), paper);
        Assert.IsNull(new RepAdapterImageClassificationTrainer.Options().ResolvedRecipe(builtInBackbone: false).ImageSize,
            "a checkpoint keeps its own resolution unless ImageSize is set");
        Assert.AreEqual(24, new RepAdapterSegmentationTrainer.Options().ResolvedRecipe(builtInBackbone: true).Epochs);

        // The warm-up follows the epochs when only they are set (this threw before: 10 warm-up epochs of 10).
        var shortPaper = new RepAdapterImageClassificationTrainer.Options { Recipe = RecipePreset.Paper, Epochs = 10 };
        _ = new MLContext().MulticlassClassification.Trainers.RepAdapter(shortPaper);
        Assert.AreEqual(1, shortPaper.ResolvedRecipe(builtInBackbone: true).WarmupEpochs);

        // The catalog's simple overload takes the budget, the recipe and the image size.
        var catalog = new MLContext().MulticlassClassification.Trainers.RepAdapter(timeBudget: TimeSpan.FromMinutes(2), recipe: RecipePreset.Paper, imageSize: 160);
        Assert.IsNotNull(catalog);
    }

    [TestMethod]
    public void ValidationScoresKeepTheIncumbentOnANearTieAndMoveOnClearEvidence()
    {
        var incumbent = new ValidationScore(0.80, 0.50, [0.80, 0.70, 0.90, 0.80, 0.80], [0.5, 0.6, 0.4, 0.5, 0.5]);
        var noisy = new ValidationScore(0.81, 0.50, [0.90, 0.60, 0.90, 0.90, 0.75], [0.5, 0.6, 0.4, 0.5, 0.5]);
        var clear = new ValidationScore(0.90, 0.40, [0.90, 0.80, 0.95, 0.90, 0.95], [0.4, 0.5, 0.3, 0.4, 0.4]);
        var calibrated = new ValidationScore(0.80, 0.30, [0.80, 0.70, 0.90, 0.80, 0.80], [0.3, 0.35, 0.25, 0.3, 0.3]);
        Assert.IsFalse(noisy.Beats(incumbent), "one point up with shards that disagree is chance");
        Assert.IsTrue(clear.Beats(incumbent));
        Assert.IsFalse(incumbent.Beats(clear));
        Assert.IsTrue(calibrated.Beats(incumbent), "same accuracy, a clearly lower loss on every part");
        Assert.IsFalse(incumbent.Beats(incumbent), "a tie keeps the incumbent");
    }

    [TestMethod]
    public void TheSearchIsDeterministicForASeedJudgesOnHeldOutTrainingRowsAndIsSavedWithTheModel()
    {
        TransformerChain<RepAdapterImageClassificationTransformer> Fit(List<string> log, List<EpochReport> reports)
        {
            var mlContext = new MLContext(seed: 1);
            mlContext.Log += (_, e) => { lock (log) log.Add(e.RawMessage); };
            var options = Searching();
            options.MetricsCallback = reports.Add;
            var rows = mlContext.Data.LoadFromEnumerable(TestData.Images(classes: 2, perClass: 10));
            return mlContext.Transforms.Conversion.MapValueToKey("Label")
                .Append(mlContext.Transforms.LoadImages("Image", "", nameof(ImageRow.ImagePath)))
                .Append(mlContext.MulticlassClassification.Trainers.RepAdapter(options))
                .Fit(rows);
        }
        var (log, reports, again) = (new List<string>(), new List<EpochReport>(), new List<EpochReport>());
        var first = Fit(log, reports);
        var second = Fit([], again);
        var search = first.LastTransformer.Summary.Search!;

        Assert.IsNotNull(search);
        Assert.AreEqual("held-out training images", search.ValidatedOn);
        Assert.AreEqual(4, search.ValidationImages, "20 % of each class of 20 training images");
        Assert.AreEqual(2, search.Folds, "a small hold-out is repeated");
        Assert.IsGreaterThanOrEqualTo(4, search.Trials.Count, "the recipe, two scales and one block count, each a sixth of the epochs (at least one)");
        Assert.IsTrue(search.Trials.Take(4).All(t => t.Recipe.Epochs == 1), string.Join("\n", search.Trials));
        Assert.AreEqual(search.Chosen, first.LastTransformer.Summary.Recipe);
        Assert.IsTrue(log.Any(m => m.StartsWith("Recipe search chose candidate")), "the choice is logged");
        Assert.IsTrue(reports.Any(r => r.Run.StartsWith("search 2/4 fold 2")), "epoch reports are tagged by candidate and fold");
        Assert.AreEqual("final", reports[^1].Run, "then the final model trains on every training image");
        Assert.AreEqual(4, reports.Count(r => r.Run == "final"), "the final run trains the full schedule");

        // Same seed, same data: the same trials, the same choice, the same model.
        CollectionAssert.AreEqual(search.Trials.Select(t => (t.Recipe, t.Metric, t.Loss)).ToList(),
            second.LastTransformer.Summary.Search!.Trials.Select(t => (t.Recipe, t.Metric, t.Loss)).ToList());
        CollectionAssert.AreEqual(reports.Select(r => r.Loss).ToList(), again.Select(r => r.Loss).ToList());

        // What the search did is saved with the model.
        var mlContext = new MLContext(seed: 1);
        string path = Path.Combine(Path.GetTempPath(), $"repadapter-search-{Guid.NewGuid():N}.zip");
        try
        {
            mlContext.Model.Save(first, null, path);
            var loaded = (TransformerChain<ITransformer>)mlContext.Model.Load(path, out _);
            var summary = loaded.OfType<RepAdapterImageClassificationTransformer>().Single().Summary;
            Assert.AreEqual(search.Chosen, summary.Search!.Chosen);
            Assert.AreEqual(search.Reason, summary.Search.Reason);
            CollectionAssert.AreEqual(search.Trials.Select(t => t.Metric).ToList(), summary.Search.Trials.Select(t => t.Metric).ToList());
        }
        finally
        {
            File.Delete(path);
        }
    }

    [TestMethod]
    public void ExplicitLeversAreKeptAndAGivenValidationSetIsWhatTheSearchJudgesOn()
    {
        var mlContext = new MLContext(seed: 1);
        var log = TestData.CaptureLog(mlContext);
        var train = TestData.Prepared(mlContext, TestData.Images("train", classes: 2, perClass: 8));
        var validation = TestData.Prepared(mlContext, TestData.Images("test", classes: 2, perClass: 5));
        var options = Searching();
        options.AdapterScale = 3f;
        options.ValidationSet = validation;
        var model = mlContext.MulticlassClassification.Trainers.RepAdapter(options).Fit(train);

        var search = model.Summary.Search!;
        Assert.AreEqual("the validation set", search.ValidatedOn);
        Assert.AreEqual(10, search.ValidationImages);
        Assert.AreEqual(1, search.Folds);
        Assert.IsTrue(search.Trials.All(t => t.Recipe.AdapterScale == 3f), "the scale the user set is never searched");
        Assert.AreEqual(3f, model.AdapterScale);
        CollectionAssert.AreEquivalent(new[] { 3, 1 }, search.Trials.Select(t => t.Recipe.AdaptedBlocks).Distinct().ToArray(),
            "the free lever is searched: the CPU recipe's last 3 blocks and the search space's one");
        Assert.IsTrue(log.Any(m => m.StartsWith("16 training images, 10 validation images")), "the validation images are not trained on");
    }

    [TestMethod]
    public void MethodsNamedInTheSearchSpaceAreCandidatesAndAnExplicitMethodIsKept()
    {
        var mlContext = new MLContext(seed: 1);
        var train = TestData.Prepared(mlContext, TestData.Images("train", classes: 2, perClass: 8));
        RepAdapterImageClassificationTransformer Fit(Action<RepAdapterImageClassificationTrainer.Options> set)
        {
            var options = TinyTrainerOptions.Create(epochs: 4);
            options.SearchSpace = new RecipeSearchSpace([], [], [], [AdaptationMethod.LoRA, AdaptationMethod.SSF]);
            set(options);
            return mlContext.MulticlassClassification.Trainers.RepAdapter(options).Fit(train);
        }

        var searched = Fit(_ => { });
        CollectionAssert.AreEquivalent(new[] { AdaptationMethod.RepAdapter, AdaptationMethod.LoRA, AdaptationMethod.SSF },
            searched.Summary.Search!.Trials.Select(t => t.Recipe.Method).Distinct().ToArray(), "the recipe's method and the space's");
        Assert.AreEqual(searched.Summary.Recipe!.Method, searched.Summary.Adapters!.Method, "the chosen method is the one trained and merged");
        Assert.AreEqual(searched.Summary.Recipe.Method, searched.Summary.Method);

        var scaled = Fit(options => options.AdapterScale = 3f);
        CollectionAssert.DoesNotContain(scaled.Summary.Search!.Trials.Select(t => t.Recipe.Method).ToArray(), AdaptationMethod.SSF,
            "a scale the user set rules out a method that has none");

        var kept = Fit(options => options.Method = AdaptationMethod.DoRA);
        Assert.IsNull(kept.Summary.Search, "a method the user set is not searched (and nothing else was free)");
        Assert.AreEqual(AdaptationMethod.DoRA, kept.Summary.Adapters!.Method);
    }

    [TestMethod]
    public void ACandidateThatDivergesIsDroppedAndTheFitGoesOn()
    {
        var mlContext = new MLContext(seed: 1);
        var log = TestData.CaptureLog(mlContext);
        var train = TestData.Prepared(mlContext, TestData.Images("train", classes: 2, perClass: 8));
        var options = TinyTrainerOptions.Create(epochs: 12);   // two epochs per candidate: the first step breaks the weights, the next loss shows it
        options.LearningRate = null;
        options.SearchSpace = new RecipeSearchSpace([], [1e30], []);
        var model = mlContext.MulticlassClassification.Trainers.RepAdapter(options).Fit(train);

        var trials = model.Summary.Search!.Trials;
        Assert.IsTrue(trials.Single(t => t.Candidate == 2).Diverged, "a learning rate of 1e30 diverges:\n" + string.Join("\n", log));
        Assert.AreEqual(1, model.Summary.Search.ChosenCandidate, "the recipe is kept");
        Assert.IsTrue(log.Any(m => m.Contains("candidate 2") && m.Contains("diverged and is dropped")), string.Join("\n", log));
        Assert.IsNull(Torch.NonFinite.FirstIn(model.Model), "the model returned is finite");
    }

    [TestMethod]
    public void ATimeBudgetSkipsWhatWouldNotFitAndCutsTheFinalRunsEpochs()
    {
        var mlContext = new MLContext(seed: 1);
        var log = TestData.CaptureLog(mlContext);
        var data = TestData.Prepared(mlContext, TestData.Images(classes: 2, perClass: 10));
        var options = Searching();
        options.Epochs = null;
        options.TimeBudget = TimeSpan.FromMilliseconds(1);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var model = mlContext.MulticlassClassification.Trainers.RepAdapter(options).Fit(data);

        var search = model.Summary.Search!;
        Assert.HasCount(1, search.Trials, "only the recipe's short run, which measures the speed, is trained");
        Assert.AreEqual(3, search.Skipped);
        Assert.AreEqual(1, model.Summary.Recipe!.Epochs, "the final run is cut to what fits (the recipe's 12 epochs would not)");
        Assert.IsTrue(log.Any(m => m.Contains("the final run trains 1 of the recipe's 12 epochs")), string.Join("\n", log));
        // The overrun is one short run and one epoch of a tiny model, not the 12-epoch schedule and three more candidates.
        Assert.IsLessThan(60, clock.Elapsed.TotalSeconds);

        var none = Searching();
        none.TimeBudget = TimeSpan.Zero;
        Assert.IsNull(mlContext.MulticlassClassification.Trainers.RepAdapter(none).Fit(data).Summary.Search, "a zero budget trains the recipe as it is");
    }

    [TestMethod]
    public void TheSegmentationTrainerSearchesOnMeanIoU()
    {
        var mlContext = new MLContext(seed: 1);
        var log = TestData.CaptureLog(mlContext);
        var options = SegmentationInputTests.Options();
        options.AdapterScale = null;
        options.Epochs = 4;
        options.SearchSpace = new RecipeSearchSpace([5f], [], []);
        var rows = SegmentationInputTests.Rows(10);
        var model = mlContext.MulticlassClassification.Trainers.RepAdapterSegmentation(options).Fit(mlContext.Data.LoadFromEnumerable(rows));

        var search = model.Summary.Search!;
        Assert.IsGreaterThanOrEqualTo(2, search.Trials.Count);
        CollectionAssert.AreEquivalent(new[] { 1f, 5f }, search.Trials.Select(t => t.Recipe.AdapterScale).Distinct().ToArray());
        Assert.IsTrue(search.Trials.All(t => t.Metric is >= 0 and <= 1 && double.IsFinite(t.Loss)));
        Assert.IsTrue(log.Any(m => m.Contains("validation mIoU")), string.Join("\n", log));
    }
}
