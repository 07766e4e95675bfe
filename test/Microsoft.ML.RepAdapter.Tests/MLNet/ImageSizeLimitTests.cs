using System.Buffers.Binary;
using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.MLNet;
using SkiaSharp;
using static Microsoft.ML.RepAdapter.Tests.MLNet.TestImages;

namespace Microsoft.ML.RepAdapter.Tests.MLNet;

/// <summary>An image's size is read from its header, and one declaring more pixels than the limit is refused before any decode.</summary>
[TestClass]
public class ImageSizeLimitTests
{
    private static InvalidDataException DecodeFails(FetchedImage fetched, long maxPixels = ImageColumn.DefaultMaxImagePixels) =>
        Assert.ThrowsExactly<InvalidDataException>(() => ImageColumn.Decode(fetched, image => image.Width, maxPixels));

    [TestMethod]
    public void ABmpHeaderClaiming30000By30000IsRefusedFromTheHeaderWithBoundedMemory()
    {
        byte[] bmp = BmpHeader(30000, 30000);
        Assert.AreEqual(54, bmp.Length);
        long before = GC.GetAllocatedBytesForCurrentThread();
        var error = DecodeFails(new FetchedImage("ImageSource", 7, bmp, null, null));
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        StringAssert.Contains(error.Message, "Image column 'ImageSource', row 7: the BMP image declares 30000 x 30000 = 900,000,000 pixels");
        StringAssert.Contains(error.Message, "more than the limit of 67,108,864 (MaxImagePixels)");
        StringAssert.Contains(error.Message, "3.6 GB");
        Assert.IsLessThan(50L << 20, allocated, "refused from the header: nothing of the declared size is allocated");
    }

    [TestMethod]
    public void AHugePngFileFromLoadImagesIsRefusedNamingTheFile()
    {
        // IHDR claims 10000 x 10000; the rest does not matter, the header is refused first.
        byte[] png = PngFile(new PngSpec(10000, 10000, ColourType: 2, BitDepth: 8), [0x78, 0x9C]);
        string path = Path.Combine(Path.GetTempPath(), $"huge-{Guid.NewGuid():N}.png");
        File.WriteAllBytes(path, png);
        try
        {
            var loaded = new DecodedImage(new byte[3], 1, 1);
            var error = DecodeFails(new FetchedImage("Image", 2, null, loaded, path));
            StringAssert.Contains(error.Message, $"Image column 'Image', row 2 (file '{path}'): the PNG image declares 10000 x 10000 = 100,000,000 pixels");
        }
        finally
        {
            File.Delete(path);
        }
    }

    [TestMethod]
    public void TheLimitIsAParameterAndAppliesToLoadedPixelsToo()
    {
        byte[] png = Png(new PngSpec(28, 28, ColourType: 2, BitDepth: 8));
        Assert.AreEqual(28, ImageColumn.Decode(new FetchedImage("Image", 0, png, null, null), image => image.Width));
        StringAssert.Contains(DecodeFails(new FetchedImage("Image", 0, png, null, null), maxPixels: 700).Message, "28 x 28 = 784 pixels, more than the limit of 700");
        // LoadImages pixels without a file to read (no path in Tag): the decoded size is checked.
        var loaded = new DecodedImage(new byte[40 * 30 * 3], 40, 30);
        StringAssert.Contains(DecodeFails(new FetchedImage("Image", 1, null, loaded, null), maxPixels: 1000).Message, "the image is 40 x 30 = 1,200 pixels");
    }

    public static IEnumerable<object[]> EncodedFormats()
    {
        yield return ["PNG"];
        yield return ["JPEG"];
        yield return ["WebP VP8"];
        yield return ["WebP VP8L"];
        yield return ["WebP VP8X"];
        yield return ["ICO"];
    }

    private static byte[] Encoded(string format)
    {
        using var picture = Picture();
        if (format == "WebP VP8X") picture.SetPixel(0, 0, SKColors.Transparent);   // alpha: an extended WebP
        return format switch
        {
            "PNG" => Encode(picture, SKEncodedImageFormat.Png),
            "JPEG" => Jpeg(picture, SKJpegEncoderDownsample.Downsample420),
            "WebP VP8" or "WebP VP8X" => WebP(picture, SKWebpEncoderCompression.Lossy),
            "WebP VP8L" => WebP(picture, SKWebpEncoderCompression.Lossless),
            _ => Icon(Encode(picture, SKEncodedImageFormat.Png)),
        };
    }

