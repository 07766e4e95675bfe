using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Checkpoints;
using Microsoft.ML.RepAdapter.Tests.Checkpoints;
using Microsoft.ML.RepAdapter.Tests.Deployment;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Tests.Families;

/// <summary>
/// Files written by timm itself (test/fixtures/make_timm_fixtures.py, timm 1.0.29.dev0, perturbed weights), loaded as a
/// user loads a Hub download, against the logits timm computed; then random non-zero adapters merged into them, and the merged model exported to ONNX.
/// </summary>
[TestClass]
public class TimmFixtureTests
{
    public TestContext TestContext { get; set; } = null!;

    private static string Checkpoint(string name) => CheckpointFiles.Fixture(Path.Combine("timm", name));

    private static Tensor Expected(string key) => CheckpointFiles.Expected(Path.Combine("timm", "expected.safetensors"), key);

    [TestMethod]
    [DataRow("vit")]
    [DataRow("vit_layerscale")]
    [DataRow("swin")]
    [DataRow("convnext")]
    public void TimmWrittenCheckpointsGiveTimmsLogitsAndMergeExactly(string name)
    {
        using var scope = NewDisposeScope();
        var (backbone, report) = PretrainedBackbones.Load(Checkpoint($"{name}.safetensors"), imageSize: 32, numHeads: name.StartsWith("vit", StringComparison.Ordinal) ? 2 : null);
        backbone.eval();
        var images = Expected("input_32");
        var expected = Expected($"{name}_logits");
        using (no_grad())
        {
            float relative = TinyModels.MaxAbsDiff(expected, backbone.forward(images)) / TinyModels.MaxAbs(expected);
            TestContext.WriteLine($"{name} ({report.Layout}): max |library - timm| / max |timm| = {relative:E2}");
            Assert.IsLessThanOrEqualTo(1e-4f, relative, report.Layout);
        }

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
