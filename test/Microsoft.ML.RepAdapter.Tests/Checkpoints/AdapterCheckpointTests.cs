using Microsoft.ML.RepAdapter.Formats;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Tests.Checkpoints;

/// <summary>
/// Adapters trained in PyTorch (official names) reproduce PyTorch's adapted and merged logits; merged weights go back
/// out as timm-named safetensors; adapter-only checkpoints round-trip and refuse a different backbone.
/// </summary>
[TestClass]
public class AdapterCheckpointTests
{
    private const string LibraryMergedFixture = "tiny_vit_merged_by_library.safetensors";

    public TestContext TestContext { get; set; } = null!;

    private static Backbone TinyViT() => PretrainedBackbones.Load(CheckpointFiles.Fixture("tiny_vit.safetensors"), loadOptions: new VisionTransformerLoadOptions(NumHeads: 2)).Backbone;

    private static Tensor Logits(Backbone backbone)
    {
        backbone.eval();
        using var _ = no_grad();
        return backbone.forward(CheckpointFiles.ViTExpected("input"));
    }

    private void AssertLogits(string expectedKey, Backbone backbone, string what)
    {
        float diff = TinyModels.MaxAbsDiff(CheckpointFiles.ViTExpected(expectedKey), Logits(backbone));
        TestContext.WriteLine($"{what}: max |library - PyTorch| = {diff:E2}");
        Assert.IsLessThanOrEqualTo(CheckpointFiles.LogitTolerance, diff, what);
    }

    /// <summary>tiny ViT + the official-name adapter fixture, merged: the library's export of it.</summary>
    private static string ExportMergedTinyViT(string directory)
    {
        var backbone = TinyViT();
        AdapterCheckpoint.ImportOfficial(backbone, CheckpointFiles.Fixture("tiny_vit_adapters.safetensors"));
        backbone.MergeAdapters();
        string path = Path.Combine(directory, LibraryMergedFixture);
        CheckpointExport.SaveMergedSafeTensors(backbone, path);
        return path;
    }

    [TestMethod]
    public void OfficialAdaptersReproducePyTorchAdaptedAndMergedLogits()
    {
        var backbone = TinyViT();
        var config = AdapterCheckpoint.ImportOfficial(backbone, CheckpointFiles.Fixture("tiny_vit_adapters.safetensors"));
        Assert.AreEqual(new AdapterConfig(AdaptationMethod.RepAdapter, AdapterPlacement.Block, Hidden: 8, Groups: 2, Scale: 0.5f), config);
        Assert.AreEqual(4, backbone.AdaptedLayers().Count());
        AssertLogits("logits_adapted", backbone, "adapted (official adapter names)");

        Assert.AreEqual(4, backbone.MergeAdapters());
        AssertLogits("logits_merged", backbone, "merged in C#");

        using var byTorch = CheckpointReader.Read(CheckpointFiles.Fixture("tiny_vit_merged_by_torch.safetensors"));
        var state = backbone.state_dict();
        CollectionAssert.AreEquivalent(byTorch.Tensors.Keys.ToList(), state.Keys.ToList());
        float worst = byTorch.Tensors.Max(p => TinyModels.MaxAbsDiff(p.Value, state[p.Key]));
        TestContext.WriteLine($"merged weights: max |C# - PyTorch| = {worst:E2}");
        Assert.IsLessThanOrEqualTo(1e-5f, worst);
    }

    [TestMethod]
    public void MergedExportIsTimmNamedAndReloadsToTheSameLogits()
    {
        string path = ExportMergedTinyViT(CheckpointFiles.TempDirectory());
        using (var file = CheckpointReader.Read(path))
        using (var timm = CheckpointReader.Read(CheckpointFiles.Fixture("tiny_vit.safetensors")))
        {
            CollectionAssert.AreEquivalent(timm.Tensors.Keys.ToList(), file.Tensors.Keys.ToList(), "exactly timm's state-dict names");
            Assert.AreEqual("pt", file.Metadata["format"]);
        }
        var (reloaded, report) = PretrainedBackbones.Load(path, loadOptions: new VisionTransformerLoadOptions(NumHeads: 2));
        Assert.AreEqual("timm ViT", report.Layout);
        AssertLogits("logits_merged", reloaded, "exported and reloaded");
    }

