using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Tests.Engine;

/// <summary>ResNet's deployment form: every eval-mode BatchNorm folded into the conv before it.</summary>
[TestClass]
public class BatchNormFoldTests
{
    private const float Tolerance = 1e-4f;

    private static Tensor Logits(Backbone model, Tensor images)
    {
        model.eval();
        using var _ = no_grad();
        return model.forward(images);
    }

    [TestMethod]
    [DataRow("resnet_basic")]
    [DataRow("resnet_bottleneck")]
    public void FoldingAMergedResNetKeepsItsOutputsAndRemovesEveryBatchNorm(string kind)
    {
        using var scope = NewDisposeScope();
        var resnet = (ResNet)TinyModels.Create(kind);
        resnet.AttachAdapters(new AdapterConfig(Groups: 4, Scale: 1f));
        TinyModels.Randomize(resnet, seed: 5);
        var images = TinyModels.Images(resnet, size: 64);
        var adapted = Logits(resnet, images);

        resnet.MergeAdapters();
        resnet.FoldBatchNorm();

        var folded = Logits(resnet, images);
        Assert.IsLessThanOrEqualTo(Tolerance * Math.Max(1f, TinyModels.MaxAbs(adapted)), TinyModels.MaxAbsDiff(adapted, folded));
        Assert.IsFalse(resnet.modules().OfType<BatchNorm2d>().Any(), "no BatchNorm left");
        Assert.IsFalse(resnet.state_dict().Keys.Any(k => k.Contains("running_")), "no BatchNorm statistics left");
        Assert.IsTrue(resnet.state_dict().ContainsKey("layer1.0.conv1.bias"), "convs carry the folded shift as a bias");
        Assert.IsTrue(resnet.Config.BatchNormFolded);

        // The folded form is an architecture of its own: it rebuilds from its descriptor and reloads its state dict.
        var rebuilt = resnet.Describe().Build();
        rebuilt.load_state_dict(resnet.state_dict(), strict: true);
        Assert.AreEqual(0f, TinyModels.MaxAbsDiff(folded, Logits(rebuilt, images)));
    }

    [TestMethod]
    [DataRow("resnet_basic")]
    [DataRow("resnet_bottleneck")]
    public void AdaptersOnAFoldedResNetStillMergeExactly(string kind)
    {
        using var scope = NewDisposeScope();
        var resnet = (ResNet)TinyModels.Create(kind);
        TinyModels.Randomize(resnet, seed: 6);
        resnet.eval();
        resnet.FoldBatchNorm();
        resnet.AttachAdapters(new AdapterConfig(Scale: 10f));
        TinyModels.Randomize(resnet, seed: 7);
        var images = TinyModels.Images(resnet, size: 64);
        var adapted = Logits(resnet, images);
        resnet.MergeAdapters();
        Assert.IsLessThanOrEqualTo(Tolerance * Math.Max(1f, TinyModels.MaxAbs(adapted)), TinyModels.MaxAbsDiff(adapted, Logits(resnet, images)));
    }
}
