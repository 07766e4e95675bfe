using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Checkpoints;
using Microsoft.ML.RepAdapter.Classification;
using Microsoft.ML.RepAdapter.MLNet;

namespace Microsoft.ML.RepAdapter.Tests.Classification;

[TestClass]
public class TrainerTests
{
    [TestMethod]
    public void FitsInAnOrdinaryPipelineEvaluatesAndMapsKeysBack()
    {
        // Built as a user builds it: ML.NET's pretrained ResNet-18, the default recipe's learning rate, default head
        // initialisation, nothing re-initialised by the test. Pretrained features separate these three classes by a wide
        // margin, so the assertions hold whatever the CPU kernels' rounding.
        var mlContext = new MLContext(seed: 1);
        var log = TestData.CaptureLog(mlContext, e => e.Source.Contains("RepAdapter"));
        var train = mlContext.Data.LoadFromEnumerable(TestData.Images("train", classes: 3, perClass: 12));
        var test = mlContext.Data.LoadFromEnumerable(TestData.Images("test", classes: 3, perClass: 6));
        var options = new RepAdapterImageClassificationTrainer.Options
        {
            Architecture = PretrainedBackbones.MLNetResNet18,
            Epochs = 6,
            BatchSize = 8,
            WarmupEpochs = 0,
            AdapterScale = 1f,
            AdaptedBlocks = TrainingRecipe.AllBlocks,
            LearningRate = 1e-3,
            ScoringBatchSize = 6,
        };

        var pipeline = mlContext.Transforms.Conversion.MapValueToKey("Label")
            .Append(mlContext.Transforms.LoadImages("Image", "", nameof(ImageRow.ImagePath)))
            .Append(mlContext.MulticlassClassification.Trainers.RepAdapter(options))
            .Append(mlContext.Transforms.Conversion.MapKeyToValue("PredictedLabelValue", "PredictedLabel"));
        var model = pipeline.Fit(train);
        var predictions = model.Transform(test);

        var metrics = mlContext.MulticlassClassification.Evaluate(predictions);
        Assert.AreEqual(3, metrics.ConfusionMatrix.NumberOfClasses);
        // Measured 16 of 18 (0.89) here; chance is 1/3.
        Assert.IsGreaterThan(0.6, metrics.MicroAccuracy, "well above chance on unseen test images:\n" + string.Join("\n", log));
        var labels = predictions.GetColumn<string>("PredictedLabelValue").ToList();
        Assert.HasCount(18, labels);
        CollectionAssert.IsSubsetOf(labels.Distinct().ToList(), new[] { "Ankle_boot", "Bag", "Coat" });

        var transformer = model.OfType<RepAdapterImageClassificationTransformer>().Single();
        Assert.AreEqual(3, transformer.NumberOfClasses);
        CollectionAssert.AreEqual(new[] { "Ankle_boot", "Bag", "Coat" }, transformer.LabelNames.ToArray());
        Assert.IsFalse(transformer.Model.AdaptedLayers().Any(), "the transformer holds the merged network");
        using var plain = PretrainedBackbones.LoadMLNetResNet18(numClasses: 3).Backbone;
        Assert.AreEqual(plain.CountParameters(), transformer.Model.CountParameters(), "same parameter count as backbone + head");
        Assert.AreEqual(0L, transformer.Model.CountAdapterParameters());
        Assert.IsGreaterThan(512 * 3 + 3, transformer.TrainableParameterCount, "adapters were trained besides the head");
        Assert.AreEqual(9, transformer.Summary.AdaptersMerged, "one adapter per residual block of stages [2, 2, 2, 3]");
        Assert.AreEqual(1f, transformer.AdapterScale);

        var epochs = log.Where(m => m.StartsWith("epoch ")).ToList();
        Assert.HasCount(6, epochs);
        StringAssert.Contains(epochs[0], "epoch 1/6: loss ");
        StringAssert.Contains(epochs[0], "train acc");
        StringAssert.Contains(epochs[0], "img/s");
        StringAssert.Contains(epochs[0], "ETA");
        double Loss(string line) => double.Parse(line.Split("loss ")[1].Split(',')[0], System.Globalization.CultureInfo.InvariantCulture);
        Assert.IsLessThan(Loss(epochs[0]), Loss(epochs[^1]), "training reduces the loss:\n" + string.Join("\n", epochs));
    }