    /// <summary>
    /// The committed fixture is the library's export, which make_fixtures.py loads into its PyTorch ViT (check
    /// "merged_by_library reproduces logits_adapted"). Regenerate it with REPADAPTER_WRITE_FIXTURES=1.
    /// </summary>
    [TestMethod]
    public void CommittedLibraryExportMatchesAFreshExport()
    {
        string fresh = ExportMergedTinyViT(CheckpointFiles.TempDirectory());
        if (Environment.GetEnvironmentVariable("REPADAPTER_WRITE_FIXTURES") == "1")
        {
            File.Copy(fresh, Path.Combine(CheckpointFiles.SourceFixturesDirectory(), LibraryMergedFixture), overwrite: true);
            File.Copy(fresh, CheckpointFiles.Fixture(LibraryMergedFixture), overwrite: true);
        }
        using var committed = CheckpointReader.Read(CheckpointFiles.Fixture(LibraryMergedFixture));
        using var regenerated = CheckpointReader.Read(fresh);
        CollectionAssert.AreEqual(regenerated.Tensors.Keys.ToList(), committed.Tensors.Keys.ToList());
        foreach (var (key, tensor) in regenerated.Tensors)
        {
            Assert.AreEqual(tensor.dtype, committed[key].dtype, key);
            CollectionAssert.AreEqual(tensor.shape, committed[key].shape, key);
            // Merged qkv / fc1 come from matmuls, whose last bits differ between CPUs' BLAS kernels (the fixture was written
            // on the development machine): rounding-sized for these weights (|w| < 1), far below any merging mistake.
            Assert.IsLessThanOrEqualTo(1e-5f, TinyModels.MaxAbsDiff(tensor, committed[key]), key);
        }
    }

    [TestMethod]
    public void ExportRefusesUnmergedAdapters()
    {
        var backbone = TinyViT();
        backbone.AttachAdapters(new AdapterConfig());
        var error = Assert.ThrowsExactly<InvalidOperationException>(
            () => CheckpointExport.SaveMergedSafeTensors(backbone, Path.Combine(CheckpointFiles.TempDirectory(), "x.safetensors")));
        StringAssert.Contains(error.Message, "MergeAdapters");
    }

    [TestMethod]
    public void AdapterCheckpointHoldsOnlyAdaptersHeadAndConfigAndRoundTrips()
    {
        var trained = TinyViT();
        var config = AdapterCheckpoint.ImportOfficial(trained, CheckpointFiles.Fixture("tiny_vit_adapters.safetensors"));
        string path = Path.Combine(CheckpointFiles.TempDirectory(), "task.safetensors");
        AdapterCheckpoint.Save(trained, config, path);

        using (var file = CheckpointReader.Read(path))
        {
            Assert.IsTrue(file.Tensors.Keys.All(k => BackboneAdapters.IsAdapterParameter(k) || k.StartsWith("head.")), string.Join(", ", file.Tensors.Keys));
            Assert.HasCount(4 * 4 + 2, file.Tensors, "4 adapters x (conv_A, conv_B) x (weight, bias) + head");
            Assert.IsTrue(file.Tensors.ContainsKey("blocks.0.attn.qkv.adapter.conv_A.weight"));
            Assert.AreEqual(AdapterCheckpoint.BackboneFingerprint(trained), file.Metadata["backbone_fingerprint"]);
            Assert.AreEqual("5", file.Metadata["num_classes"]);
            Assert.AreEqual("0.5", file.Metadata["scale"]);
        }

        var fresh = TinyViT();
        var loaded = AdapterCheckpoint.Load(fresh, path);
        Assert.AreEqual(config, loaded);
        AssertLogits("logits_adapted", fresh, "adapter checkpoint reloaded");
    }

    [TestMethod]
    public void AdaptersFromFilesTakeTheBackbonesEvalMode()
    {
        // A backbone in eval mode scores without dropout; the adapters a file attaches to it must not switch it back on.
        static void AssertInEvalMode(Backbone backbone, string what)
        {
            var training = backbone.modules().Where(m => m.training).Select(m => m.GetName()).ToList();
            Assert.IsEmpty(training, $"{what}: in training mode: {string.Join(", ", training)}");
        }
        var official = TinyViT();
        official.eval();
        var config = AdapterCheckpoint.ImportOfficial(official, CheckpointFiles.Fixture("tiny_vit_adapters.safetensors"));
        AssertInEvalMode(official, "ImportOfficial");

        string path = Path.Combine(CheckpointFiles.TempDirectory(), "eval.safetensors");
        AdapterCheckpoint.Save(official, config, path);
        var fresh = TinyViT();
        fresh.eval();
        AdapterCheckpoint.Load(fresh, path);
        AssertInEvalMode(fresh, "AdapterCheckpoint.Load");
    }

