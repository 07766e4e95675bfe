using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Checkpoints;
using Microsoft.ML.RepAdapter.Formats;
using Microsoft.ML.RepAdapter.Segmentation;
using Microsoft.ML.RepAdapter.Tests.Checkpoints;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Tests.Families;

/// <summary>
/// Every family's exact merging, adapter counts and placement tables, and every family through the feature contract the
/// trainers and heads use (checkpoints against the reference code: TimmFixtureTests).
/// </summary>
[TestClass]
public class FamilyTests
{
    public TestContext TestContext { get; set; } = null!;

    [TestMethod]
    [DataRow("swin")]
    [DataRow("convnext")]
    [DataRow("clip")]
    public void RandomNonZeroAdaptersMergeExactlyIntoLogitsAndFeatureMaps(string kind)
    {
        foreach (int groups in new[] { 1, 2, 4 })
        {
            foreach (float scale in new[] { 0.1f, 1f, 10f })
            {
                var backbone = TinyModels.Create(kind, seed: 7);
                if (kind == "clip") backbone.ResetClassifier(5);
                backbone.AttachAdapters(new AdapterConfig(Hidden: 8, Groups: groups, Scale: scale));
                TinyModels.Randomize(backbone, seed: 8, adapterStd: 0.1);
                backbone.eval();
                using var _ = no_grad();
                var images = TinyModels.Images(backbone, batch: 2);
                var logits = backbone.forward(images);
                var maps = backbone.ForwardIntermediates(images);
                Assert.AreEqual(backbone.AdapterSites(AdapterPlacement.Block).Count, backbone.MergeAdapters());
                float tolerance = 1e-4f * Math.Max(1, TinyModels.MaxAbs(logits));
                Assert.IsLessThanOrEqualTo(tolerance, TinyModels.MaxAbsDiff(logits, backbone.forward(images)), $"{kind} logits, k = {groups}, s = {scale}");
                var merged = backbone.ForwardIntermediates(images);
                for (int i = 0; i < maps.Count; i++)
                    Assert.IsLessThanOrEqualTo(1e-4f * Math.Max(1, TinyModels.MaxAbs(maps[i])), TinyModels.MaxAbsDiff(maps[i], merged[i]), $"{kind} level {i}, k = {groups}, s = {scale}");
            }
        }
    }

    /// <summary>Each family's placement table names adaptable layers in every block; a placement it lacks is refused with the ones it has.</summary>
    [TestMethod]
    [DataRow("vit", 2)]
    [DataRow("resnet_basic", 1)]
    [DataRow("swin", 2)]
    [DataRow("convnext", 1)]
    public void PlacementTablesNameEverySiteAndRefuseTheRest(string kind, int blockTargets)
    {
        using var scope = NewDisposeScope();
        using var backbone = TinyModels.Create(kind);
        Assert.HasCount(blockTargets, backbone.Placements[AdapterPlacement.Block]);
        foreach (var placement in Enum.GetValues<AdapterPlacement>())
        {
            if (backbone.Placements.TryGetValue(placement, out var targets))
            {
                var sites = backbone.AdapterSites(placement);
                int blocks = sites.Select(s => s.Block).Distinct().Count();
                Assert.IsGreaterThan(0, blocks);
                Assert.HasCount(blocks * targets.Count, sites, $"{placement}: every target in every block");
                Assert.IsTrue(sites.All(s => targets.Any(t => s.Name.EndsWith("." + t, StringComparison.Ordinal))), string.Join(", ", sites.Select(s => s.Name)));
            }
            else
            {
                var error = Assert.ThrowsExactly<NotSupportedException>(() => backbone.AdapterSites(placement));
                StringAssert.Contains(error.Message, $"no adapter placement {placement}");
                StringAssert.Contains(error.Message, $"Block ({string.Join(", ", backbone.Placements[AdapterPlacement.Block])})");
            }
        }
    }

    [TestMethod]
    public void AdapterCountsFollowTheArchitecture()
    {
        // An adapter in front of a C-channel projection: W_A 8 x C + b_A 8, W_B C x 8 / 2 + b_B C (r = 8, k = 2).
        static long Adapter(long c) => 8 * c + 8 + c * 4 + c;
        using var scope = NewDisposeScope();
        var swin = BackbonePresets.Create("swin_tiny_patch4_window7_224", numClasses: 0);
        swin.AttachAdapters(new AdapterConfig());
        long[] swinDims = [96, 192, 384, 768], swinDepths = [2, 2, 6, 2];
        Assert.AreEqual(swinDims.Zip(swinDepths, (c, d) => d * 2 * Adapter(c)).Sum(), swin.CountAdapterParameters(), "qkv and fc1 in every block");
        // timm: 28,288,354 with the 1000-class head (768 x 1000 + 1000).
        Assert.AreEqual(28_288_354L - 769_000, swin.CountParameters() - swin.CountAdapterParameters(), "swin_tiny without head");

        var convnext = BackbonePresets.Create("convnext_tiny", numClasses: 0);
        convnext.AttachAdapters(new AdapterConfig());
        long[] convDims = [96, 192, 384, 768], convDepths = [3, 3, 9, 3];
        Assert.AreEqual(convDims.Zip(convDepths, (c, d) => d * Adapter(c)).Sum(), convnext.CountAdapterParameters(), "fc1 (pwconv1) in every block");
        Assert.ThrowsExactly<NotSupportedException>(() => convnext.AdapterSites(AdapterPlacement.Attention));
        // timm: 28,589,128 with the 1000-class head.
        Assert.AreEqual(28_589_128L - 769_000, convnext.CountParameters() - convnext.CountAdapterParameters(), "convnext_tiny without head.fc");

        var clip = BackbonePresets.Create("ViT-B/16");
        clip.AttachAdapters(new AdapterConfig());
        Assert.AreEqual(24 * Adapter(768), clip.CountAdapterParameters(), "in_proj and c_fc of 12 blocks, as ViT-B/16's qkv and fc1");
        Assert.AreEqual(512, clip.FeatureDim);
    }

