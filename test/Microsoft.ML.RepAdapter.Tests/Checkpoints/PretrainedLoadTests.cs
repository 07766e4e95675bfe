using Microsoft.ML.RepAdapter.Formats;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Tests.Checkpoints;

/// <summary>
/// Every supported format and layout, loaded by the library, gives PyTorch's logits (fixtures written by
/// test/fixtures/make_fixtures.py) within 1e-4, with the architecture read from the tensor shapes.
/// </summary>
[TestClass]
public class PretrainedLoadTests
{
    public TestContext TestContext { get; set; } = null!;

    private static Tensor Logits(Backbone backbone, Tensor input)
    {
        backbone.eval();
        using var _ = no_grad();
        return backbone.forward(input);
    }

    private float AssertMatches(Tensor expected, Tensor actual, string what)
    {
        float diff = TinyModels.MaxAbsDiff(expected, actual);
        TestContext.WriteLine($"{what}: max |library - PyTorch| = {diff:E2} (max |logit| {TinyModels.MaxAbs(expected):F2})");
        Assert.IsLessThanOrEqualTo(CheckpointFiles.LogitTolerance, diff, what);
        return diff;
    }

    [TestMethod]
    [DataRow("tiny_vit.safetensors", CheckpointFormat.SafeTensors, "timm ViT")]
    [DataRow("tiny_vit.pth", CheckpointFormat.PyTorchZip, "timm ViT")]
    [DataRow("tiny_vit_google.npz", CheckpointFormat.NumpyNpz, "Google ViT .npz")]
    [DataRow("tiny_vit_hf.safetensors", CheckpointFormat.SafeTensors, "Hugging Face ViT")]
    public void ViTLogitsMatchPyTorch(string file, CheckpointFormat format, string layout)
    {
        var (backbone, report) = PretrainedBackbones.Load(CheckpointFiles.Fixture(file), loadOptions: new VisionTransformerLoadOptions(NumHeads: 2));
        var vit = (VisionTransformer)backbone;
        Assert.AreEqual(TinyModels.VitConfig, vit.Config with { DropPathRate = 0 }, "architecture read from the shapes");
        Assert.AreEqual(format, report.Format);
        Assert.AreEqual(layout, report.Layout);
        Assert.IsEmpty(report.IgnoredCheckpointKeys, report.ToString());
        Assert.IsEmpty(report.UnloadedModelKeys, report.ToString());
        Assert.HasCount(backbone.state_dict().Count, report.LoadedKeys);
        AssertMatches(CheckpointFiles.ViTExpected("logits"), Logits(backbone, CheckpointFiles.ViTExpected("input")), file);
    }

    [TestMethod]
    public void HuggingFaceViTModelWithoutPrefixOrHeadLoadsTheSameFeatures()
    {
        // ViTModel (no "vit." prefix, no classifier, a pooler) from the ViTForImageClassification fixture's tensors.
        string path = CheckpointFiles.EditedCopy("tiny_vit_hf.safetensors", tensors =>
        {
            foreach (var key in tensors.Keys.ToList())
            {
                var value = tensors[key];
                tensors.Remove(key);
                if (key.StartsWith("vit.")) tensors[key["vit.".Length..]] = value;
            }
            tensors["pooler.dense.weight"] = randn(32, 32);
            tensors["pooler.dense.bias"] = randn(32);
        }, "vit_model.safetensors");
        var (model, report) = PretrainedBackbones.Load(path, loadOptions: new VisionTransformerLoadOptions(NumHeads: 2));
        var (timm, _) = PretrainedBackbones.Load(CheckpointFiles.Fixture("tiny_vit.safetensors"), loadOptions: new VisionTransformerLoadOptions(NumHeads: 2));
        Assert.AreEqual("Hugging Face ViT", report.Layout);
        Assert.AreEqual(0, model.NumClasses, "ViTModel has no classifier");
        CollectionAssert.AreEquivalent(new[] { "pooler.dense.weight", "pooler.dense.bias" }, report.IgnoredCheckpointKeys.Keys.ToList(), report.ToString());
        var input = CheckpointFiles.ViTExpected("input");
        model.eval();
        timm.eval();
        using var _ = no_grad();
        Assert.IsLessThanOrEqualTo(1e-6f, TinyModels.MaxAbsDiff(timm.ForwardFeatures(input), model.ForwardFeatures(input)));
    }

