using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Tests.Engine;

/// <summary>The trunk as a chain of steps: cut anywhere, prefix then rest gives the features; adapters in the last blocks only.</summary>
[TestClass]
public class TrunkTests
{
    [TestMethod]
    [DynamicData(nameof(TinyModels.KindRows), typeof(TinyModels))]
    public void AnyCutOfTheTrunkGivesTheSameFeatures(string kind)
    {
        using var backbone = TinyModels.Create(kind);
        TinyModels.Randomize(backbone, seed: 3);
        backbone.eval();
        using var _ = no_grad();
        using var images = TinyModels.Images(backbone);
        using var expected = backbone.ForwardFeatures(images);
        var trunk = backbone.Trunk();
        Assert.IsGreaterThanOrEqualTo(2, trunk.Count(s => s.IsBlock), "blocks are steps");
        for (int cut = 0; cut <= trunk.Count; cut++)
        {
            using var hidden = backbone.ForwardPrefix(images, cut);
            using var features = backbone.ForwardFeaturesFrom(hidden, cut);
            Assert.AreEqual(0f, (features - expected).abs().max().item<float>(), $"{kind}: cut after {cut} steps");
        }
        // Every trunk parameter belongs to exactly one step; the head to none.
        foreach (var (name, _) in backbone.named_parameters())
        {
            int holders = trunk.Count(step => step.Holds(name));
            Assert.AreEqual(backbone.IsHeadParameter(name) ? 0 : 1, holders, $"{kind}: {name}");
        }
    }

    [TestMethod]
    [DynamicData(nameof(TinyModels.KindRows), typeof(TinyModels))]
    public void LastBlocksPutsAdaptersInTheLastBlocksOnlyAndTheFirstTrainableStepFollows(string kind)
    {
        using var backbone = TinyModels.Create(kind);
        var all = backbone.AdapterSites(AdapterPlacement.Block);
        int blocks = all.Max(site => site.Block) + 1;
        var used = backbone.AttachAdapters(new AdapterConfig(LastBlocks: 2));
        CollectionAssert.AreEquivalent(all.Where(site => site.Block >= blocks - 2).Select(site => site.Name).ToList(), used.Select(site => site.Name).ToList());
        Assert.HasCount(used.Count, backbone.AdaptedLayers().ToList());

        backbone.SetTrainable(TrainableParameters.AdaptersAndHead);
        var trainable = backbone.named_parameters().Where(p => p.parameter.requires_grad).Select(p => p.name).ToList();
        var trunk = backbone.Trunk();
        int first = backbone.FirstStepHolding(trainable);
        Assert.IsTrue(trunk[first].IsBlock, $"{kind}: {trunk[first].Name}");
        Assert.AreEqual(blocks - 2, trunk.Take(first).Count(step => step.IsBlock), $"{kind}: the first trainable step is the first adapted block");

        backbone.SetTrainable(TrainableParameters.HeadOnly);
        Assert.AreEqual(trunk.Count, backbone.FirstStepHolding(backbone.named_parameters().Where(p => p.parameter.requires_grad).Select(p => p.name)),
            "head only: the whole trunk is frozen");
    }
}