    [TestMethod]
    [DataRow("swin")]
    [DataRow("convnext")]
    [DataRow("clip")]
    public void EveryFamilyFeedsBothSegmentationHeads(string kind)
    {
        foreach (var head in new[] { SegmentationHeadKind.Naive, SegmentationHeadKind.MultiLevel })
        {
            var backbone = TinyModels.Create(kind, seed: 2);
            var network = new SegmentationNetwork(backbone, new SegmentationHeadConfig(head, 8, 3, backbone.FeatureLevels));
            network.AttachAdapters(new AdapterConfig(Scale: 0.5f));
            TinyModels.Randomize(network, seed: 3);
            network.eval();
            using var _ = no_grad();
            var images = TinyModels.Images(backbone, batch: 2);
            var before = network.forward(images);
            CollectionAssert.AreEqual(new long[] { 2, 3, images.shape[2], images.shape[3] }, before.shape);
            network.MergeAdapters();
            Assert.IsLessThanOrEqualTo(1e-4f * Math.Max(1, TinyModels.MaxAbs(before)), TinyModels.MaxAbsDiff(before, network.forward(images)), $"{kind}, {head}");
        }
    }

    [TestMethod]
    [DataRow("swin")]
    [DataRow("convnext")]
    [DataRow("clip")]
    public void EveryFamilyTrainsInBothTrainersUnchanged(string kind)
    {
        var mlContext = new MLContext(seed: 1);
        var images = Segmentation.SegmentationData.Mosaics("train", 8);
        var rows = mlContext.Data.LoadFromEnumerable(images.Select((m, i) => new { m.ImagePath, m.MaskPath, Label = i % 2 == 0 ? "even" : "odd" }));
        var data = mlContext.Transforms.Conversion.MapValueToKey("Label")
            .Append(mlContext.Transforms.LoadImages("Image", "", "ImagePath"))
            .Append(mlContext.Transforms.LoadImages("Mask", "", "MaskPath"))
            .Fit(rows).Transform(rows);

        var classifier = mlContext.MulticlassClassification.Trainers.RepAdapter(new RepAdapter.Classification.RepAdapterImageClassificationTrainer.Options
        {
            Backbone = TinyModels.Create(kind), Epochs = 1, BatchSize = 4, WarmupEpochs = 0, DropPathRate = 0, TimeBudget = TimeSpan.Zero,
        }).Fit(data);
        Assert.IsGreaterThan(0, classifier.Summary.AdaptersMerged);
        Assert.HasCount(8, classifier.Transform(data).GetColumn<float[]>("Score").ToList());

        var segmenter = mlContext.MulticlassClassification.Trainers.RepAdapterSegmentation(new RepAdapterSegmentationTrainer.Options
        {
            Backbone = TinyModels.Create(kind), Epochs = 1, BatchSize = 4, WarmupEpochs = 0, DropPathRate = 0, HeadChannels = 8, TimeBudget = TimeSpan.Zero,
        }).Fit(data);
        Assert.IsGreaterThan(0, segmenter.Summary.AdaptersMerged);
        Assert.IsTrue(segmenter.Transform(data).GetColumn<uint[]>("PredictedMask").All(m => m.Length == 56 * 56));
    }

    [TestMethod]
    public void DescriptionsRebuildEveryFamilyAndOldDescriptionsStillRead()
    {
        foreach (string kind in TinyModels.Kinds)
        {
            var backbone = TinyModels.Create(kind);
            var rebuilt = BackboneDescriptor.FromJson(backbone.Describe().ToJson()).Build();
            Assert.AreEqual(backbone.GetType(), rebuilt.GetType(), kind);
            CollectionAssert.AreEqual(backbone.state_dict().Select(p => $"{p.Key} {string.Join("x", p.Value.shape)}").ToList(),
                rebuilt.state_dict().Select(p => $"{p.Key} {string.Join("x", p.Value.shape)}").ToList(), kind);
            Assert.AreEqual(backbone.Describe(), rebuilt.Describe(), kind);
        }
        // The JSON the first release wrote: the family's config under the family's name.
        var old = BackboneDescriptor.FromJson("""{"Architecture":"tiny","Input":{"ImageSize":32,"Mean":[0.485,0.456,0.406],"Std":[0.229,0.224,0.225],"PixelScale":0.003921569,"Order":"Rgb"},"ResNet":{"Block":"Basic","Layers":[1,1,1,1],"Widths":[8,16,32,64],"NumClasses":5,"ImageSize":32,"HasInputOffset":false,"BatchNormFolded":false}}""");
        Assert.AreEqual("ResNet", old.Family);
        Assert.AreEqual(TinyModels.BasicResNetConfig, ((ResNet)old.Build()).Config);
    }
}
