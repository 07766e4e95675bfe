using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Segmentation;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Tests.Segmentation;

/// <summary>Multi-level features, both decode heads on both families, and exact merging of per-pixel logits.</summary>
[TestClass]
public class SegmentationNetworkTests
{
    [TestMethod]
    [DataRow("vit")]
    [DataRow("resnet_basic")]
    [DataRow("resnet_bottleneck")]
    public void IntermediatesMatchTheirDeclaredLevels(string kind)
    {
        var backbone = TinyModels.Create(kind);
        backbone.eval();
        using var _ = no_grad();
        var images = TinyModels.Images(backbone, batch: 2);
        var maps = backbone.ForwardIntermediates(images);
        Assert.HasCount(backbone.FeatureLevels.Count, maps);
        for (int i = 0; i < maps.Count; i++)
        {
            var level = backbone.FeatureLevels[i];
            int size = backbone.Input.ImageSize / level.Reduction;
            CollectionAssert.AreEqual(new long[] { 2, level.Channels, size, size }, maps[i].shape, level.Name);
        }
        Assert.AreEqual(0f, TinyModels.MaxAbsDiff(maps[^1], backbone.ForwardFeatureMap(images)), "the last level is the feature map");
    }

    [TestMethod]
    [DataRow("vit", SegmentationHeadKind.Naive)]
    [DataRow("vit", SegmentationHeadKind.MultiLevel)]
    [DataRow("resnet_basic", SegmentationHeadKind.Naive)]
    [DataRow("resnet_basic", SegmentationHeadKind.MultiLevel)]
    [DataRow("resnet_bottleneck", SegmentationHeadKind.MultiLevel)]
    public void MergedAdaptersGiveTheSamePerPixelLogits(string kind, SegmentationHeadKind head)
    {
        foreach (float scale in new[] { 0.1f, 1f, 10f })
        {
            var backbone = TinyModels.Create(kind, seed: 3);
            var network = new SegmentationNetwork(backbone, new SegmentationHeadConfig(head, 16, 4, backbone.FeatureLevels));
            network.AttachAdapters(new AdapterConfig(Hidden: 8, Groups: 2, Scale: scale));
            TinyModels.Randomize(network, seed: 4, adapterStd: 0.1);
            network.eval();
            using var _ = no_grad();
            var images = TinyModels.Images(backbone, batch: 2);
            var before = network.forward(images);
            CollectionAssert.AreEqual(new long[] { 2, 4, images.shape[2], images.shape[3] }, before.shape, "logits at the input resolution");
            int merged = network.MergeAdapters();
            Assert.AreEqual(backbone.AdapterSites(AdapterPlacement.Block).Count, merged);
            float diff = TinyModels.MaxAbsDiff(before, network.forward(images));
            Assert.IsLessThanOrEqualTo(1e-4f * Math.Max(1, TinyModels.MaxAbs(before)), diff, $"s = {scale}: max |before - after| = {diff}");
            Assert.IsFalse(network.AdaptedLayers().Any());
        }
    }

    [TestMethod]
    public void SegmentationPolicyTrainsAdaptersHeadAndBackboneBiasesAndKeepsBackboneStatistics()
    {
        var backbone = TinyModels.Create("resnet_basic");
        var network = new SegmentationNetwork(backbone, new SegmentationHeadConfig(SegmentationHeadKind.MultiLevel, 8, 3, backbone.FeatureLevels));
        network.AttachAdapters(new AdapterConfig());
        network.SetTrainable(TrainableParameters.AdaptersHeadAndBiases);
        foreach (var (name, p) in network.named_parameters())
        {
            bool expected = name.StartsWith("decode_head.") || name.Contains(".adapter.") || name.EndsWith(".bias");
            Assert.AreEqual(expected, p.requires_grad, name);
        }
        Assert.IsFalse(network.named_parameters().Any(p => p.name.StartsWith("backbone.fc")), "the backbone's classifier is removed");

        var backboneMean = network.state_dict()["backbone.bn1.running_mean"].clone();
        var headMean = network.state_dict().First(p => p.Key.StartsWith("decode_head.") && p.Key.EndsWith("running_mean")).Value.clone();
        network.train();
        network.forward(TinyModels.Images(backbone, batch: 4)).sum().backward();
        Assert.AreEqual(0f, TinyModels.MaxAbsDiff(backboneMean, network.state_dict()["backbone.bn1.running_mean"]), "the frozen backbone keeps its statistics");
        Assert.IsGreaterThan(0f, TinyModels.MaxAbsDiff(headMean, network.state_dict().First(p => p.Key.StartsWith("decode_head.") && p.Key.EndsWith("running_mean")).Value),
            "the head's BatchNorm learns its statistics");
    }

    [TestMethod]
    public void DescriptionRebuildsTheSameModules()
    {
        var backbone = TinyModels.Create("vit");
        var network = new SegmentationNetwork(backbone, new SegmentationHeadConfig(SegmentationHeadKind.MultiLevel, 16, 5, backbone.FeatureLevels));
        var rebuilt = SegmentationNetwork.FromDescription(network.Describe());
        CollectionAssert.AreEqual(network.state_dict().Select(p => $"{p.Key} {string.Join("x", p.Value.shape)}").ToList(),
            rebuilt.state_dict().Select(p => $"{p.Key} {string.Join("x", p.Value.shape)}").ToList());
        Assert.AreEqual(network.Head, rebuilt.Head);
    }
}