    public static IEnumerable<object[]> Methods => AdapterMethods.All.Select(m => new object[] { m.Id });

    [TestMethod]
    [DynamicData(nameof(Methods))]
    public void AdapterCheckpointReplacesTheHeadWithTheTasksHead(AdaptationMethod method)
    {
        var trained = TinyViT();
        trained.ResetClassifier(3);
        var config = Engine.MethodMergeTests.Config(method, AdapterPlacement.Attention);
        trained.AttachAdapters(config);
        RandomizeAdaptersAndHead(trained, seed: 4);
        string path = Path.Combine(CheckpointFiles.TempDirectory(), "task3.safetensors");
        AdapterCheckpoint.Save(trained, config, path);

        var fresh = TinyViT();
        Assert.AreEqual(5, fresh.NumClasses);
        Assert.AreEqual(config, AdapterCheckpoint.Load(fresh, path));
        Assert.AreEqual(3, fresh.NumClasses);
        Assert.AreEqual(0f, TinyModels.MaxAbsDiff(Logits(trained), Logits(fresh)));
    }

    [TestMethod]
    [DynamicData(nameof(Methods))]
    public void ResNetAdapterCheckpointRoundTrips(AdaptationMethod method)
    {
        var trained = PretrainedBackbones.Load(CheckpointFiles.Fixture("tiny_resnet_basic.safetensors"), imageSize: 32).Backbone;
        // The whole configuration travels, the adapted blocks included.
        var config = Engine.MethodMergeTests.Config(method) with { LastBlocks = 2 };
        trained.AttachAdapters(config);
        RandomizeAdaptersAndHead(trained, seed: 9);
        string path = Path.Combine(CheckpointFiles.TempDirectory(), "resnet_task.safetensors");
        AdapterCheckpoint.Save(trained, config, path);

        var fresh = PretrainedBackbones.Load(CheckpointFiles.Fixture("tiny_resnet_basic.pth"), imageSize: 32).Backbone;
        Assert.AreEqual(config, AdapterCheckpoint.Load(fresh, path));
        Assert.AreEqual(trained.AdaptedLayers().Count(), fresh.AdaptedLayers().Count(), "the same blocks carry adapters");
        var input = CheckpointFiles.ResNetExpected("input");
        trained.eval();
        fresh.eval();
        using var _ = no_grad();
        Assert.AreEqual(0f, TinyModels.MaxAbsDiff(trained.forward(input), fresh.forward(input)));
    }

    [TestMethod]
    public void FingerprintDependsOnFrozenWeightsOnly()
    {
        var a = TinyViT();
        var b = TinyViT();
        string fingerprint = AdapterCheckpoint.BackboneFingerprint(a);
        Assert.AreEqual(64, fingerprint.Length);
        Assert.AreEqual(fingerprint, AdapterCheckpoint.BackboneFingerprint(b), "same checkpoint, same fingerprint");
        b.ResetClassifier(7);
        b.AttachAdapters(new AdapterConfig());
        Assert.AreEqual(fingerprint, AdapterCheckpoint.BackboneFingerprint(b), "head and adapters are not part of it");
        using (no_grad()) b.state_dict()["blocks.1.norm2.bias"][0].add_(1e-3f);
        Assert.AreNotEqual(fingerprint, AdapterCheckpoint.BackboneFingerprint(b), "one changed frozen weight changes it");
    }

    [TestMethod]
    public void AdaptersAreRefusedOnADifferentBackboneNamingBothFingerprints()
    {
        var trained = TinyViT();
        var config = AdapterCheckpoint.ImportOfficial(trained, CheckpointFiles.Fixture("tiny_vit_adapters.safetensors"));
        string path = Path.Combine(CheckpointFiles.TempDirectory(), "task.safetensors");
        AdapterCheckpoint.Save(trained, config, path);

        var other = TinyViT();
        using (no_grad()) other.state_dict()["norm.weight"].mul_(1.01f);
        var error = Assert.ThrowsExactly<CheckpointException>(() => AdapterCheckpoint.Load(other, path));
        StringAssert.Contains(error.Message, "task.safetensors");
        StringAssert.Contains(error.Message, AdapterCheckpoint.BackboneFingerprint(trained));
        StringAssert.Contains(error.Message, AdapterCheckpoint.BackboneFingerprint(other));
        Assert.IsFalse(other.AdaptedLayers().Any(), "nothing was attached");
    }

