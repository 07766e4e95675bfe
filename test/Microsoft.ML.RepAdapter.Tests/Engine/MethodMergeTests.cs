using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Tests.Deployment;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Tests.Engine;

/// <summary>
/// Every registered method on every family: random non-zero parameters change the output, the merge reproduces it
/// (logits and feature maps, borders included, 1e-4 relative), leaves the plain architecture, and exports to ONNX as it.
/// </summary>
[TestClass]
public class MethodMergeTests
{
    private const float Tolerance = 1e-4f;

    public static IEnumerable<object[]> Cases() =>
        from method in AdapterMethods.All
        from kind in TinyModels.Kinds
        select new object[] { method.Id, kind };

    /// <summary>A config for <paramref name="method"/> with a scale other than 1 where the method has one.</summary>
    internal static AdapterConfig Config(AdaptationMethod method, AdapterPlacement placement = AdapterPlacement.Block) =>
        new(method, placement, Hidden: 4, Groups: 2, Scale: AdapterMethods.Of(method).UsesScale ? 2.5f : 1f);

    [TestMethod]
    [DynamicData(nameof(Cases))]
    public void MethodMergeIsExact(AdaptationMethod method, string kind)
    {
        using var scope = NewDisposeScope();
        var backbone = TinyModels.Create(kind);
        TinyModels.Randomize(backbone, seed: 7);
        var plainKeys = backbone.state_dict().Keys.ToList();
        long plainCount = backbone.CountParameters();
        backbone.eval();
        var images = TinyModels.Images(backbone, size: backbone is ResNet ? 64 : null);
        Tensor plain;
        using (no_grad()) plain = backbone.forward(images);

        var sites = backbone.AttachAdapters(Config(method));
        Assert.IsTrue(sites.All(site => site.Layer.Adapter!.GetType().Name.StartsWith(method.ToString(), StringComparison.OrdinalIgnoreCase)),
            "the registry builds the method's own layer");
        // Only the adapters are randomised, so the backbone stays the one 'plain' was computed with.
        foreach (var site in sites) TinyModels.Randomize(site.Layer.Adapter!, seed: 11, adapterStd: 0.3);
        backbone.eval();
        Tensor before, mapBefore;
        using (no_grad())
        {
            before = backbone.forward(images);
            mapBefore = backbone.ForwardFeatureMap(images);
        }
        float logitScale = Math.Max(1f, TinyModels.MaxAbs(before));
        Assert.IsGreaterThan(0.01f * logitScale, TinyModels.MaxAbsDiff(plain, before), "the adapters change the output, so the merge is tested");

        Assert.AreEqual(sites.Count, backbone.MergeAdapters());
        Tensor after, mapAfter;
        using (no_grad())
        {
            after = backbone.forward(images);
            mapAfter = backbone.ForwardFeatureMap(images);
        }
        Assert.IsFalse(backbone.AdaptedLayers().Any(), "no adapter remains");
        Assert.AreEqual(plainCount, backbone.CountParameters(), "the plain architecture's parameter count");
        CollectionAssert.AreEqual(plainKeys, backbone.state_dict().Keys.ToList(), "the plain architecture's state-dict keys");
        Assert.IsLessThanOrEqualTo(Tolerance * logitScale, TinyModels.MaxAbsDiff(before, after), $"logits (max |logit| {logitScale})");
        float mapScale = Math.Max(1f, TinyModels.MaxAbs(mapBefore));
        Assert.IsLessThanOrEqualTo(Tolerance * mapScale, TinyModels.MaxAbsDiff(mapBefore, mapAfter), "feature map incl. borders");

        using var session = OnnxRun.Session(backbone.ExportOnnx);
        var pixels = OnnxRun.Pixels(2, backbone.Input.ImageSize);
        Tensor expected;
        using (no_grad()) expected = backbone.forward(backbone.Input.Normalize(pixels));
        OnnxRun.AssertClose(expected, OnnxRun.Run(session, pixels), $"{method} on {kind}, exported merged");
    }