    [TestMethod]
    public void GoogleNpzWithPreLogitsKeptMatchesPyTorch()
    {
        var (backbone, report) = PretrainedBackbones.Load(CheckpointFiles.Fixture("tiny_vit_prelogits_google.npz"), loadOptions: new VisionTransformerLoadOptions(NumHeads: 2, KeepPreLogits: true));
        Assert.AreEqual(32, ((VisionTransformer)backbone).Config.RepresentationSize);
        Assert.IsEmpty(report.IgnoredCheckpointKeys, report.ToString());
        AssertMatches(CheckpointFiles.ViTExpected("logits_prelogits"), Logits(backbone, CheckpointFiles.ViTExpected("input")), "Google npz with pre-logits");
    }

    [TestMethod]
    public void GoogleNpzWithPreLogitsDroppedIgnoresThemAndTheirHeadOnPurpose()
    {
        // The pre-logits fixture shares every other weight with tiny_vit, so without pre-logits its features are tiny_vit's.
        var (dropped, report) = PretrainedBackbones.Load(CheckpointFiles.Fixture("tiny_vit_prelogits_google.npz"), loadOptions: new VisionTransformerLoadOptions(NumHeads: 2));
        var (plain, _) = PretrainedBackbones.Load(CheckpointFiles.Fixture("tiny_vit.safetensors"), loadOptions: new VisionTransformerLoadOptions(NumHeads: 2));
        Assert.IsNull(((VisionTransformer)dropped).Config.RepresentationSize);
        Assert.AreEqual(0, dropped.NumClasses, "the head trained on pre-logits output is not kept");
        CollectionAssert.AreEquivalent(new[] { "pre_logits.fc.weight", "pre_logits.fc.bias", "head.weight", "head.bias" }, report.IgnoredCheckpointKeys.Keys.ToList());
        StringAssert.Contains(report.IgnoredCheckpointKeys["pre_logits.fc.weight"], "KeepPreLogits");
        var input = CheckpointFiles.ViTExpected("input");
        dropped.eval();
        plain.eval();
        using var _ = no_grad();
        Assert.IsLessThanOrEqualTo(1e-6f, TinyModels.MaxAbsDiff(plain.ForwardFeatures(input), dropped.ForwardFeatures(input)));
    }

    [TestMethod]
    public void PositionEmbeddingsAreResampledForAnotherImageSize()
    {
        var (backbone, report) = PretrainedBackbones.Load(CheckpointFiles.Fixture("tiny_vit.safetensors"), loadOptions: new VisionTransformerLoadOptions(NumHeads: 2), imageSize: 24);
        Assert.AreEqual(24, ((VisionTransformer)backbone).Config.ImageSize);
        Assert.HasCount(1, report.Notes);
        StringAssert.Contains(report.Notes[0], "pos_embed resampled");
        var posEmbed = backbone.state_dict()["pos_embed"];
        float posDiff = TinyModels.MaxAbsDiff(CheckpointFiles.ViTExpected("pos_embed_24"), posEmbed);
        TestContext.WriteLine($"pos_embed 4x4 -> 6x6: max |library - PyTorch| = {posDiff:E2}");
        Assert.IsLessThanOrEqualTo(1e-5f, posDiff);
        AssertMatches(CheckpointFiles.ViTExpected("logits_24"), Logits(backbone, CheckpointFiles.ViTExpected("input_24")), "24x24 resampled");
    }

