using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.MLNet;
using SkiaSharp;
using static Microsoft.ML.RepAdapter.Tests.MLNet.TestImages;

namespace Microsoft.ML.RepAdapter.Tests.MLNet;

/// <summary>
/// Complete images pass; every truncation of a PNG or JPEG is caught, though Skia would decode it silently: a file cut
/// short, and a file whose structure is whole but whose image data holds too few rows.
/// </summary>
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

    private static void Refused(byte[] image, string what, params string[] expected)
    {
        string? problem = ImageIntegrity.Problem(image);
        Assert.IsNotNull(problem, what);
        foreach (string part in expected) StringAssert.Contains(problem, part, what);
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
            string? problem = ImageIntegrity.Problem(whole.AsMemory(0, length));
            Assert.IsNotNull(problem, $"{format} cut to {length} of {whole.Length} bytes");
            StringAssert.Contains(problem, format);
        }
        Assert.IsNotNull(ImageIntegrity.Problem(whole.AsMemory(0, whole.Length - 1)), "one byte short");
    }

    [TestMethod]
    public void BytesThatAreNoImageAreReported() =>
        StringAssert.Contains(ImageIntegrity.Problem(new byte[] { 1, 2, 3, 4, 5 }), "not a decodable image");

    // ---- PNG: the inflated image data must be exactly what IHDR implies ----

    public static IEnumerable<object[]> EveryPngKind()
    {
        foreach (var (colourType, depths) in new[] { (0, new[] { 1, 2, 4, 8, 16 }), (2, [8, 16]), (3, [1, 2, 4, 8]), (4, [8, 16]), (6, [8, 16]) })
            foreach (int depth in depths)
                foreach (bool interlaced in new[] { false, true })
                    yield return [colourType, depth, interlaced];
    }

    [TestMethod]
    [DynamicData(nameof(EveryPngKind))]
    public void ValidPngsOfEveryColourTypeBitDepthAndInterlacePass(int colourType, int bitDepth, bool interlaced)
    {
        // Sizes with empty Adam7 passes (1 x 1 has only the first), partial ones, and a row that is not whole bytes.
        foreach (var (width, height) in new[] { (1, 1), (3, 5), (9, 9), (28, 28), (13, 2) })
        {
            var spec = new PngSpec(width, height, colourType, bitDepth, interlaced);
            byte[] png = Png(spec);
            using (var decoded = SKBitmap.Decode(png))
                Assert.AreEqual(width, decoded?.Width, $"Skia decodes the hand-made {spec}");
            Assert.IsNull(ImageIntegrity.Problem(png), spec.ToString());
        }
    }

    [TestMethod]
    [DataRow(SKEncodedImageFormat.Png, SKColorType.Rgba8888)]
    [DataRow(SKEncodedImageFormat.Png, SKColorType.Gray8)]
    public void PngsThatSkiaEncodesPass(SKEncodedImageFormat format, SKColorType colourType)
    {
        using var picture = Picture();
        using var converted = picture.Copy(colourType);
        Assert.IsNull(ImageIntegrity.Problem(Encode(converted, format)));
    }

    [TestMethod]
    public void APngWhoseImageDataHoldsFewerRowsIsRefusedThoughItsChunksAreWhole()
    {
        var spec = new PngSpec(28, 28, ColourType: 2, BitDepth: 8);
        byte[] fourRows = spec.RawImageData()[..(4 * (1 + 28 * 3))];
        byte[] png = Png(spec, fourRows);
        using (var decoded = SKBitmap.Decode(png))
            Assert.IsNotNull(decoded, "Skia decodes it silently: the missing rows come out black");
        Refused(png, "4 of 28 rows", "truncated PNG", "4 of its 28 rows", "340 of the 2380 bytes");
    }

    [TestMethod]
    public void AnInterlacedPngMissingPartOfItsLastPassIsRefused()
    {
        var spec = new PngSpec(28, 28, ColourType: 6, BitDepth: 8, Interlaced: true);
        byte[] raw = spec.RawImageData();
        Refused(Png(spec, raw[..^100]), "interlaced, 100 bytes short", "truncated PNG", "Adam7");
    }

    [TestMethod]
    public void APngWhoseImageDataHoldsMoreThanItsRowsIsRefused()
    {
        var spec = new PngSpec(28, 28, ColourType: 0, BitDepth: 8);
        Refused(Png(spec, [.. spec.RawImageData(), .. new byte[29]]), "one row too many", "damaged PNG", "more than the 812 bytes");
    }

    [TestMethod]
    public void APngWithCorruptCompressedDataIsRefused()
    {
        var spec = new PngSpec(28, 28, ColourType: 2, BitDepth: 8);
        byte[] png = Png(spec);
        // Recompress, then damage the stream's header (compression method 0 does not exist) and, separately, its body.
        using var whole = new MemoryStream();
        using (var compressor = new System.IO.Compression.ZLibStream(whole, System.IO.Compression.CompressionLevel.Optimal, leaveOpen: true))
            compressor.Write(spec.RawImageData());
        byte[] stream = whole.ToArray();
        byte[] badHeader = [.. stream];
        badHeader[0] = 0x70;
        Refused(PngFile(spec, badHeader), "bad zlib header", "damaged PNG", "corrupt");
        byte[] badBody = [.. stream];
        for (int i = 10; i < badBody.Length - 10; i += 7) badBody[i] ^= 0x5A;
        Refused(PngFile(spec, badBody), "scrambled deflate data", "PNG");
        Assert.IsNull(ImageIntegrity.Problem(png), "the undamaged stream");
    }

    [TestMethod]
    public void APngWithAnInvalidHeaderIsRefused()
    {
        Refused(Png(new PngSpec(4, 4, ColourType: 2, BitDepth: 4), new byte[4 * 7]), "RGB at 4 bits", "colour type 2 with bit depth 4");
        var noHeader = Png(new PngSpec(4, 4, ColourType: 0, BitDepth: 8));
        noHeader[12] = (byte)'J';   // IHDR becomes JHDR
        Refused(noHeader, "no IHDR first", "first chunk is 'JHDR'");
    }

    // ---- JPEG: every scan must hold every MCU ----

    public static IEnumerable<object[]> ValidJpegs()
    {
        foreach (var downsample in new[] { SKJpegEncoderDownsample.Downsample420, SKJpegEncoderDownsample.Downsample422, SKJpegEncoderDownsample.Downsample444 })
            yield return [$"Skia {downsample}"];
        yield return ["Skia grayscale"];
        foreach (string fixture in new[] { "restart_420.jpg", "restart_gray.jpg", "optimized_422.jpg", "sampling_1x2.jpg", "separate_scans_420.jpg",
                     "progressive_420.jpg", "progressive_gray.jpg", "progressive_restart.jpg" })
            yield return [fixture];
    }

    private static byte[] ValidJpeg(string name)
    {
        if (name.EndsWith(".jpg", StringComparison.Ordinal)) return JpegFixture(name);
        using var picture = Picture();
        if (name == "Skia grayscale")
        {
            using var gray = picture.Copy(SKColorType.Gray8);
            return Jpeg(gray, SKJpegEncoderDownsample.Downsample444);
        }
        return Jpeg(picture, Enum.Parse<SKJpegEncoderDownsample>(name["Skia ".Length..]));
    }

    [TestMethod]
    [DynamicData(nameof(ValidJpegs))]
    public void ValidJpegsPass(string name)
    {
        byte[] jpeg = ValidJpeg(name);
        using (var decoded = SKBitmap.Decode(jpeg))
            Assert.AreEqual(61, decoded?.Width, $"Skia decodes {name}");
        Assert.IsNull(ImageIntegrity.Problem(jpeg), name);
    }

    [TestMethod]
    [DynamicData(nameof(ValidJpegs))]
    public void AScanCutShortThenEndedIsRefused(string name)
    {
        byte[] jpeg = ValidJpeg(name);
        var scans = JpegScans(jpeg);
        foreach (var (number, (start, end, acRefinement)) in scans.Index())
        {
            using (var decoded = SKBitmap.Decode(CutAndEnd(jpeg, (start + end) / 2)))
                Assert.IsNotNull(decoded, "Skia decodes a cut scan silently");
            // Progressive AC refinement scans are not decoded (documented): a cut one passes.
            if (acRefinement) continue;
            for (int cut = start; cut < end; cut += Math.Max(1, (end - start) / 23))
                Refused(CutAndEnd(jpeg, cut), $"{name}: scan {number + 1} of {scans.Count} cut at byte {cut} of {start}..{end}", "truncated JPEG", $"scan {number + 1}'s data ends");
        }
    }

    [TestMethod]
    public void AnEndOfImageRightAfterTheFirstScanHeaderIsRefused()
    {
        byte[] jpeg = ValidJpeg("Skia Downsample420");
        var (start, _, _) = JpegScans(jpeg)[0];
        Refused(CutAndEnd(jpeg, start), "no scan data", "truncated JPEG", "after 0 of the 12 MCUs that 61 x 43 pixels need");
    }

    [TestMethod]
    public void AJpegEndingBeforeAComponentsScanIsRefused()
    {
        byte[] jpeg = JpegFixture("separate_scans_420.jpg");
        var scans = JpegScans(jpeg);
        Refused(CutAndEnd(jpeg, scans[1].End), "two of three scans", "truncated JPEG", "before the scan of component 3");
        byte[] progressive = JpegFixture("progressive_gray.jpg");
        Assert.IsNull(ImageIntegrity.Problem(CutAndEnd(progressive, JpegScans(progressive)[0].End)),
            "a progressive JPEG with only its DC scan is complete by the standard (a blurred image)");
    }

    [TestMethod]
    public void RestartMarkersOutOfSequenceAreRefused()
    {
        byte[] jpeg = JpegFixture("restart_420.jpg");
        var (start, end, _) = JpegScans(jpeg)[0];
        int secondRestart = Enumerable.Range(start, end - start).First(i => jpeg[i] == 0xFF && jpeg[i + 1] == 0xD1);
        jpeg[secondRestart + 1] = 0xD5;
        Refused(jpeg, "RST5 for RST1", "damaged JPEG", "RST5 where RST1 belongs");
    }

    [TestMethod]
    public void ArithmeticCodedJpegsAreRefusedAsUnchecked() =>
        Refused(JpegFixture("arithmetic.jpg"), "SOF9", "unsupported JPEG", "arithmetic-coded (SOF9)");

    [TestMethod]
    public void AJpegWithoutHuffmanTablesIsLeftToTheDecodeCheck()
    {
        // Motion-JPEG frames omit DHT and rely on the standard tables, which this fixture's encoder used.
        byte[] jpeg = WithoutHuffmanTables(JpegFixture("restart_420.jpg"));
        Assert.IsNull(JpegIntegrity.Problem(jpeg, out bool scansUnchecked), "nothing is wrong with its structure");
        Assert.IsTrue(scansUnchecked, "its scans are not decoded here");
        Assert.IsNull(ImageIntegrity.Problem(jpeg), "Skia decodes it with the standard tables");
    }

    [TestMethod]
    public void DamagedBytesAnywhereGiveAnAnswerNeverAnException()
    {
        var random = new Random(4);
        var valid = ValidJpegs().Select(row => ValidJpeg((string)row[0]))
            .Append(Png(new PngSpec(13, 9, ColourType: 3, BitDepth: 2, Interlaced: true)))
            .Append(Png(new PngSpec(30, 20, ColourType: 6, BitDepth: 16)));
        foreach (byte[] image in valid)
            for (int trial = 0; trial < 300; trial++)
            {
                byte[] damaged = [.. image];
                for (int i = random.Next(1, 4); i > 0; i--) damaged[random.Next(2, damaged.Length)] = (byte)random.Next(256);
                _ = ImageIntegrity.Problem(damaged);   // any answer, as long as it returns
                _ = ImageIntegrity.Dimensions(damaged);
            }
    }
}