    [TestMethod]
    [DynamicData(nameof(TinyModels.KindRows), typeof(TinyModels))]
    public void LowRankMethodsStartAsTheLayerAndTheOthersAsTheirPapersInit(string kind)
    {
        using var scope = NewDisposeScope();
        foreach (var method in AdapterMethods.All.Select(m => m.Id))
        {
            var backbone = TinyModels.Create(kind);
            TinyModels.Randomize(backbone, seed: 3);
            backbone.eval();
            var images = TinyModels.Images(backbone);
            Tensor plain;
            using (no_grad()) plain = backbone.forward(images);
            backbone.AttachAdapters(Config(method));
            backbone.eval();
            float diff;
            using (no_grad()) diff = TinyModels.MaxAbsDiff(plain, backbone.forward(images));
            // RepAdapter, LoRA and DoRA start as the identity (zero up-projection); SSF starts near it (N(1, 0.02) scale),
            // RLRR perturbed (kaiming-uniform scales), as their official code.
            if (method is AdaptationMethod.SSF or AdaptationMethod.RLRR) Assert.IsGreaterThan(0f, diff, $"{method} on {kind}");
            else Assert.IsLessThanOrEqualTo(1e-5f * Math.Max(1f, TinyModels.MaxAbs(plain)), diff, $"{method} on {kind}");
        }
    }

    [TestMethod]
    public void ConvolutionLoraHasPeftsShapesAndNames()
    {
        using var scope = NewDisposeScope();
        var conv = new AdaptableConv2d(8, 16, 3, stride: 2, padding: 1);
        conv.AttachAdapter(ProjectionAdapter.Create(new AdapterConfig(AdaptationMethod.LoRA, Hidden: 4), conv, "conv"));
        var shapes = conv.named_parameters().ToDictionary(p => p.name, p => p.parameter.shape);
        CollectionAssert.AreEqual(new long[] { 4, 8, 3, 3 }, shapes["adapter.lora_A.weight"]);
        CollectionAssert.AreEqual(new long[] { 16, 4, 1, 1 }, shapes["adapter.lora_B.weight"]);
        var dora = new AdaptableLinear(8, 6);
        dora.AttachAdapter(ProjectionAdapter.Create(new AdapterConfig(AdaptationMethod.DoRA, Hidden: 2), dora, "fc"));
        CollectionAssert.AreEquivalent(new[] { "weight", "bias", "adapter.lora_A.weight", "adapter.lora_B.weight", "adapter.lora_magnitude_vector" },
            dora.named_parameters().Select(p => p.name).ToArray());
        var rlrr = new AdaptableConv2d(8, 16, 3, padding: 1, hasBias: true);
        rlrr.AttachAdapter(ProjectionAdapter.Create(new AdapterConfig(AdaptationMethod.RLRR), rlrr, "conv"));
        var rlrrShapes = rlrr.named_parameters().ToDictionary(p => p.name, p => p.parameter.shape);
        CollectionAssert.AreEqual(new long[] { 1, 24 }, rlrrShapes["adapter.scale_col"]);
        CollectionAssert.AreEqual(new long[] { 48, 1 }, rlrrShapes["adapter.scale_line"]);
        CollectionAssert.AreEqual(new long[] { 1, 16 }, rlrrShapes["adapter.shift_bias"]);
    }

    [TestMethod]
    [DataRow(AdaptationMethod.SSF)]
    [DataRow(AdaptationMethod.RLRR)]
    public void MethodsWithoutAScaleRefuseOne(AdaptationMethod method)
    {
        var backbone = TinyModels.Create("vit");
        var error = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => backbone.AttachAdapters(new AdapterConfig(method, Scale: 10f)));
        StringAssert.Contains(error.Message, $"{method} has no scale");
    }
}
