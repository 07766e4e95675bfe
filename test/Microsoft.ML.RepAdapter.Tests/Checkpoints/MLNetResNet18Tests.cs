using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Formats;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Checkpoints;
using Microsoft.ML.RepAdapter.MLNet;
using Microsoft.ML.Transforms.Image;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Tests.Checkpoints;

/// <summary>
/// ML.NET's own pretrained ResNet-18 (Microsoft.ML.DnnImageFeaturizer.ResNet18), imported from its ONNX weights into
/// our torchvision-style ResNet, computes the features of ML.NET's DnnFeaturizeImage on real images.
/// </summary>
[TestClass]
public class MLNetResNet18Tests
{
    private const int Size = 224;

    public TestContext TestContext { get; set; } = null!;

    [TestMethod]
    public void OnnxGraphMapsOntoResNetWithStages2223()
    {
        var (backbone, report) = PretrainedBackbones.LoadMLNetResNet18();
        var resnet = (ResNet)backbone;
        Assert.AreEqual("mlnet_resnet18", backbone.Architecture);
        Assert.AreEqual(new ResNetConfig(ResNetBlock.Basic, [2, 2, 2, 3], [64, 128, 256, 512], NumClasses: 0, ImageSize: 224, HasInputOffset: true), resnet.Config);
        Assert.AreEqual("ML.NET ResNet-18 ONNX", report.Layout);
        Assert.HasCount(110 + 1, report.LoadedKeys, "every ONNX initializer, plus the input offset");
        Assert.IsTrue(report.UnloadedModelKeys.Keys.All(k => k.EndsWith(".num_batches_tracked")), report.ToString());

        var input = backbone.Input;
        Assert.AreEqual(ChannelOrder.Bgr, input.Order);
        Assert.AreEqual(1f, input.PixelScale);
        CollectionAssert.AreEqual(new[] { 1f, 1f, 1f }, input.Std);
        // The mean image's channel averages: the "B 103.06 / G 115.90 / R 123.15" of ML.NET's documentation.
        float[] documented = [103.06f, 115.90f, 123.15f];
        for (int c = 0; c < 3; c++) Assert.AreEqual(documented[c], input.Mean[c], 0.01f);

        using var onnx = CheckpointReader.Read(Path.Combine(AppContext.BaseDirectory, "DnnImageModels", "ResNet18Onnx", "ResNet18.onnx"));
        var state = backbone.state_dict();
        Assert.IsTrue(CheckpointFiles.Identical(onnx["Parameter91"], state["conv1.weight"]), "stem conv");
        Assert.IsTrue(CheckpointFiles.Identical(onnx["Parameter10"], state["layer4.2.conv2.weight"]), "last conv of the third block of stage 4");
        Assert.IsTrue(CheckpointFiles.Identical(onnx["Parameter351"], state["layer4.0.downsample.0.weight"]), "stage-4 downsample");
    }

    [TestMethod]
    public void FeaturesMatchMLNetDnnFeaturizeImageOnFashionMnist()
    {
        var images = TestImages();
        float[][] reference = MLNetFeatures(images);

        var (backbone, _) = PretrainedBackbones.LoadMLNetResNet18();
        backbone.eval();
        using var _ = no_grad();
        var ours = backbone.ForwardFeatures(ToTensor(backbone.Input, images));
        var expected = tensor(reference.SelectMany(f => f).ToArray()).reshape(images.Count, 512);

        float scale = TinyModels.MaxAbs(expected);
        float diff = TinyModels.MaxAbsDiff(expected, ours);
        // Without the per-pixel part of the mean (per-channel means only) the features would be off by this much.
        var state = backbone.state_dict();
        state["input_offset"].zero_();
        float channelMeansOnly = TinyModels.MaxAbsDiff(expected, backbone.ForwardFeatures(ToTensor(backbone.Input, images)));
        TestContext.WriteLine($"{images.Count} images: max |feature| {scale:F3}; max |ours - ML.NET| = {diff:E2} ({diff / scale:E2} relative); "
            + $"with per-channel means only: {channelMeansOnly:E2} ({channelMeansOnly / scale:E2} relative)");
        Assert.IsGreaterThan(0.1f, scale, "features are not trivially zero");
        Assert.IsLessThanOrEqualTo(1e-3f * scale, diff, "matches ML.NET's ResNet-18 features");
        Assert.IsGreaterThan(1e-3f * scale, channelMeansOnly, "the comparison is sharp enough to see the mean image");
    }

    [TestMethod]
    public void TheGenericLoaderPointsOnnxFilesToTheBuiltInWeights()
    {
        string onnx = Path.Combine(AppContext.BaseDirectory, "DnnImageModels", "ResNet18Onnx", "ResNet18.onnx");
        var error = Assert.ThrowsExactly<CheckpointException>(() => PretrainedBackbones.Load(onnx));
        StringAssert.Contains(error.Message, "PretrainedBackbones.LoadBuiltIn");
        StringAssert.Contains(error.Message, PretrainedBackbones.MLNetResNet18);
    }

    [TestMethod]
    public void AMissingModelFolderIsNamedWithThePackageToReference()
    {
        string missing = Path.Combine(CheckpointFiles.TempDirectory(), "DnnImageModels");
        var error = Assert.ThrowsExactly<FileNotFoundException>(() => PretrainedBackbones.LoadMLNetResNet18(modelDirectory: missing));
        StringAssert.Contains(error.Message, missing);
        StringAssert.Contains(error.Message, "Microsoft.ML.DnnImageFeaturizer.ResNet18");
    }

