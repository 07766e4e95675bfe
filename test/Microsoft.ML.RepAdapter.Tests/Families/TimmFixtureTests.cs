using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Checkpoints;
using Microsoft.ML.RepAdapter.Classification;
using Microsoft.ML.RepAdapter.MLNet;
using Microsoft.ML.RepAdapter.Formats;
using Microsoft.ML.RepAdapter.Tests.Checkpoints;
using Microsoft.ML.RepAdapter.Tests.Deployment;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Tests.Families;

/// <summary>
/// Files written by timm itself (test/fixtures/make_timm_fixtures.py, timm 1.0.29.dev0, perturbed weights) and by
/// OpenAI's CLIP code (make_clip_fixtures.py), loaded as a user loads a download, against the logits timm computed; then random non-zero adapters merged into them, and the merged model exported to ONNX.
/// </summary>
[TestClass]
public class TimmFixtureTests
{
    public TestContext TestContext { get; set; } = null!;

    private static string Checkpoint(string name) => CheckpointFiles.Fixture(Path.Combine("timm", name));

    // The ViT-family fixtures are too narrow for the width / 64 heads rule: their loader is told the heads.
    private static VisionTransformerLoadOptions? ViTOptions(string name) =>
        name.StartsWith("swin", StringComparison.Ordinal) || name.StartsWith("convnext", StringComparison.Ordinal) ? null : new(NumHeads: 2);

    private static Tensor Expected(string key, string file = "expected.safetensors") => CheckpointFiles.Expected(Path.Combine("timm", file), key);

    /// <param name="name">The fixture: timm's model, written by make_timm_fixtures.py.</param>
    /// <param name="size">Its image size.</param>
    /// <param name="givenSize">Whether the size is passed to the loader; else it must infer it (a Swin window rule, a saved mask).</param>
    /// <param name="expectedFile">The file of timm's logits (another timm's for an older layout).</param>
    [TestMethod]
    [DataRow("vit", 32, true, "expected.safetensors")]
    [DataRow("vit_layerscale", 32, true, "expected.safetensors")]
    [DataRow("swin", 32, true, "expected.safetensors")]
    [DataRow("swin_window2", 64, false, "expected.safetensors")]
    [DataRow("swin_timm095", 32, false, "expected_timm095.safetensors")]
    [DataRow("convnext", 32, true, "expected.safetensors")]
    [DataRow("convnext_conv_mlp", 32, true, "expected.safetensors")]
    [DataRow("dinov2", 42, false, "expected.safetensors")]
    [DataRow("dinov2_reg4", 42, false, "expected.safetensors")]
    [DataRow("deit_distilled", 32, false, "expected.safetensors")]
    [DataRow("clip_classifier", 32, false, "expected.safetensors")]
    public void TimmWrittenCheckpointsGiveTimmsLogitsAndMergeExactly(string name, int size, bool givenSize, string expectedFile)
    {
        using var scope = NewDisposeScope();
        var (backbone, report) = PretrainedBackbones.Load(Checkpoint($"{name}.safetensors"), imageSize: givenSize ? size : null, loadOptions: ViTOptions(name));
        TestContext.WriteLine(report.ToString());
        Assert.AreEqual(size, backbone.Input.ImageSize, "the image size");
        backbone.eval();
        var images = Expected($"input_{size}", expectedFile);
        var expected = Expected($"{name}_logits", expectedFile);
        using (no_grad())
        {
            float relative = TinyModels.MaxAbsDiff(expected, backbone.forward(images)) / TinyModels.MaxAbs(expected);
            TestContext.WriteLine($"{name} ({report.Layout}): max |library - timm| / max |timm| = {relative:E2}");
            Assert.IsLessThanOrEqualTo(1e-4f, relative, report.Layout);
        }

        AssertMergesAndExports(backbone, images, expected, name);
    }