    [TestMethod]
    public void MLNetsResNet18IsReadFromTheFolderInCheckpointPath()
    {
        // The loader's "pass its folder" must be reachable from the trainer's options: CheckpointPath names it.
        var mlContext = new MLContext(seed: 1);
        var log = TestData.CaptureLog(mlContext);
        var data = TestData.Prepared(mlContext, TestData.Images(classes: 2, perClass: 2));
        RepAdapterImageClassificationTrainer RepAdapter(string checkpointPath) => mlContext.MulticlassClassification.Trainers.RepAdapter(new()
        {
            Architecture = PretrainedBackbones.MLNetResNet18,
            CheckpointPath = checkpointPath,
            ImageSize = 32,
            Epochs = 1,
            BatchSize = 4,
            WarmupEpochs = 0,
        });

        string missing = Path.Combine(Checkpoints.CheckpointFiles.TempDirectory(), "nowhere");
        var error = Assert.ThrowsExactly<FileNotFoundException>(() => RepAdapter(missing).Fit(data));
        StringAssert.Contains(error.Message, missing);
        string source = Path.Combine(AppContext.BaseDirectory, "DnnImageModels");
        string onnxFile = Path.Combine(source, "ResNet18Onnx", "ResNet18.onnx");
        var fileError = Assert.ThrowsExactly<InvalidOperationException>(() => RepAdapter(onnxFile).Fit(data));
        StringAssert.Contains(fileError.Message, "is a file");

        string copy = Checkpoints.CheckpointFiles.TempDirectory();
        TestData.CopyDirectory(source, copy);
        using var model = RepAdapter(copy).Fit(data);
        Assert.AreEqual(PretrainedBackbones.MLNetResNet18, model.Model.Architecture);
        // The default search path holds the same files: the load report says which were read.
        Assert.IsTrue(log.Any(m => m.StartsWith(Path.Combine(copy, "ResNet18Onnx", "ResNet18.onnx"), StringComparison.Ordinal)), string.Join("\n", log));
    }

    [TestMethod]
    public void NumericLabelsMapBackToTheirOwnValuesAndType()
    {
        var mlContext = new MLContext(seed: 1);
        int[] classIds = [7, 3];
        var rows = TestData.Images(classes: 2, perClass: 5)
            .Select(r => new NumericLabelRow { ImagePath = r.ImagePath, Label = r.Label == "Ankle_boot" ? classIds[0] : classIds[1] }).ToList();
        var data = mlContext.Data.LoadFromEnumerable(rows);
        var model = mlContext.Transforms.Conversion.MapValueToKey("Label")
            .Append(mlContext.Transforms.LoadImages("Image", "", nameof(NumericLabelRow.ImagePath)))
            .Append(mlContext.MulticlassClassification.Trainers.RepAdapter(TinyTrainerOptions.Create(epochs: 1)))
            .Append(mlContext.Transforms.Conversion.MapKeyToValue("PredictedLabelValue", "PredictedLabel"))
            .Fit(data);
        var scored = model.Transform(data);
        Assert.AreEqual(NumberDataViewType.Int32, scored.Schema["PredictedLabelValue"].Type);
        CollectionAssert.IsSubsetOf(scored.GetColumn<int>("PredictedLabelValue").Distinct().ToList(), classIds);
        var transformer = model.OfType<RepAdapterImageClassificationTransformer>().Single();
        CollectionAssert.AreEqual(new[] { "7", "3" }, transformer.LabelNames.ToArray(), "key order is first occurrence");
    }

    [TestMethod]
    public void RawImageBytesColumnTrainsLikeModelBuilderInput()
    {
        var mlContext = new MLContext(seed: 1);
        var rows = TestData.Images("train", classes: 2, perClass: 6)
            .Select(r => new ImageBytesRow { ImageSource = File.ReadAllBytes(r.ImagePath), Label = r.Label });
        var data = mlContext.Data.LoadFromEnumerable(rows);
        var options = TinyTrainerOptions.Create(epochs: 2);
        options.ImageColumnName = nameof(ImageBytesRow.ImageSource);
        var model = mlContext.Transforms.Conversion.MapValueToKey("Label")
            .Append(mlContext.MulticlassClassification.Trainers.RepAdapter(options))
            .Fit(data);
        var scores = model.Transform(data).GetColumn<float[]>("Score").ToList();
        Assert.HasCount(12, scores);
        Assert.IsTrue(scores.All(s => s.Length == 2 && Math.Abs(s.Sum() - 1) < 1e-5), "probabilities over 2 classes");
    }