    [TestMethod]
    public void AGraphThatIsNotTheExpectedResNetIsRefusedByNode()
    {
        // The preprocessing graph in place of the network: a valid ONNX model, but no ResNet stem.
        string directory = CheckpointFiles.TempDirectory();
        string source = Path.Combine(AppContext.BaseDirectory, "DnnImageModels");
        Directory.CreateDirectory(Path.Combine(directory, "ResNet18Onnx"));
        Directory.CreateDirectory(Path.Combine(directory, "ResNetPrepOnnx"));
        string prep = Path.Combine(source, "ResNetPrepOnnx", "ResNetPreprocess.onnx");
        File.Copy(prep, Path.Combine(directory, "ResNet18Onnx", "ResNet18.onnx"));
        File.Copy(prep, Path.Combine(directory, "ResNetPrepOnnx", "ResNetPreprocess.onnx"));
        var error = Assert.ThrowsExactly<CheckpointException>(() => PretrainedBackbones.LoadMLNetResNet18(modelDirectory: directory));
        StringAssert.Contains(error.Message, "ResNet18.onnx");
        StringAssert.Contains(error.Message, "expected one Conv node reading this value, found [Split");
    }

    /// <summary>224x224 RGB planes: four Fashion-MNIST items as gray images and two colour composites of three items each.</summary>
    private static List<byte[][]> TestImages()
    {
        var items = ReadFashionMnist(count: 10);
        var images = new List<byte[][]>();
        for (int i = 0; i < 4; i++) images.Add([items[i], items[i], items[i]]);
        images.Add([items[4], items[5], items[6]]);
        images.Add([items[7], items[8], items[9]]);
        return images;
    }

    /// <summary>
    /// The first <paramref name="count"/> Fashion-MNIST test images committed in samples/data (real data, no install),
    /// upscaled 28 -> 224 by repeating each pixel 8x8 (no resampling filter to disagree on).
    /// </summary>
    private static List<byte[]> ReadFashionMnist(int count)
    {
        var files = TestData.Images("test", classes: 10, perClass: 1).Select(r => r.ImagePath).Take(count).ToList();
        Assert.HasCount(count, files, $"Fashion-MNIST images under {TestData.FashionMnist}");
        var images = new List<byte[]>();
        foreach (string file in files)
        {
            using var image = MLImage.CreateFromFile(file);
            Assert.IsTrue(image.Width == 28 && image.Height == 28, $"{file} is {image.Width}x{image.Height}");
            byte[] bgr = image.GetBGRPixels;
            var large = new byte[Size * Size];
            for (int y = 0; y < Size; y++)
                for (int x = 0; x < Size; x++)
                    large[y * Size + x] = bgr[3 * ((y / 8) * 28 + x / 8)];
            images.Add(large);
        }
        return images;
    }

    /// <summary>Images to the backbone's input through the library's own preprocessing (channel order, scale, mean, std).</summary>
    private static Tensor ToTensor(ImageInputSpec spec, List<byte[][]> rgbImages)
    {
        var images = ToMLImages(rgbImages);
        try
        {
            return spec.Normalize(new ImagePreprocessor(spec).ToPixels(images));
        }
        finally
        {
            foreach (var image in images) image.Dispose();
        }
    }

    /// <summary>Planar RGB 0..255 to MLImages (BGRA), the form both ML.NET and the library read.</summary>
    private static List<MLImage> ToMLImages(List<byte[][]> rgbImages) =>
    [
        .. rgbImages.Select(planes =>
        {
            var bgra = new byte[Size * Size * 4];
            for (int i = 0; i < Size * Size; i++)
            {
                bgra[4 * i] = planes[2][i];
                bgra[4 * i + 1] = planes[1][i];
                bgra[4 * i + 2] = planes[0][i];
                bgra[4 * i + 3] = 255;
            }
            return MLImage.CreateFromPixels(Size, Size, MLPixelFormat.Bgra32, bgra);
        }),
    ];

    private static float[][] MLNetFeatures(List<byte[][]> rgbImages)
    {
        var ml = new MLContext(seed: 1);
        var rows = ToMLImages(rgbImages).Select(image => new ImageRow { Image = image }).ToList();
        var data = ml.Data.LoadFromEnumerable(rows);
        // ML.NET's documented ResNet-18 pipeline: pixels as planar RGB 0..255, then the featurizer (BGR, mean image, network).
        var pipeline = ml.Transforms.ExtractPixels("Pixels", nameof(ImageRow.Image))
            .Append(ml.Transforms.DnnFeaturizeImage("Features", m => m.ModelSelector.ResNet18(ml, m.OutputColumn, m.InputColumn), "Pixels"));
        var features = pipeline.Fit(data).Transform(data);
        return ml.Data.CreateEnumerable<FeatureRow>(features, reuseRowObject: false).Select(r => r.Features).ToArray();
    }

    private sealed class ImageRow
    {
        [ImageType(Size, Size)]
        public MLImage Image { get; set; } = null!;
    }

    private sealed class FeatureRow
    {
        [VectorType(512)]
        public float[] Features { get; set; } = null!;
    }
}