    [TestMethod]
    [DataRow("tiny_resnet_basic.pth", "logits_basic", ResNetBlock.Basic, new[] { 8, 16, 32, 64 })]
    [DataRow("tiny_resnet_basic.safetensors", "logits_basic", ResNetBlock.Basic, new[] { 8, 16, 32, 64 })]
    [DataRow("tiny_resnet_bottleneck.pth", "logits_bottleneck", ResNetBlock.Bottleneck, new[] { 4, 8, 16, 32 })]
    public void TorchvisionResNetLogitsMatchPyTorch(string file, string expected, ResNetBlock block, int[] widths)
    {
        var (backbone, report) = PretrainedBackbones.Load(CheckpointFiles.Fixture(file), imageSize: 32);
        var config = ((ResNet)backbone).Config;
        Assert.AreEqual(block, config.Block);
        CollectionAssert.AreEqual(new[] { 1, 1, 1, 1 }, config.Layers);
        CollectionAssert.AreEqual(widths, config.StageWidths);
        Assert.AreEqual(5, config.NumClasses);
        Assert.AreEqual("torchvision ResNet", report.Layout);
        Assert.IsEmpty(report.IgnoredCheckpointKeys, report.ToString());
        Assert.IsEmpty(report.UnloadedModelKeys, report.ToString());
        AssertMatches(CheckpointFiles.ResNetExpected(expected), Logits(backbone, CheckpointFiles.ResNetExpected("input")), file);
    }

    [TestMethod]
    public void HeadsFollowTheWidthOver64RuleWhenNotGiven()
    {
        torch.manual_seed(11);
        var original = new VisionTransformer(new VisionTransformerConfig(ImageSize: 32, PatchSize: 8, EmbedDim: 128, Depth: 1, NumHeads: 2, MlpRatio: 2, NumClasses: 3));
        TinyModels.Randomize(original, seed: 11);
        string path = Path.Combine(CheckpointFiles.TempDirectory(), "vit128.safetensors");
        CheckpointExport.SaveMergedSafeTensors(original, path);

        var (loaded, _) = PretrainedBackbones.Load(path);
        var config = ((VisionTransformer)loaded).Config;
        Assert.AreEqual(2, config.NumHeads, "128 / 64");
        Assert.AreEqual("vit_patch8_dim128_depth1", loaded.Architecture, "no preset has this shape");
        Assert.AreEqual(2.0, config.MlpRatio);
        Assert.AreEqual(32, config.ImageSize);
        var input = TinyModels.Images(original);
        Assert.IsLessThanOrEqualTo(1e-5f, TinyModels.MaxAbsDiff(Logits(original, input), Logits(loaded, input)));
        Assert.AreEqual(4, ((VisionTransformer)PretrainedBackbones.Load(path, loadOptions: new VisionTransformerLoadOptions(NumHeads: 4)).Backbone).Config.NumHeads, "numHeads overrides the rule");
    }

    [TestMethod]
    public void AnInferredArchitectureThatIsAPresetCarriesItsName()
    {
        var original = BackbonePresets.Create("vit_tiny_patch16_224", numClasses: 0);
        string path = Path.Combine(CheckpointFiles.TempDirectory(), "vit_tiny.safetensors");
        CheckpointExport.SaveMergedSafeTensors(original, path);
        var (loaded, _) = PretrainedBackbones.Load(path);
        Assert.AreEqual("vit_tiny_patch16_224", loaded.Architecture);
        Assert.AreEqual(VisionTransformerFamily.PresetConfigs["vit_tiny_patch16_224"] with { NumClasses = 0 }, ((VisionTransformer)loaded).Config, "192 / 64 = 3 heads");
    }

    [TestMethod]
    public void HeadsThatTheRuleCannotGiveMustBePassed()
    {
        var error = Assert.ThrowsExactly<CheckpointException>(() => PretrainedBackbones.Load(CheckpointFiles.Fixture("tiny_vit.safetensors")));
        StringAssert.Contains(error.Message, "tiny_vit.safetensors");
        StringAssert.Contains(error.Message, "NumHeads");
        StringAssert.Contains(error.Message, "found 32");
    }

