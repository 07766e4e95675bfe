using Microsoft.ML.RepAdapter.Torch;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Tests.Engine;

/// <summary>Models built exactly as users build them start finite, with the intended random spread, in the host's mode.</summary>
[TestClass]
public class InitializationTests
{
    [TestMethod]
    public void TruncatedNormalStaysInItsBoundsWithTheTruncatedSpread()
    {
        using var scope = NewDisposeScope();
        var values = TruncatedNormal.Fill(empty(200_000), std: 1, a: -0.5, b: 0.5, generator: new Generator(3));
        Assert.IsTrue(values.isfinite().all().item<bool>());
        Assert.IsGreaterThanOrEqualTo(-0.5f, values.min().item<float>());
        Assert.IsLessThanOrEqualTo(0.5f, values.max().item<float>());
        // N(0, 1) truncated to [-1/2, 1/2]: variance 1 - 2 phi(1/2) (1/2) / (2 Phi(1/2) - 1) = 0.0796...
        Assert.AreEqual(Math.Sqrt(0.07957), values.std().item<float>(), 0.003);
        Assert.AreEqual(0, values.mean().item<float>(), 0.003);
        var wide = TruncatedNormal.Fill(empty(200_000), std: 0.02, generator: new Generator(4));
        Assert.AreEqual(0.02, wide.std().item<float>(), 0.0005, "timm's absolute bounds +-2 leave std 0.02 untruncated");
    }

    [TestMethod]
    public void AFreshViTBaseIsFiniteWithTheIntendedSpreadAndADistinctHeadPerClass()
    {
        using var scope = NewDisposeScope();
        var vit = BackbonePresets.Create("vit_base_patch16_224", numClasses: 10);
        Assert.IsNull(NonFinite.FirstIn(vit), "every parameter and buffer is finite");
        foreach (var (name, p) in vit.named_parameters())
        {
            bool truncatedNormal = name == "pos_embed" || (p.dim() == 2 && !name.StartsWith("head.", StringComparison.Ordinal));
            if (truncatedNormal) Assert.AreEqual(0.02, p.std().item<float>(), 0.001, name);
        }
        // The new head is nn.Linear's default (kaiming-uniform: U(-1/sqrt(768), 1/sqrt(768)), std 1/sqrt(3 * 768)), as timm's
        // reset_classifier that the official RepAdapter code calls; no two classes start alike.
        var head = vit.named_parameters().Single(p => p.name == "head.weight").parameter;
        Assert.AreEqual(1 / Math.Sqrt(3 * 768), head.std().item<float>(), 0.001);
        var rows = head.unbind(0);
        Assert.IsTrue(rows.Skip(1).All(r => !r.allclose(rows[0], rtol: 0, atol: 0)), "no class shares the first class's weight row");
    }

    [TestMethod]
    public void NewHeadsAndAdaptersTakeTheBackbonesEvalMode()
    {
        var vit = TinyModels.Create("vit");
        vit.eval();
        vit.ResetClassifier(3);
        vit.AttachAdapters(new AdapterConfig(Dropout: 0.5));
        var trainingModules = vit.modules().Where(m => m.training).Select(m => m.GetName()).ToList();
        Assert.HasCount(0, trainingModules, $"in training mode: {string.Join(", ", trainingModules)}");
        TinyModels.Randomize(vit, seed: 2);
        using var _ = no_grad();
        var images = TinyModels.Images(vit, batch: 2);
        Assert.AreEqual(0f, TinyModels.MaxAbsDiff(vit.forward(images), vit.forward(images)), "dropout is off: scoring is deterministic");

        vit.train();
        vit.MergeAdapters();
        vit.AttachAdapters(new AdapterConfig());
        Assert.IsTrue(vit.AdaptedLayers().All(l => l.Adapter!.training), "and training mode in a training backbone");
    }
}
