using Microsoft.ML.RepAdapter.Formats;
using Microsoft.ML.RepAdapter.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Tests.Checkpoints;

/// <summary>The container readers: the same tensors whatever the container, the format recognised from the bytes.</summary>
[TestClass]
public class CheckpointReaderTests
{
    [TestMethod]
    [DataRow("tiny_vit.safetensors", "tiny_vit.pth")]
    [DataRow("tiny_resnet_basic.safetensors", "tiny_resnet_basic.pth")]
    public void PthAndSafeTensorsHoldIdenticalTensors(string safetensors, string pth)
    {
        using var a = CheckpointReader.Read(CheckpointFiles.Fixture(safetensors));
        using var b = CheckpointReader.Read(CheckpointFiles.Fixture(pth));
        Assert.AreEqual(CheckpointFormat.SafeTensors, a.Format);
        Assert.AreEqual(CheckpointFormat.PyTorchZip, b.Format);
        CollectionAssert.AreEquivalent(a.Tensors.Keys.ToList(), b.Tensors.Keys.ToList());
        foreach (var (key, tensor) in a.Tensors)
        {
            Assert.AreEqual(tensor.dtype, b[key].dtype, key);
            CollectionAssert.AreEqual(tensor.shape, b[key].shape, key);
            Assert.IsTrue(CheckpointFiles.Identical(tensor, b[key]), $"{key} differs");
        }
    }

    [TestMethod]
    public void BatchNormCounterIsAZeroDimInt64()
    {
        using var checkpoint = CheckpointReader.Read(CheckpointFiles.Fixture("tiny_resnet_basic.pth"));
        var counter = checkpoint["bn1.num_batches_tracked"];
        Assert.AreEqual(ScalarType.Int64, counter.dtype);
        Assert.AreEqual(0L, counter.dim());
    }

    [TestMethod]
    [DataRow("tiny_vit.safetensors", CheckpointFormat.SafeTensors)]
    [DataRow("tiny_vit.pth", CheckpointFormat.PyTorchZip)]
    [DataRow("tiny_vit_google.npz", CheckpointFormat.NumpyNpz)]
    public void FormatIsRecognisedFromTheContentNotTheExtension(string fixture, CheckpointFormat expected)
    {
        string renamed = Path.Combine(CheckpointFiles.TempDirectory(), "weights.onnx");
        File.Copy(CheckpointFiles.Fixture(fixture), renamed);
        using var checkpoint = CheckpointReader.Read(renamed);
        Assert.AreEqual(expected, checkpoint.Format);
        Assert.IsGreaterThan(0, checkpoint.Tensors.Count);
    }

    [TestMethod]
    public void NpzKeepsGoogleNamesAndLayouts()
    {
        using var checkpoint = CheckpointReader.Read(CheckpointFiles.Fixture("tiny_vit_google.npz"));
        CollectionAssert.AreEqual(new long[] { 4, 4, 3, 32 }, checkpoint["embedding/kernel"].shape, "HWIO");
        CollectionAssert.AreEqual(new long[] { 32, 2, 16 }, checkpoint["Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"].shape);
        CollectionAssert.AreEqual(new long[] { 2, 16, 32 }, checkpoint["Transformer/encoderblock_1/MultiHeadDotProductAttention_1/out/kernel"].shape);
    }

    [TestMethod]
    public void SafeTensorsRoundTripKeepsDTypesShapesValuesAndMetadata()
    {
        var generator = new Generator(3);
        var tensors = new Dictionary<string, Tensor>
        {
            ["f32"] = randn([2, 3], generator: generator),
            ["f16"] = randn([5], generator: generator).to(ScalarType.Float16),
            ["bf16"] = randn([1, 4], generator: generator).to(ScalarType.BFloat16),
            ["f64"] = randn([3], generator: generator, dtype: ScalarType.Float64),
            ["counter"] = tensor(7L),
            ["empty"] = zeros(0, 4),
            ["strided"] = randn([4, 6], generator: generator).t(),
        };
        string path = Path.Combine(CheckpointFiles.TempDirectory(), "roundtrip.safetensors");
        SafeTensorsWriter.Write(path, tensors, new Dictionary<string, string> { ["note"] = "héllo" });

        using var back = CheckpointReader.Read(path);
        CollectionAssert.AreEqual(tensors.Keys.ToList(), back.Tensors.Keys.ToList(), "file order is the given order");
        foreach (var (key, expected) in tensors)
        {
            Assert.AreEqual(expected.dtype, back[key].dtype, key);
            CollectionAssert.AreEqual(expected.shape, back[key].shape, key);
            Assert.IsTrue(CheckpointFiles.Identical(expected, back[key]), key);
        }
        Assert.AreEqual("héllo", back.Metadata["note"]);
        ulong headerLength = BitConverter.ToUInt64(File.ReadAllBytes(path), 0);
        Assert.AreEqual(0UL, headerLength % 8, "header padding keeps the data 8-byte aligned");
    }

    [TestMethod]
    public void OnnxReaderReadsMLNetResNet18Graph()
    {
        string path = Path.Combine(AppContext.BaseDirectory, "DnnImageModels", "ResNet18Onnx", "ResNet18.onnx");
        using var checkpoint = CheckpointReader.Read(path);
        Assert.AreEqual(CheckpointFormat.Onnx, checkpoint.Format);
        var graph = checkpoint.Graph!;
        Assert.AreEqual("CNTK", graph.ProducerName);
        Assert.AreEqual(110, checkpoint.Tensors.Count);
        var ops = graph.Nodes.GroupBy(n => n.OpType).ToDictionary(g => g.Key, g => g.Count());
        Assert.AreEqual(22, ops["Conv"]);
        Assert.AreEqual(22, ops["BatchNormalization"]);
        Assert.AreEqual(9, ops["Add"]);
        var input = graph.Inputs.Single(i => !checkpoint.Tensors.ContainsKey(i.Name));
        Assert.AreEqual("Input247", input.Name);
        CollectionAssert.AreEqual(new long?[] { 1, 3, 224, 224 }, input.Shape.ToArray());
        Assert.AreEqual("Pooling395_Output_0", graph.Outputs.Single().Name);
        CollectionAssert.AreEqual(new long[] { 64, 3, 7, 7 }, checkpoint["Parameter91"].shape);
        var stem = graph.Nodes.First(n => n.OpType == "Conv");
        CollectionAssert.AreEqual(new long[] { 3, 3, 2, 2 }, stem.Ints("pads").ToArray(), "CNTK's asymmetric 'same' padding");
    }

    [TestMethod]
    public void StorageSizeClaimedByAPickleIsCheckedBeforeAnythingIsAllocated()
    {
        // A pickle claiming 2^50 floats for a 16-byte storage must be refused, not passed on to libtorch.
        using var memory = new MemoryStream();
        using (var zip = new System.IO.Compression.ZipArchive(memory, System.IO.Compression.ZipArchiveMode.Create, leaveOpen: true))
        {
            using var entry = zip.CreateEntry("archive/data/0").Open();
            entry.Write(new byte[16]);
        }
        memory.Position = 0;
        using var archive = new System.IO.Compression.ZipArchive(memory);
        using var loader = new PyTorchZipReader.StorageLoader("claims.pth", archive, "archive/");
        var error = Assert.ThrowsExactly<CheckpointException>(() => loader.Load("0", ScalarType.Float32, 1L << 50));
        StringAssert.Contains(error.Message, "claims.pth");
        StringAssert.Contains(error.Message, "archive/data/0");
        StringAssert.Contains(error.Message, "found 16");
    }
}
