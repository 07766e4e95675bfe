using Microsoft.ML.RepAdapter.Segmentation;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Tests.Segmentation;

/// <summary>Large images are segmented in bounded memory, with the masks the one-shot upsampling gives.</summary>
[TestClass]
public class SegmentationMemoryTests
{
    [TestMethod]
    public void StripwiseUpsamplingGivesTheOneShotMask()
    {
        // 11 classes on a 16 x 16 map, to 2,000 x 3,000 (66 M logits, past the strip threshold): the two paths blend in
        // another order, so a pixel whose two best classes tie within float rounding may differ; no more than that.
        manual_seed(3);
        using var logits = randn(1, 11, 16, 16) * 4;
        const int width = 2000, height = 3000;
        Assert.IsGreaterThan(RepAdapterSegmentationTransformer.StripThreshold, 11L * width * height);
        long before = GC.GetTotalAllocatedBytes(precise: true);
        var strips = RepAdapterSegmentationTransformer.StripwiseClasses(logits, width, height, ignoreIndex: 255);
        long managed = GC.GetTotalAllocatedBytes(precise: true) - before;
        using var full = nn.functional.interpolate(logits, [height, width], mode: InterpolationMode.Bilinear, align_corners: false)[0];
        var expected = full.argmax(0).to(ScalarType.Int32).data<int>().ToArray();
        long differ = Enumerable.Range(0, expected.Length).Count(p => strips[p] != (uint)expected[p]);
        Assert.IsLessThan(expected.Length / 10_000, differ, $"{differ} of {expected.Length} pixels differ");
        // The mask itself (24 MB) and per-strip copies: far below the 264 MB of the full float map.
        Assert.IsLessThan(100L << 20, managed, $"{managed >> 20} MB allocated");
    }
}
