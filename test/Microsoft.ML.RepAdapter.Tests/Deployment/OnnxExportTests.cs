using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Formats;
using Microsoft.ML.RepAdapter.Segmentation;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Tests.Deployment;

/// <summary>
/// A merged model exported to ONNX computes what the TorchSharp model computes, for every family, at batch 1 and 3 from
/// the same graph (dynamic batch), with adapters trained (random, non-zero) and folded in.
/// </summary>
[TestClass]
public class OnnxExportTests
{
    /// <summary>A tiny model with random adapters attached, randomised, then merged (eval mode).</summary>
    internal static Backbone MergedTinyModel(string kind, int seed = 7)
    {
        var backbone = TinyModels.Create(kind);
        backbone.AttachAdapters(new AdapterConfig(Hidden: 8, Scale: 1f));
        TinyModels.Randomize(backbone, seed);
        backbone.eval();
        Assert.IsGreaterThan(0, backbone.MergeAdapters());
        return backbone;
    }

    [TestMethod]
    [DynamicData(nameof(TinyModels.KindRows), typeof(TinyModels))]
    public void MergedBackboneMatchesTorchSharpAtBatchOneAndThree(string kind)
    {
        using var scope = NewDisposeScope();
        using var backbone = MergedTinyModel(kind);
        using var session = OnnxRun.Session(backbone.ExportOnnx);
        foreach (int batch in new[] { 1, 3 })
        {
            var pixels = OnnxRun.Pixels(batch, backbone.Input.ImageSize);
            Tensor expected;
            using (no_grad()) expected = backbone.forward(backbone.Input.Normalize(pixels));
            OnnxRun.AssertClose(expected, OnnxRun.Run(session, pixels), $"{kind}, batch {batch}");
        }
    }

    public static IEnumerable<object[]> SegmentationCases() =>
        TinyModels.Kinds.SelectMany(k => new[] { new object[] { k, SegmentationHeadKind.Naive }, [k, SegmentationHeadKind.MultiLevel] });

    [TestMethod]
    [DynamicData(nameof(SegmentationCases))]
    public void MergedSegmentationNetworkMatchesTorchSharp(string kind, SegmentationHeadKind head)
    {
        using var scope = NewDisposeScope();
        var backbone = TinyModels.Create(kind);
        using var network = new SegmentationNetwork(backbone, new SegmentationHeadConfig(head, 16, 4, backbone.FeatureLevels));
        network.AttachAdapters(new AdapterConfig(Hidden: 8, Scale: 1f));
        TinyModels.Randomize(network, seed: 5);
        network.eval();
        Assert.IsGreaterThan(0, network.MergeAdapters());
        using var session = OnnxRun.Session(network.ExportOnnx);
        foreach (int batch in new[] { 1, 3 })
        {
            var pixels = OnnxRun.Pixels(batch, backbone.Input.ImageSize);
            Tensor expected;
            using (no_grad()) expected = network.forward(backbone.Input.Normalize(pixels));
            OnnxRun.AssertClose(expected, OnnxRun.Run(session, pixels), $"{kind} {head}, batch {batch}");
        }
    }
}