    /// <summary>An ICO holding one PNG: read through SKCodec, as formats without a reader here are.</summary>
    private static byte[] Icon(byte[] png)
    {
        var icon = new byte[6 + 16];
        BinaryPrimitives.WriteInt16LittleEndian(icon.AsSpan(2), 1);   // type: icon
        BinaryPrimitives.WriteInt16LittleEndian(icon.AsSpan(4), 1);   // one image
        (icon[6], icon[7]) = (61, 43);
        BinaryPrimitives.WriteInt16LittleEndian(icon.AsSpan(10), 1);
        BinaryPrimitives.WriteInt16LittleEndian(icon.AsSpan(12), 32);
        BinaryPrimitives.WriteInt32LittleEndian(icon.AsSpan(14), png.Length);
        BinaryPrimitives.WriteInt32LittleEndian(icon.AsSpan(18), icon.Length);
        return [.. icon, .. png];
    }

    [TestMethod]
    [DynamicData(nameof(EncodedFormats))]
    public void TheHeaderGivesTheSizeOfEveryFormat(string format)
    {
        byte[] encoded = Encoded(format);
        if (format.StartsWith("WebP", StringComparison.Ordinal))
            Assert.AreEqual(format["WebP ".Length..], System.Text.Encoding.ASCII.GetString(encoded, 12, 4).TrimEnd(), "the WebP kind under test");
        var declared = ImageIntegrity.Dimensions(encoded);
        Assert.AreEqual((61, 43), (declared?.Width, declared?.Height), format);
        Assert.IsNull(ImageIntegrity.SizeProblem(encoded, 61 * 43, "test"), "at the limit");
        StringAssert.Contains(ImageIntegrity.SizeProblem(encoded, 61 * 43 - 1, "test"), "61 x 43 = 2,623 pixels");
    }

    [TestMethod]
    public void TheTrainersAndTheTransformersMaxImagePixelsBoundTrainingAndScoring()
    {
        // The test images are 28 x 28 = 784 pixels: a limit of 700 refuses them in training, naming the option and the file.
        var mlContext = new MLContext(seed: 1);
        var rows = TestData.Images(classes: 2, perClass: 3);
        var data = TestData.Prepared(mlContext, rows);
        var options = Classification.TinyTrainerOptions.Create(epochs: 1);
        options.MaxImagePixels = 700;
        var error = Assert.ThrowsExactly<InvalidDataException>(() => mlContext.MulticlassClassification.Trainers.RepAdapter(options).Fit(data));
        StringAssert.Contains(error.Message, "28 x 28 = 784 pixels, more than the limit of 700 (MaxImagePixels)");
        StringAssert.Contains(error.Message, ".png");

        options.MaxImagePixels = 784;
        using var model = mlContext.MulticlassClassification.Trainers.RepAdapter(options).Fit(data);
        Assert.AreEqual(784, model.MaxImagePixels, "the trainer's limit is the transformer's");
        model.MaxImagePixels = 783;
        error = Assert.ThrowsExactly<InvalidDataException>(() => model.Transform(data).GetColumn<float[]>("Score").ToList());
        StringAssert.Contains(error.Message, "more than the limit of 783 (MaxImagePixels)");
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => model.MaxImagePixels = 0);
    }

    [TestMethod]
    public void BmpAndGifHeadersGiveTheirSize()
    {
        Assert.AreEqual(new ImageDimensions(300, 200, "BMP"), ImageIntegrity.Dimensions(BmpHeader(300, -200)), "top-down BMP");
        Assert.AreEqual(new ImageDimensions(300, 200, "BMP"), ImageIntegrity.Dimensions(BmpHeader(300, 200, headerSize: 12)), "OS/2 BMP");
        byte[] gif = [.. "GIF89a"u8, 0x2C, 0x01, 0xC8, 0x00, 0, 0, 0];
        Assert.AreEqual(new ImageDimensions(300, 200, "GIF"), ImageIntegrity.Dimensions(gif));
        Assert.IsNull(ImageIntegrity.Dimensions([1, 2, 3]), "no image, no size");
    }

    [TestMethod]
    public void ImageValidationGivesServicesTheTransformersChecks()
    {
        using var picture = TestImages.Picture();
        byte[] png = TestImages.Encode(picture, SkiaSharp.SKEncodedImageFormat.Png);
        Assert.IsNull(ImageValidation.Problem(png), "a complete image passes");
        StringAssert.Contains(ImageValidation.Problem(Array.Empty<byte>()), "empty");
        StringAssert.Contains(ImageValidation.Problem(png[..(png.Length * 2 / 3)]), "truncated");
        StringAssert.Contains(ImageValidation.Problem(TestImages.BmpHeader(30000, 30000)), "30000 x 30000");
        StringAssert.Contains(ImageValidation.Problem(png, maxPixels: 100), "MaxImagePixels");
    }
}