    /// <summary>DINOv2 at another size: timm resamples the position embeddings (bicubic, antialiased; a reg4 model's cover the patches only).</summary>
    [TestMethod]
    [DataRow("dinov2")]
    [DataRow("dinov2_reg4")]
    public void Dinov2PositionEmbeddingsAreResampledAsTimmDoes(string name)
    {
        using var scope = NewDisposeScope();
        var (backbone, report) = PretrainedBackbones.Load(Checkpoint($"{name}.safetensors"), imageSize: 56, loadOptions: ViTOptions(name));
        TestContext.WriteLine(report.ToString());
        StringAssert.Contains(report.ToString(), "pos_embed resampled");
        backbone.eval();
        var expected = Expected($"{name}_at56_logits");
        using (no_grad())
        {
            float relative = TinyModels.MaxAbsDiff(expected, backbone.forward(Expected("input_56"))) / TinyModels.MaxAbs(expected);
            TestContext.WriteLine($"{name} at 56 px: max |library - timm| / max |timm| = {relative:E2}");
            Assert.IsLessThanOrEqualTo(1e-4f, relative);
        }
    }

    /// <summary>
    /// Meta's DINOv2 .pth (torch.hub; written from timm's weights and checked there to convert back through timm's own
    /// _convert_dinov2): timm's pooled features. Hugging Face's Dinov2Model layout is refused by name.
    /// </summary>
    [TestMethod]
    [DataRow("dinov2_meta.pth", "dinov2")]
    [DataRow("dinov2_meta_reg4.pth", "dinov2_reg4")]
    public void MetaDinov2CheckpointsGiveTimmsFeatures(string file, string timmName)
    {
        using var scope = NewDisposeScope();
        var (backbone, report) = PretrainedBackbones.Load(Checkpoint(file), loadOptions: ViTOptions(timmName));
        TestContext.WriteLine(report.ToString());
        Assert.AreEqual("Meta DINOv2", report.Layout);
        Assert.AreEqual(0, backbone.NumClasses, "Meta's files have no head");
        backbone.eval();
        var expected = Expected($"{timmName}_features");
        using (no_grad())
        {
            float relative = TinyModels.MaxAbsDiff(expected, backbone.forward(Expected("input_42"))) / TinyModels.MaxAbs(expected);
            TestContext.WriteLine($"{file}: max |library - timm| / max |timm| = {relative:E2}");
            Assert.IsLessThanOrEqualTo(1e-4f, relative);
        }

        string hf = CheckpointFiles.EditedCopy("tiny_vit_hf.safetensors", t => t["encoder.layer.0.layer_scale1.lambda1"] = ones(32));
        var error = Assert.ThrowsExactly<CheckpointException>(() => PretrainedBackbones.Load(hf, loadOptions: new VisionTransformerLoadOptions(NumHeads: 2)));
        StringAssert.Contains(error.Message, "Dinov2Model layout is not supported");
    }

    /// <summary>timm models the families do not read are refused naming what differs, not with a shape error.</summary>
    [TestMethod]
    [DataRow("convnext.safetensors", "stages.0.blocks.0.mlp.grn.weight", "ConvNeXt V2")]
    [DataRow("convnext.safetensors", "stem.0.weight", "overlapping stem")]
    [DataRow("convnext.safetensors", "stem.1.bias", "norms without a bias")]
    [DataRow("dinov2.safetensors", "blocks.0.mlp.w12.weight", "SwiGLU")]
    public void UnsupportedTimmVariantsAreRefusedByName(string file, string key, string message)
    {
        string edited = CheckpointFiles.EditedCopy(Path.Combine("timm", file), name: file, edit: t =>
        {
            if (key == "stem.0.weight") t[key] = randn(8, 3, 3, 3);
            else if (key.EndsWith(".bias", StringComparison.Ordinal)) t.Remove(key);
            else t[key] = ones(4);
        });
        var error = Assert.ThrowsExactly<CheckpointException>(() => PretrainedBackbones.Load(edited, loadOptions: ViTOptions(file)));
        StringAssert.Contains(error.Message, message);
    }