    [TestMethod]
    public void SameSeedSameDataGivesTheSameModelBitwise()
    {
        float[][] Train()
        {
            var mlContext = new MLContext(seed: 1);
            var data = TestData.Prepared(mlContext, TestData.Images(classes: 2, perClass: 8));
            var transformer = mlContext.MulticlassClassification.Trainers.RepAdapter(TinyTrainerOptions.Create(epochs: 2)).Fit(data);
            return [.. transformer.Transform(data).GetColumn<float[]>("Score")];
        }
        var first = Train();
        var second = Train();
        for (int i = 0; i < first.Length; i++) CollectionAssert.AreEqual(first[i], second[i], $"row {i}");
    }

    [TestMethod]
    public void ValidationAccuracyIsReportedPerEpoch()
    {
        var mlContext = new MLContext(seed: 1);
        var log = TestData.CaptureLog(mlContext);
        var mapping = mlContext.Transforms.Conversion.MapValueToKey("Label")
            .Append(mlContext.Transforms.LoadImages("Image", "", nameof(ImageRow.ImagePath)))
            .Fit(mlContext.Data.LoadFromEnumerable(TestData.Images(classes: 2, perClass: 6)));
        var train = mapping.Transform(mlContext.Data.LoadFromEnumerable(TestData.Images(classes: 2, perClass: 6)));
        var validation = mapping.Transform(mlContext.Data.LoadFromEnumerable(TestData.Images("test", classes: 2, perClass: 4)));
        var options = TinyTrainerOptions.Create(epochs: 2);
        options.ValidationSet = validation;
        mlContext.MulticlassClassification.Trainers.RepAdapter(options).Fit(train);
        Assert.AreEqual(2, log.Count(m => m.StartsWith("epoch ") && m.Contains("val acc")));
    }

    [TestMethod]
    public void CancelExecutionStopsTrainingPromptly()
    {
        var mlContext = new MLContext(seed: 1);
        int epochsSeen = 0;
        mlContext.Log += (_, e) =>
        {
            if (e.RawMessage.StartsWith("epoch ") && Interlocked.Increment(ref epochsSeen) == 1) mlContext.CancelExecution();
        };
        var data = TestData.Prepared(mlContext, TestData.Images(classes: 2, perClass: 8));
        var trainer = mlContext.MulticlassClassification.Trainers.RepAdapter(TinyTrainerOptions.Create(epochs: 50));
        Assert.ThrowsExactly<OperationCanceledException>(() => trainer.Fit(data));
        Assert.AreEqual(1, epochsSeen, "no epoch runs after the cancellation");
    }

    [TestMethod]
    public void HeadOnlyBaselineTrainsOnlyTheHead()
    {
        var mlContext = new MLContext(seed: 1);
        var data = TestData.Prepared(mlContext, TestData.Images(classes: 2, perClass: 6));
        var options = TinyTrainerOptions.Create(epochs: 1);
        options.Trainable = TrainableParameters.HeadOnly;
        var transformer = mlContext.MulticlassClassification.Trainers.RepAdapter(options).Fit(data);
        Assert.AreEqual(32L * 2 + 2, transformer.TrainableParameterCount);
        Assert.AreEqual(0, transformer.Summary.AdaptersMerged);
    }

