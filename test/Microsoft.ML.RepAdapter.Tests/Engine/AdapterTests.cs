using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Tests.Engine;

[TestClass]
public class AdapterTests
{
    [TestMethod]
    [DataRow(-1)]
    [DataRow(1)]
    public void AdapterComputesTheOfficialGroupedConv1dFunction(int channelDim)
    {
        // The official adapter is conv_B(dropout(conv_A(x))) with Conv1d over [B, D, N], conv_B grouped (group g reads
        // hidden [g r/k, (g+1) r/k) and writes channels [g D/k, (g+1) D/k)). The library computes it with matrix
        // products: compare with conv1d itself on the same parameters, for tokens and for feature maps.
        torch.manual_seed(5);
        var adapter = new RepAdapterLayer(8, new AdapterConfig(Hidden: 4, Groups: 2, Scale: 0.5f, Dropout: 0));
        TinyModels.Randomize(adapter, seed: 5, adapterStd: 0.5);
        adapter.eval();
        var p = adapter.named_parameters().ToDictionary(n => n.name, n => n.parameter);
        using var _ = no_grad();
        var x = channelDim == -1 ? randn(2, 3, 8) : randn(2, 8, 3, 5);
        var sequence = channelDim == -1 ? x.transpose(1, 2) : x.flatten(2);
        var hidden = nn.functional.conv1d(sequence, p["conv_A.weight"], p["conv_A.bias"]);
        var branch = nn.functional.conv1d(hidden, p["conv_B.weight"], p["conv_B.bias"], groups: 2) * 0.5f;
        var expected = x + (channelDim == -1 ? branch.transpose(1, 2) : branch.view(x.shape));
        Assert.IsLessThan(1e-5f, TinyModels.MaxAbsDiff(adapter.Adapt(x, channelDim), expected));

        var (m, c) = adapter.Collapse();
        var tokens = channelDim == -1 ? x : x.movedim([1], [-1]);
        var viaMatrix = tokens.matmul(m.t()) + c!;
        Assert.IsLessThan(1e-5f, TinyModels.MaxAbsDiff(channelDim == -1 ? expected : expected.movedim([1], [-1]), viaMatrix), "the collapsed affine map");
        var dense = adapter.DenseUpProjection();
        Assert.AreEqual(0f, dense[TensorIndex.Slice(0, 4), TensorIndex.Slice(2, 4)].abs().sum().item<float>(), "off-diagonal blocks are zero");
    }

    [TestMethod]
    public void ViTBase16ParameterCountsMatchThePaper()
    {
        using var scope = NewDisposeScope();
        var vit = BackbonePresets.Create("vit_base_patch16_224", numClasses: 0);
        Assert.AreEqual(85_798_656L, vit.CountParameters(), "ViT-B/16 without head (timm: 85.8M)");
        vit.AttachAdapters(new AdapterConfig(Placement: AdapterPlacement.Block));
        Assert.AreEqual(221_184L, vit.CountAdapterParameters(includeBiases: false));
        Assert.AreEqual(239_808L, vit.CountAdapterParameters(includeBiases: true));
        vit.MergeAdapters();
        vit.AttachAdapters(new AdapterConfig(Placement: AdapterPlacement.Attention));
        Assert.AreEqual(110_592L, vit.CountAdapterParameters(includeBiases: false));
        Assert.AreEqual(119_904L, vit.CountAdapterParameters(includeBiases: true));
    }

    [TestMethod]
    [DataRow(TrainableParameters.HeadOnly)]
    [DataRow(TrainableParameters.AdaptersAndHead)]
    [DataRow(TrainableParameters.AdaptersHeadAndBiases)]
    [DataRow(TrainableParameters.All)]
    public void TrainablePoliciesSelectTheRightParameters(TrainableParameters policy)
    {
        var vit = TinyModels.Create("vit");
        vit.AttachAdapters(new AdapterConfig());
        vit.SetTrainable(policy);
        foreach (var (name, p) in vit.named_parameters())
        {
            bool expected = name.StartsWith("head.") || policy switch
            {
                TrainableParameters.All => true,
                TrainableParameters.AdaptersAndHead => name.Contains(".adapter."),
                TrainableParameters.AdaptersHeadAndBiases => name.Contains(".adapter.") || name.EndsWith(".bias"),
                _ => false,
            };
            Assert.AreEqual(expected, p.requires_grad, name);
        }
        long adapters = vit.CountAdapterParameters();
        long head = 32 * 5 + 5;
        if (policy == TrainableParameters.AdaptersAndHead) Assert.AreEqual(adapters + head, vit.CountParameters(trainableOnly: true));
        if (policy == TrainableParameters.HeadOnly) Assert.AreEqual(head, vit.CountParameters(trainableOnly: true));
    }