    [TestMethod]
    public void APresetThatDoesNotMatchTheShapesIsRefusedByKeyAndShape()
    {
        var error = Assert.ThrowsExactly<CheckpointException>(() => PretrainedBackbones.Load(CheckpointFiles.Fixture("tiny_vit.safetensors"), preset: "vit_tiny_patch16_224"));
        StringAssert.Contains(error.Message, "tiny_vit.safetensors");
        StringAssert.Contains(error.Message, "'cls_token' shape: expected [1, 1, 192], found [1, 1, 32]");
    }

    [TestMethod]
    public void ADifferentClassCountKeepsANewHeadAndReportsTheOldOneAsIgnored()
    {
        var (full, _) = PretrainedBackbones.Load(CheckpointFiles.Fixture("tiny_vit.safetensors"), loadOptions: new VisionTransformerLoadOptions(NumHeads: 2));
        var (three, report) = PretrainedBackbones.Load(CheckpointFiles.Fixture("tiny_vit.safetensors"), loadOptions: new VisionTransformerLoadOptions(NumHeads: 2), numClasses: 3);
        Assert.AreEqual(3, three.NumClasses);
        CollectionAssert.AreEquivalent(new[] { "head.weight", "head.bias" }, report.IgnoredCheckpointKeys.Keys.ToList());
        StringAssert.Contains(report.IgnoredCheckpointKeys["head.weight"], "class count differs");
        CollectionAssert.AreEquivalent(new[] { "head.weight", "head.bias" }, report.UnloadedModelKeys.Keys.ToList());
        var input = CheckpointFiles.ViTExpected("input");
        full.eval();
        three.eval();
        using var _ = no_grad();
        Assert.AreEqual(0f, TinyModels.MaxAbsDiff(full.ForwardFeatures(input), three.ForwardFeatures(input)), "the backbone itself is fully loaded");

        var (headless, headlessReport) = PretrainedBackbones.Load(CheckpointFiles.Fixture("tiny_vit.safetensors"), loadOptions: new VisionTransformerLoadOptions(NumHeads: 2), numClasses: 0);
        Assert.AreEqual(0, headless.NumClasses);
        StringAssert.Contains(headlessReport.IgnoredCheckpointKeys["head.bias"], "no head");
    }

    [TestMethod]
    public void LoadWeightsFillsAnExistingBackbone()
    {
        var backbone = TinyModels.Create("vit", seed: 5);
        var report = backbone.LoadWeights(CheckpointFiles.Fixture("tiny_vit.pth"));
        Assert.AreEqual(CheckpointFormat.PyTorchZip, report.Format);
        AssertMatches(CheckpointFiles.ViTExpected("logits"), Logits(backbone, CheckpointFiles.ViTExpected("input")), "LoadWeights(tiny_vit.pth)");
    }

    [TestMethod]
    public void HalfPrecisionCheckpointsAreWidenedToFloat32()
    {
        string path = CheckpointFiles.EditedCopy("tiny_vit.safetensors", tensors =>
        {
            foreach (var key in tensors.Keys.ToList()) tensors[key] = tensors[key].to(ScalarType.Float16);
        });
        var (backbone, _) = PretrainedBackbones.Load(path, loadOptions: new VisionTransformerLoadOptions(NumHeads: 2));
        Assert.AreEqual(ScalarType.Float32, backbone.state_dict()["pos_embed"].dtype);
        // float16 weights round at ~1e-3 relative: close to, not equal to, the float32 logits.
        Assert.IsLessThan(0.05f, TinyModels.MaxAbsDiff(CheckpointFiles.ViTExpected("logits"), Logits(backbone, CheckpointFiles.ViTExpected("input"))));
    }

    [TestMethod]
    public void LoadingInsideACallersDisposeScopeLeavesAUsableBackbone()
    {
        Backbone backbone;
        using (NewDisposeScope())
        {
            backbone = PretrainedBackbones.Load(CheckpointFiles.Fixture("tiny_vit.safetensors"), loadOptions: new VisionTransformerLoadOptions(NumHeads: 2)).Backbone;
        }
        AssertMatches(CheckpointFiles.ViTExpected("logits"), Logits(backbone, CheckpointFiles.ViTExpected("input")), "loaded inside a dispose scope");
    }
}
