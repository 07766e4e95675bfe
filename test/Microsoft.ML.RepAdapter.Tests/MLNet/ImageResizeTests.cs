using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.MLNet;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Tests.MLNet;

/// <summary>Large images are resized in strips of rows: the one-shot result up to rounding, without a full-size float copy.</summary>
[TestClass]
public class ImageResizeTests
{
    private static DecodedImage RandomImage(int width, int height, int seed)
    {
        var bgr = new byte[width * height * 3];
        new Random(seed).NextBytes(bgr);
        return new DecodedImage(bgr, width, height);
    }

    /// <summary>The one-shot resize, as ToPixels does it for ordinary images.</summary>
    private static Tensor OneShot(DecodedImage image, ImageInputSpec spec)
    {
        var bgr = tensor(image.Bgr, ScalarType.Byte).view(image.Height, image.Width, 3).permute(2, 0, 1);
        return ImagePreprocessor.ResizeWhole(spec.Order == ChannelOrder.Bgr ? bgr : bgr.flip(0), spec.ImageSize);
    }

    private static (int Max, double Mean) Difference(Tensor a, Tensor b)
    {
        var difference = a.to(ScalarType.Int32).sub(b.to(ScalarType.Int32)).abs();
        return (difference.max().item<int>(), difference.to(float64).mean().item<double>());
    }

    [TestMethod]
    public void ALargeImageIsResizedInStripsAsTheOneShotResizeWould()
    {
        using var scope = NewDisposeScope();
        var image = RandomImage(3000, 2000, seed: 1);
        Assert.IsGreaterThan(ImagePreprocessor.StripResizeAbovePixels, (long)image.Width * image.Height, "takes the strip path");
        var spec = ImageInputSpec.ImageNet(224);
        var strips = new ImagePreprocessor(spec).ToPixels(image);
        CollectionAssert.AreEqual(new long[] { 3, 224, 224 }, strips.shape);
        var (max, mean) = Difference(strips, OneShot(image, spec));
        Assert.IsLessThanOrEqualTo(1, max, "uint8 results differ by at most one level");
        Assert.IsLessThan(1e-3, mean, "and almost never");
    }

    [TestMethod]
    [DataRow(ChannelOrder.Rgb, 1)]
    [DataRow(ChannelOrder.Bgr, 37)]
    [DataRow(ChannelOrder.Rgb, 500)]
    public void StripsOfAnyHeightGiveTheOneShotResult(ChannelOrder order, int rowsPerStrip)
    {
        using var scope = NewDisposeScope();
        var image = RandomImage(301, 203, seed: 2);
        var spec = ImageInputSpec.ImageNet(64) with { Order = order };
        var bgr = tensor(image.Bgr, ScalarType.Byte).view(image.Height, image.Width, 3).permute(2, 0, 1);
        var (max, mean) = Difference(new ImagePreprocessor(spec).ResizeInStrips(bgr, 64, rowsPerStrip), OneShot(image, spec));
        Assert.IsLessThanOrEqualTo(1, max);
        Assert.IsLessThan(1e-3, mean);
    }

    [TestMethod]
    public void OrdinaryImagesKeepTheOneShotResize()
    {
        using var scope = NewDisposeScope();
        var image = RandomImage(640, 480, seed: 3);
        var spec = ImageInputSpec.ImageNet(224);
        Assert.IsTrue(new ImagePreprocessor(spec).ToPixels(image).equal(OneShot(image, spec)).all().item<bool>(), "bit for bit");
    }
}