    [TestMethod]
    [DataRow(TrainableParameters.AdaptersAndHead, 1)]
    [DataRow(TrainableParameters.HeadOnly, null)]
    public void AFrozenPrefixComputedOnceTrainsTheModelItWouldTrainEveryStep(TrainableParameters trainable, int? adaptedBlocks)
    {
        (float[][] Scores, List<string> Log, long Trainable) Train(bool cache)
        {
            var mlContext = new MLContext(seed: 1);
            var log = TestData.CaptureLog(mlContext);
            var data = TestData.Prepared(mlContext, TestData.Images(classes: 2, perClass: 8));
            var options = TinyTrainerOptions.Create(epochs: 3);
            options.Trainable = trainable;
            options.AdaptedBlocks = adaptedBlocks;
            options.CacheFrozenPrefix = cache;
            var transformer = mlContext.MulticlassClassification.Trainers.RepAdapter(options).Fit(data);
            return ([.. transformer.Transform(data).GetColumn<float[]>("Score")], log, transformer.TrainableParameterCount);
        }
        var cached = Train(cache: true);
        var everyStep = Train(cache: false);
        Assert.IsTrue(cached.Log.Any(m => m.StartsWith("The frozen prefix") && m.Contains("was computed once per image")), string.Join("\n", cached.Log));
        Assert.IsFalse(everyStep.Log.Any(m => m.StartsWith("The frozen prefix")));
        Assert.AreEqual(everyStep.Trainable, cached.Trainable);
        // The same computation, batched differently for the prefix: equal up to float rounding.
        for (int i = 0; i < cached.Scores.Length; i++)
        {
            for (int k = 0; k < cached.Scores[i].Length; k++) Assert.AreEqual(everyStep.Scores[i][k], cached.Scores[i][k], 1e-4f, $"row {i}, class {k}");
        }
    }

    [TestMethod]
    public void AFrozenPrefixInBFloat16TrainsNearlyTheFloat32ModelAndAutoSaysWhatItChose()
    {
        (float[][] Scores, List<string> Log) Train(ScoringPrecision precision, float tolerance = 0.05f)
        {
            var mlContext = new MLContext(seed: 1);
            var log = TestData.CaptureLog(mlContext);
            var data = TestData.Prepared(mlContext, TestData.Images(classes: 2, perClass: 8));
            var options = TinyTrainerOptions.Create(epochs: 3);
            options.AdaptedBlocks = 1;
            options.FrozenPrefixPrecision = precision;
            options.AutoPrecisionTolerance = tolerance;
            var transformer = mlContext.MulticlassClassification.Trainers.RepAdapter(options).Fit(data);
            return ([.. transformer.Transform(data).GetColumn<float[]>("Score")], log);
        }
        var exact = Train(ScoringPrecision.Float32);
        var reduced = Train(ScoringPrecision.BFloat16);
        float difference = exact.Scores.Zip(reduced.Scores).Max(p => p.First.Zip(p.Second).Max(q => Math.Abs(q.First - q.Second)));
        Console.WriteLine($"bfloat16 prefix against float32: max |score difference| {difference:G3}");
        // bfloat16 keeps 8 bits of mantissa: the cached activations differ, and the model trained on them a little.
        Assert.IsGreaterThan(0f, difference, "the prefix ran in bfloat16");
        Assert.IsLessThanOrEqualTo(0.02f, difference, "a model trained on bfloat16 prefix outputs scores close to the float32 one (measured: 8e-4)");

        // Auto measures and says so; with a tolerance of 0 bfloat16 can never agree, so float32 is chosen and the model is the float32 one.
        var auto = Train(ScoringPrecision.Auto, tolerance: 0f);
        string choice = auto.Log.Single(m => m.StartsWith("Frozen prefix precision Auto:", StringComparison.Ordinal));
        StringAssert.EndsWith(choice, "computing it in float32.");
        for (int i = 0; i < exact.Scores.Length; i++) CollectionAssert.AreEqual(exact.Scores[i], auto.Scores[i], $"row {i}");
        Assert.IsFalse(exact.Log.Any(m => m.StartsWith("Frozen prefix precision", StringComparison.Ordinal)), "Float32 measures nothing");
    }

    [TestMethod]
    [DataRow(ImageCache.Disk)]
    [DataRow(ImageCache.None)]
    public void ImagesAskedToStayOutOfMemoryKeepTheFrozenPrefixOutToo(ImageCache cache)
    {
        // Disk or None says the data may not fit in memory: the prefix's outputs, as large as the images or larger, are not cached.
        var mlContext = new MLContext(seed: 1);
        var log = TestData.CaptureLog(mlContext);
        var options = TinyTrainerOptions.Create(epochs: 1);
        options.Trainable = TrainableParameters.HeadOnly;
        options.Cache = cache;
        mlContext.MulticlassClassification.Trainers.RepAdapter(options).Fit(TestData.Prepared(mlContext, TestData.Images(classes: 2, perClass: 4)));
        Assert.IsFalse(log.Any(m => m.StartsWith("The frozen prefix") && m.Contains("was computed once per image")), string.Join("\n", log));
    }
}
