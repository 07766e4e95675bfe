using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Checkpoints;
using Microsoft.ML.RepAdapter.Formats;
using Microsoft.ML.RepAdapter.Tests.Checkpoints;
using Microsoft.ML.RepAdapter.Torch;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Tests.Families;

/// <summary>
/// A tiny video ViT written by VideoMAE's own fine-tuning code (test/fixtures/make_videomae_fixtures.py: the official
/// release container and Hugging Face's names), loaded as a user loads a download, against the logits the official
/// code computed; then random non-zero adapters at qkv and fc1 merged into it.
/// </summary>
[TestClass]
public class VideoMAEFixtureTests
{
    public TestContext TestContext { get; set; } = null!;

    // The fixture is 2 heads of 16 and 4 frames: neither is in the shapes.
    private static readonly VideoMAELoadOptions Tiny = new(NumHeads: 2, Frames: 4);

    private static string Checkpoint(string name) => CheckpointFiles.Fixture(Path.Combine("videomae", name));

    private static Tensor Expected(string key) => CheckpointFiles.Expected(Path.Combine("videomae", "expected.safetensors"), key);

    [TestMethod]
    [DataRow("official.pth", "VideoMAE (official)")]
    [DataRow("hf.safetensors", "Hugging Face VideoMAE")]
    public void VideoMAEWrittenCheckpointsGiveItsLogitsAndMergeExactly(string file, string layout)
    {
        using var scope = NewDisposeScope();
        var (backbone, report) = PretrainedBackbones.Load(Checkpoint(file), imageSize: 32, loadOptions: Tiny);
        TestContext.WriteLine(report.ToString());
        Assert.AreEqual(layout, report.Layout);
        Assert.IsInstanceOfType<VideoVisionTransformer>(backbone);
        backbone.eval();
        var clips = Expected("input");
        var expected = Expected("logits");
        using (no_grad())
        {
            float relative = TinyModels.MaxAbsDiff(expected, backbone.forward(clips)) / TinyModels.MaxAbs(expected);
            TestContext.WriteLine($"{file}: max |library - VideoMAE| / max |VideoMAE| = {relative:E2}");
            Assert.IsLessThanOrEqualTo(1e-4f, relative, "logits");
            var pooled = Expected("pooled");
            Assert.IsLessThanOrEqualTo(1e-4f * TinyModels.MaxAbs(pooled), TinyModels.MaxAbsDiff(pooled, backbone.ForwardFeatures(clips)), "fc_norm of the mean token");
        }

        backbone.AttachAdapters(new AdapterConfig(Hidden: 8, Groups: 2, Scale: 0.5f));
        TinyModels.Randomize(backbone, seed: 3, adapterStd: 0.1);
        backbone.eval();
        using (no_grad())
        {
            var adapted = backbone.forward(clips);
            Assert.IsGreaterThan(1e-3f, TinyModels.MaxAbsDiff(adapted, expected), "the adapters (and the randomised weights) change the logits");
            Assert.AreEqual(2 * 2, backbone.MergeAdapters(), "qkv and fc1 of both blocks");
            Assert.IsLessThanOrEqualTo(1e-4f * Math.Max(1, TinyModels.MaxAbs(adapted)), TinyModels.MaxAbsDiff(adapted, backbone.forward(clips)), "merged");
        }

        // The merged model as ONNX, raw clips [B, 3, T, S, S] in: the same logits.
        using var session = Deployment.OnnxRun.Session(backbone.ExportOnnx);
        CollectionAssert.AreEqual(new[] { -1, 3, 4, 32, 32 }, session.InputMetadata["pixels"].Dimensions, "a dynamic batch of 4-frame clips");
        var pixels = rand([2, 3, 4, 32, 32], generator: new Generator(5)).Times(255);
        Tensor reference;
        using (no_grad()) reference = backbone.forward(backbone.Input.Normalize(pixels));
        Deployment.OnnxRun.AssertClose(reference, Deployment.OnnxRun.Run(session, pixels), $"{file} as ONNX");
    }

    [TestMethod]
    public void ThePositionTableIsVideoMAEsSinusoidTable()
    {
        using var scope = NewDisposeScope();
        using var model = new VideoVisionTransformer(new VideoVisionTransformerConfig(ImageSize: 32, Frames: 4, EmbedDim: 32, Depth: 1, NumHeads: 2, NumClasses: 5));
        var expected = Expected("pos_table");
        Assert.AreEqual(8L, expected.shape[1], "2 x 2 x 2 tubelets");
        Assert.IsLessThanOrEqualTo(1e-7f, TinyModels.MaxAbsDiff(expected, model.PositionTable), "computed in float64 and rounded, as numpy");
        Assert.IsFalse(model.state_dict().ContainsKey("pos_embed"), "the table is not a weight: checkpoints do not hold it");
    }

    [TestMethod]
    public void ClipsOfAnotherShapeAreRefusedNamingTheExpectedOne()
    {
        using var scope = NewDisposeScope();
        using var model = new VideoVisionTransformer(new VideoVisionTransformerConfig(ImageSize: 32, Frames: 4, EmbedDim: 32, Depth: 1, NumHeads: 2, NumClasses: 5));
        var error = Assert.ThrowsExactly<ArgumentException>(() => model.forward(zeros([1, 3, 8, 32, 32])));
        StringAssert.Contains(error.Message, "[B, 3, 4, 32, 32]");
        StringAssert.Contains(error.Message, "[1, 3, 8, 32, 32]");
        Assert.ThrowsExactly<ArgumentException>(() => model.forward(zeros([1, 3, 32, 32])), "an image is not a clip");
    }

    [TestMethod]
    public void APresetIsTheOfficialArchitecture()
    {
        using var scope = NewDisposeScope();
        using var model = BackbonePresets.Create("videomae_base_patch16_224", numClasses: 174);
        var video = (VideoVisionTransformer)model;
        Assert.AreEqual(1568, video.Config.Tokens, "8 x 14 x 14 tubelets");
        var state = model.state_dict();
        CollectionAssert.AreEqual(new long[] { 768, 3, 2, 16, 16 }, state["patch_embed.proj.weight"].shape, "tubelets of 2 frames x 16 x 16 px");
        Assert.IsTrue(state.ContainsKey("blocks.11.mlp.fc1.weight") && !state.ContainsKey("blocks.12.mlp.fc1.weight"), "12 blocks");
        CollectionAssert.AreEqual(new long[] { 174, 768 }, state["head.weight"].shape);
    }

    [TestMethod]
    public void AVideoMAEWithoutMeanPoolingIsRefusedByName()
    {
        string edited = CheckpointFiles.EditedCopy(Path.Combine("videomae", "hf.safetensors"), t =>
        {
            t["videomae.layernorm.weight"] = ones(32);
            t["videomae.layernorm.bias"] = zeros(32);
        }, name: "hf_layernorm.safetensors");
        var error = Assert.ThrowsExactly<CheckpointException>(() => PretrainedBackbones.Load(edited, imageSize: 32, loadOptions: Tiny));
        StringAssert.Contains(error.Message, "videomae.layernorm.weight");
        StringAssert.Contains(error.Message, "mean pooling");
    }
}