    /// <summary>A Swin at a size that is not a whole number of windows says that ImageSize is the fix, and which size timm uses.</summary>
    [TestMethod]
    public void SwinAtASizeOfNoWholeWindowsNamesImageSize()
    {
        var error = Assert.ThrowsExactly<ArgumentException>(() => PretrainedBackbones.Load(Checkpoint("swin.safetensors"), imageSize: 96));
        StringAssert.Contains(error.Message, "6x6 map is not a whole number of 4x4 windows at image size 96: set ImageSize");
        StringAssert.Contains(error.Message, "128 px for window 4");
    }

    /// <summary>
    /// CLIP written by OpenAI's own code (test/fixtures/make_clip_fixtures.py, openai/CLIP's model.py): the state dict
    /// of clip.load, text tower beside the image tower, and the image tower alone as open_clip saves it, against
    /// OpenAI's encode_image; and the same weights as timm converts them, against timm's GELU model. Then merged and exported.
    /// </summary>
    [TestMethod]
    [DataRow("openai_clip.pth", "OpenAI / open_clip CLIP", "embedding", 18)]
    [DataRow("open_clip.safetensors", "OpenAI / open_clip CLIP", "embedding", 0)]
    [DataRow("timm_clip.safetensors", "timm CLIP ViT", "timm_clip_logits", 1)]
    public void ClipWrittenByOpenAIAndTimmGivesTheirEmbeddingsAndMergesExactly(string file, string layout, string expectedKey, int ignored)
    {
        using var scope = NewDisposeScope();
        var (backbone, report) = PretrainedBackbones.Load(CheckpointFiles.Fixture(Path.Combine("clip", file)));
        TestContext.WriteLine(report.ToString());
        Assert.AreEqual(layout, report.Layout);
        Assert.AreEqual(ignored, report.IgnoredCheckpointKeys.Count, "the text tower (OpenAI) or the projection's zero bias (timm) is left out");
        Assert.AreEqual(16, backbone.FeatureDim, "the pooled feature is the CLIP embedding (the image projection's output)");
        Assert.IsTrue(report.Notes.Any(n => n.StartsWith("activation:", StringComparison.Ordinal)), "the assumed activation is reported");
        backbone.eval();
        var images = CheckpointFiles.Expected(Path.Combine("clip", "expected.safetensors"), "input_32");
        var expected = CheckpointFiles.Expected(Path.Combine("clip", "expected.safetensors"), expectedKey);
        using (no_grad())
        {
            float relative = TinyModels.MaxAbsDiff(expected, backbone.forward(images)) / TinyModels.MaxAbs(expected);
            TestContext.WriteLine($"{file}: max |library - reference| / max |reference| = {relative:E2}");
            Assert.IsLessThanOrEqualTo(1e-4f, relative);
        }
        AssertMergesAndExports(backbone, images, expected, file);
    }

    /// <summary>
    /// A CLIP classifier (timm's <c>*_clip_224.openai_ft_in1k</c>: a head, no projection) takes its own preset's config
    /// without the projection, and only an inferred architecture reports the activation it assumed.
    /// </summary>
    [TestMethod]
    public void ClipClassifierTakesItsPresetAndOnlyAnInferredOneReportsTheAssumedActivation()
    {
        using var scope = NewDisposeScope();
        string path = Checkpoint("clip_classifier.safetensors");
        using (var checkpoint = CheckpointReader.Read(path))
        {
            var converted = CheckpointConversion.Convert(checkpoint, [ClipFamily.Instance]).Converted;
            var config = ClipFamily.ConfigFor(path, converted, "vit_base_patch32_clip_quickgelu_224", new CheckpointOptions());
            Assert.AreEqual((MlpActivation.QuickGelu, (int?)null, 5, 768), (config.Activation, config.ImageProjection, config.NumClasses, config.EmbedDim));
            Assert.IsNotNull(converted.Assumptions, "the layout says what an inferred model assumes");
        }

        var (inferred, report) = PretrainedBackbones.Load(path, loadOptions: new VisionTransformerLoadOptions(NumHeads: 2));
        using (inferred)
        {
            Assert.AreEqual(MlpActivation.Gelu, ((VisionTransformer)inferred).Config.Activation);
            StringAssert.Contains(report.ToString(), "GELU assumed");
        }

        // Weights loaded into a backbone already built: its activation is what it is.
        using var built = new VisionTransformer(new VisionTransformerConfig(ImageSize: 32, PatchSize: 8, EmbedDim: 32, Depth: 2, NumHeads: 2,
            NumClasses: 5, PreNorm: true, LayerNormEps: 1e-5, Activation: MlpActivation.QuickGelu));
        Assert.DoesNotContain("assumed", built.LoadWeights(path).ToString());
    }