    [TestMethod]
    public void OfficialCheckpointWithoutScaleNeedsTheScale()
    {
        string path = Path.Combine(CheckpointFiles.TempDirectory(), "official.safetensors");
        using (var official = CheckpointReader.Read(CheckpointFiles.Fixture("tiny_vit_adapters.safetensors")))
            SafeTensorsWriter.Write(path, official.Tensors);
        var error = Assert.ThrowsExactly<CheckpointException>(() => AdapterCheckpoint.ImportOfficial(TinyViT(), path));
        StringAssert.Contains(error.Message, "scale");

        var backbone = TinyViT();
        Assert.AreEqual(0.5f, AdapterCheckpoint.ImportOfficial(backbone, path, scale: 0.5f).Scale);
        AssertLogits("logits_adapted", backbone, "official adapters, scale passed");
    }

    [TestMethod]
    public void AdapterCheckpointLoadPointsOfficialFilesToImportOfficial()
    {
        var error = Assert.ThrowsExactly<CheckpointException>(() => AdapterCheckpoint.Load(TinyViT(), CheckpointFiles.Fixture("tiny_vit_adapters.safetensors")));
        StringAssert.Contains(error.Message, "ImportOfficial");
    }

    [TestMethod]
    public void AdapterFileWithAMissingAdapterIsRefusedAndAttachesNothing()
    {
        string path = CheckpointFiles.EditedCopy("tiny_vit_adapters.safetensors", t => t.Remove("blocks.1.adapter_mlp.conv_B.bias"));
        var backbone = TinyViT();
        var error = Assert.ThrowsExactly<CheckpointException>(() => AdapterCheckpoint.ImportOfficial(backbone, path));
        Assert.AreEqual("blocks.1.mlp.fc1.adapter.conv_B.bias", error.Key);
        StringAssert.Contains(error.Message, "missing");
        Assert.IsFalse(backbone.AdaptedLayers().Any());
    }

    [TestMethod]
    public void AWholeOfficialModelStateDictLoadsItsBackboneToo()
    {
        // The official code's adapted timm ViT saved whole (model.state_dict()): backbone, adapters and head in one file.
        string path = Path.Combine(CheckpointFiles.TempDirectory(), "whole_model.safetensors");
        using (var backbone = CheckpointReader.Read(CheckpointFiles.Fixture("tiny_vit.safetensors")))
        using (var adapters = CheckpointReader.Read(CheckpointFiles.Fixture("tiny_vit_adapters.safetensors")))
        {
            SafeTensorsWriter.Write(path, backbone.Tensors.Concat(adapters.Tensors), adapters.Metadata);
        }
        // A randomly initialised ViT of the same architecture becomes the trained model.
        var random = TinyModels.Create("vit", seed: 9);
        var config = AdapterCheckpoint.ImportOfficial(random, path);
        Assert.AreEqual(0.5f, config.Scale);
        AssertLogits("logits_adapted", random, "whole official state dict onto a random ViT");

        // A backbone tensor that does not fit: refused, and the backbone is left as it was.
        string bad = CheckpointFiles.EditedCopy("tiny_vit.safetensors", t => t["norm.weight"] = ones(31), "bad_backbone.safetensors");
        string badWhole = Path.Combine(CheckpointFiles.TempDirectory(), "bad_whole.safetensors");
        using (var backbone = CheckpointReader.Read(bad))
        using (var adapters = CheckpointReader.Read(CheckpointFiles.Fixture("tiny_vit_adapters.safetensors")))
            SafeTensorsWriter.Write(badWhole, backbone.Tensors.Concat(adapters.Tensors), adapters.Metadata);
        var target = TinyModels.Create("vit", seed: 10);
        var before = target.state_dict().ToDictionary(p => p.Key, p => p.Value.clone());
        var error = Assert.ThrowsExactly<CheckpointException>(() => AdapterCheckpoint.ImportOfficial(target, badWhole));
        Assert.AreEqual("norm.weight", error.Key);
        Assert.IsFalse(target.AdaptedLayers().Any());
        foreach (var (key, value) in target.state_dict()) Assert.IsTrue(CheckpointFiles.Identical(value, before[key]), $"{key} changed");
    }

    private static void RandomizeAdaptersAndHead(Backbone backbone, int seed)
    {
        var generator = new Generator((ulong)seed);
        using var _ = no_grad();
        foreach (var (name, p) in backbone.named_parameters())
        {
            if (BackboneAdapters.IsAdapterParameter(name) || backbone.IsHeadParameter(name))
                p.copy_(0.2 * randn(p.shape, generator: generator));
        }
    }
}
