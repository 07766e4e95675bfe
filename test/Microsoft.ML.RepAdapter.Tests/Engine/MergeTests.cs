using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Tests.Engine;

/// <summary>Structural re-parameterisation: the merged plain backbone computes what the adapted one computed.</summary>
[TestClass]
public class MergeTests
{
    private const float Tolerance = 1e-4f;

    public static IEnumerable<object[]> Cases()
    {
        foreach (var backbone in new[] { "vit", "resnet_basic", "resnet_bottleneck" })
        foreach (var scale in new[] { 0.1f, 1f, 10f })
        foreach (var groups in new[] { 1, 2, 4 })
            yield return [backbone, scale, groups];
    }

    [TestMethod]
    [DynamicData(nameof(Cases))]
    public void RepAdapterMergeIsExact(string kind, float scale, int groups)
    {
        using var scope = NewDisposeScope();
        var backbone = TinyModels.Create(kind);
        var plainKeys = backbone.state_dict().Keys.ToList();
        long plainCount = backbone.CountParameters();

        backbone.AttachAdapters(new AdapterConfig(Hidden: 8, Groups: groups, Scale: scale));
        TinyModels.Randomize(backbone, seed: 7);
        backbone.eval();
        // ResNets at 64 px keep a 2 x 2 map after the last stage, so borders are part of every stage's output.
        var images = TinyModels.Images(backbone, size: backbone is ResNet ? 64 : null);
        Tensor before, mapBefore;
        using (no_grad())
        {
            before = backbone.forward(images);
            mapBefore = backbone.ForwardFeatureMap(images);
        }
        Assert.IsGreaterThan(plainCount, backbone.CountParameters(), "adapters add parameters before merging");

        int merged = backbone.MergeAdapters();

        Tensor after, mapAfter;
        using (no_grad())
        {
            after = backbone.forward(images);
            mapAfter = backbone.ForwardFeatureMap(images);
        }
        Assert.AreEqual(backbone.AdapterSites(AdapterPlacement.Block).Count, merged);
        Assert.IsFalse(backbone.AdaptedLayers().Any(), "no adapter remains after merging");
        Assert.AreEqual(plainCount, backbone.CountParameters(), "parameter count equals the plain architecture's");
        CollectionAssert.AreEqual(plainKeys, backbone.state_dict().Keys.ToList(), "state dict has the plain architecture's keys");
        float logitScale = Math.Max(1f, TinyModels.MaxAbs(before));
        Assert.IsLessThanOrEqualTo(Tolerance * logitScale, TinyModels.MaxAbsDiff(before, after), $"logits (max |logit| {logitScale})");
        // The feature map covers every spatial position, the zero-padded borders included.
        float mapScale = Math.Max(1f, TinyModels.MaxAbs(mapBefore));
        Assert.IsLessThanOrEqualTo(Tolerance * mapScale, TinyModels.MaxAbsDiff(mapBefore, mapAfter), "feature map incl. borders");
    }

    [TestMethod]
    public void AdaptersChangeTheOutputSoMergeTestsAreMeaningful()
    {
        using var scope = NewDisposeScope();
        var plain = TinyModels.Create("vit");
        TinyModels.Randomize(plain, seed: 7);
        var adapted = TinyModels.Create("vit");
        adapted.AttachAdapters(new AdapterConfig());
        TinyModels.Randomize(adapted, seed: 7);
        plain.eval();
        adapted.eval();
        var images = TinyModels.Images(plain);
        using var _ = no_grad();
        Assert.IsGreaterThan(0.01f, TinyModels.MaxAbsDiff(plain.forward(images), adapted.forward(images)));
    }

    [TestMethod]
    [DataRow("vit")]
    [DataRow("resnet_basic")]
    public void FreshAdaptersAreTheIdentity(string kind)
    {
        using var scope = NewDisposeScope();
        var backbone = TinyModels.Create(kind);
        TinyModels.Randomize(backbone, seed: 2);
        backbone.eval();
        var images = TinyModels.Images(backbone);
        using var _ = no_grad();
        var plain = backbone.forward(images);
        backbone.AttachAdapters(new AdapterConfig(Scale: 10f));
        backbone.eval();
        Assert.AreEqual(0f, TinyModels.MaxAbsDiff(plain, backbone.forward(images)), 1e-6f);
    }

    [TestMethod]
    public void BiasedAdapterIsRefusedInFrontOfAPaddedConvolution()
    {
        var conv = new AdaptableConv2d(8, 8, 3, padding: 1);
        var biased = new RepAdapterLayer(8, new AdapterConfig(), withBias: true);
        var error = Assert.ThrowsExactly<ArgumentException>(() => conv.AttachAdapter(biased));
        StringAssert.Contains(error.Message, "bias-free");
    }

    [TestMethod]
    public void GroupsThatDoNotDivideAreRejectedWithTheValues()
    {
        var backbone = TinyModels.Create("vit");
        var error = Assert.ThrowsExactly<ArgumentException>(() => backbone.AttachAdapters(new AdapterConfig(Hidden: 8, Groups: 3)));
        StringAssert.Contains(error.Message, "groups (3)");
        StringAssert.Contains(error.Message, "hidden size (8)");
    }
}