    /// <summary>
    /// DINOv2 (registers, LayerScale, patch 14) and DeiT distilled, as a user trains them: the timm file through the
    /// catalog, adapters trained and merged; the saved model reloads and scores the same.
    /// </summary>
    [TestMethod]
    [DataRow("dinov2_reg4")]
    [DataRow("deit_distilled")]
    public void TrainsThroughTheCatalogMergesAndReloads(string name)
    {
        var mlContext = new MLContext(seed: 1);
        var data = TestData.Prepared(mlContext, TestData.Images(classes: 2, perClass: 4));
        var model = mlContext.MulticlassClassification.Trainers.RepAdapter(new RepAdapterImageClassificationTrainer.Options
        {
            CheckpointPath = Checkpoint($"{name}.safetensors"),
            BackboneLoadOptions = new VisionTransformerLoadOptions(NumHeads: 2),
            Epochs = 2,
            BatchSize = 4,
            WarmupEpochs = 0,
            AdapterScale = 1f,
            AdaptedBlocks = TrainingRecipe.AllBlocks,
            LearningRate = 1e-3,
        }).Fit(data);
        using (model)
        {
            Assert.AreEqual(4, model.Summary.AdaptersMerged, "two adapters per block (qkv and fc1: the default placement)");
            Assert.IsFalse(model.Model.AdaptedLayers().Any(), "the transformer holds the merged network");
            var scores = model.Transform(data).GetColumn<float[]>("Score").ToList();
            string path = Path.Combine(CheckpointFiles.TempDirectory(), $"{name}.zip");
            mlContext.Model.Save(model, data.Schema, path);
            var reloaded = mlContext.Model.Load(path, out _);
            var again = reloaded.Transform(data).GetColumn<float[]>("Score").ToList();
            Assert.HasCount(8, again);
            for (int i = 0; i < scores.Count; i++)
                for (int c = 0; c < 2; c++) Assert.AreEqual(scores[i][c], again[i][c], 1e-5f, $"row {i}, class {c}");
            (reloaded as IDisposable)?.Dispose();
        }
    }

    private void AssertMergesAndExports(Backbone backbone, Tensor images, Tensor expected, string name)
    {
        backbone.AttachAdapters(new AdapterConfig(Hidden: 8, Groups: 2, Scale: 1f));
        TinyModels.Randomize(backbone, seed: 3, adapterStd: 0.1);
        backbone.eval();
        using (no_grad())
        {
            var adapted = backbone.forward(images);
            Assert.IsGreaterThan(1e-3f, TinyModels.MaxAbsDiff(adapted, expected), "the adapters change the logits");
            Assert.IsGreaterThan(0, backbone.MergeAdapters());
            Assert.IsLessThanOrEqualTo(1e-4f * Math.Max(1, TinyModels.MaxAbs(adapted)), TinyModels.MaxAbsDiff(adapted, backbone.forward(images)), "merged");
        }

        // The merged model as ONNX (raw pixels in): the same logits.
        using var session = OnnxRun.Session(backbone.ExportOnnx);
        var pixels = OnnxRun.Pixels(2, backbone.Input.ImageSize);
        Tensor reference;
        using (no_grad()) reference = backbone.forward(backbone.Input.Normalize(pixels));
        OnnxRun.AssertClose(reference, OnnxRun.Run(session, pixels), $"{name} as ONNX");
    }
}