    [TestMethod]
    public void FrozenResNetKeepsBatchNormStatisticsInTraining()
    {
        var resnet = TinyModels.Create("resnet_basic");
        resnet.AttachAdapters(new AdapterConfig());
        resnet.SetTrainable(TrainableParameters.AdaptersAndHead);
        var before = resnet.state_dict()["bn1.running_mean"].clone();
        resnet.train();
        resnet.forward(TinyModels.Images(resnet, batch: 4)).sum().backward();
        Assert.AreEqual(0f, TinyModels.MaxAbsDiff(before, resnet.state_dict()["bn1.running_mean"]));
        Assert.IsNotNull(resnet.named_parameters().First(p => p.name.Contains(".adapter.")).parameter.grad, "adapters get gradients");
    }

    [TestMethod]
    public void DropPathDropsWholeSamplesInTrainingOnly()
    {
        var dropPath = new DropPath(0.5);
        var x = ones(64, 3, 4);
        dropPath.eval();
        Assert.AreEqual(0f, TinyModels.MaxAbsDiff(x, dropPath.forward(x)));
        dropPath.train();
        var y = dropPath.forward(x);
        var perSample = y.reshape(64, -1);
        var dropped = (perSample.sum(1) == 0).sum().item<long>();
        Assert.IsTrue(dropped is > 5 and < 59, $"about half the samples dropped, got {dropped}");
        Assert.IsTrue(((perSample == 0) | (perSample == 2)).all().item<bool>(), "kept samples are rescaled by 1/keep");
    }

    [TestMethod]
    public void DropPathRateGrowsLinearlyWithDepth()
    {
        var vit = new VisionTransformer(TinyModels.VitConfig with { Depth = 3, DropPathRate = 0.2 });
        var rates = vit.modules().OfType<DropPath>().Select(d => d.Probability).ToArray();
        CollectionAssert.AreEqual(new[] { 0.0, 0.0, 0.1, 0.1, 0.2, 0.2 }, rates.Select(r => Math.Round(r, 6)).ToArray());
    }

    [TestMethod]
    public void PositionEmbeddingResamplingKeepsClassTokenAndSameGridIsIdentity()
    {
        var pos = randn(1, 17, 8);
        Assert.AreEqual(0f, TinyModels.MaxAbsDiff(pos, VisionTransformer.ResamplePositionEmbedding(pos, 4)));
        var resampled = VisionTransformer.ResamplePositionEmbedding(pos, 6);
        CollectionAssert.AreEqual(new long[] { 1, 37, 8 }, resampled.shape);
        Assert.AreEqual(0f, TinyModels.MaxAbsDiff(pos[.., 0], resampled[.., 0]));
    }

    [TestMethod]
    public void UnknownPresetNamesTheKnownOnes()
    {
        var error = Assert.ThrowsExactly<ArgumentException>(() => BackbonePresets.Create("vit_huge_patch99"));
        StringAssert.Contains(error.Message, "vit_huge_patch99");
        StringAssert.Contains(error.Message, "vit_base_patch16_224");
    }

    [TestMethod]
    public void WrongImageSizeIsAClearError()
    {
        var vit = TinyModels.Create("vit");
        var error = Assert.ThrowsExactly<ArgumentException>(() => vit.forward(randn(1, 3, 20, 20)));
        StringAssert.Contains(error.Message, "[B, 3, 16, 16]");
        StringAssert.Contains(error.Message, "[1, 3, 20, 20]");
    }
}
