using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.MLNet;

namespace Microsoft.ML.RepAdapter.Tests.MLNet;

/// <summary>Complete images pass; every truncation of a PNG or JPEG is caught, though Skia would decode it silently.</summary>
[TestClass]
public class ImageIntegrityTests
{
    private static byte[] Encoded(string extension)
    {
        using var image = MLImage.CreateFromFile(TestData.Images(classes: 1, perClass: 1)[0].ImagePath);
        string path = Path.Combine(Path.GetTempPath(), $"integrity-{Guid.NewGuid():N}{extension}");
        try
        {
            image.Save(path);
            return File.ReadAllBytes(path);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [TestMethod]
    [DataRow(".png", "PNG")]
    [DataRow(".jpg", "JPEG")]
    public void CompleteImagesPassAndEveryTruncationIsCaught(string extension, string format)
    {
        byte[] whole = Encoded(extension);
        Assert.IsNull(ImageIntegrity.Problem(whole), $"the complete {format}");
        // From the end of the format's signature (shorter prefixes are no PNG or JPEG at all) to one byte short.
        for (int length = format == "PNG" ? 8 : 2; length < whole.Length; length += Math.Max(1, whole.Length / 97))
        {
            string? problem = ImageIntegrity.Problem(whole.AsSpan(0, length));
            Assert.IsNotNull(problem, $"{format} cut to {length} of {whole.Length} bytes");
            StringAssert.Contains(problem, format);
        }
        Assert.IsNotNull(ImageIntegrity.Problem(whole.AsSpan(0, whole.Length - 1)), "one byte short");
    }

    [TestMethod]
    public void BytesThatAreNoImageAreReported() =>
        StringAssert.Contains(ImageIntegrity.Problem([1, 2, 3, 4, 5]), "not a decodable image");
}
