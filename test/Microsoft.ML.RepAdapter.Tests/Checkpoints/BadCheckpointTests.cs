using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Formats;
using Microsoft.ML.RepAdapter.Torch;
using System.IO.Compression;
using System.Text;
using Microsoft.ML.RepAdapter.Checkpoints;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Tests.Checkpoints;

/// <summary>
/// Broken, hostile or mismatched files: each is a <see cref="CheckpointException"/> that names the file, the key and
/// what was expected versus found; never a native crash, never executed code, never a half-loaded model.
/// </summary>
[TestClass]
public class BadCheckpointTests
{
    private static string Write(string name, byte[] bytes)
    {
        string path = Path.Combine(CheckpointFiles.TempDirectory(), name);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    private static byte[] SafeTensorsBytes(string header, int dataBytes)
    {
        var json = Encoding.UTF8.GetBytes(header);
        return [.. BitConverter.GetBytes((ulong)json.Length), .. json, .. new byte[dataBytes]];
    }

    private static CheckpointException ReadFails(string path, params string[] fragments)
    {
        var error = Assert.ThrowsExactly<CheckpointException>(() => CheckpointReader.Read(path));
        Assert.AreEqual(path, error.FilePath);
        StringAssert.Contains(error.Message, Path.GetFileName(path));
        foreach (string fragment in fragments) StringAssert.Contains(error.Message, fragment);
        return error;
    }

    [TestMethod]
    public void TruncatedSafeTensorsIsRefused() =>
        ReadFails(CheckpointFiles.Fixture("truncated.safetensors"), "truncated", "found 92 bytes");

    [TestMethod]
    public void SafeTensorsWithDataCutShortIsRefusedNamingTheTensor()
    {
        byte[] whole = File.ReadAllBytes(CheckpointFiles.Fixture("tiny_vit.safetensors"));
        var error = ReadFails(Write("cut.safetensors", whole[..^1000]), "truncated");
        Assert.IsNotNull(error.Key, "the tensor whose data is missing is named");
    }

    [TestMethod]
    public void SafeTensorsWithInvalidJsonHeaderIsRefused() =>
        ReadFails(Write("badjson.safetensors", SafeTensorsBytes("{\"a\": {\"dtype\": \"F32\",", 0)), "not valid JSON");

    [TestMethod]
    public void SafeTensorsWithUnknownDTypeIsRefusedNamingTheKey()
    {
        var error = ReadFails(Write("dtype.safetensors", SafeTensorsBytes("{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2)),
            "expected one of", "found 'F8_E4M3'");
        Assert.AreEqual("w", error.Key);
    }

    [TestMethod]
    public void SafeTensorsWithSizeNotMatchingShapeIsRefused()
    {
        var error = ReadFails(Write("size.safetensors", SafeTensorsBytes("{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8)),
            "expected 12 bytes", "found 8 bytes");
        Assert.AreEqual("w", error.Key);
    }

    [TestMethod]
    public void SafeTensorsWithOverlappingTensorsIsRefused() =>
        ReadFails(Write("overlap.safetensors", SafeTensorsBytes(
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12)),
            "expected the tensor to start at byte 8", "found 4");

    [TestMethod]
    public void EmptyFileIsRefused() => ReadFails(Write("empty.pth", []), "empty");

    [TestMethod]
    public void UnknownFormatIsRefused() =>
        ReadFails(Write("model.safetensors", Encoding.ASCII.GetBytes("this is not a checkpoint, just text")), "unknown checkpoint format", "74 68 69 73");

    [TestMethod]
    public void LegacyBarePickleIsRefusedWithoutUnpickling() =>
        ReadFails(Write("legacy.pth", [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20]), "bare pickle");

    [TestMethod]
    public void ZipThatIsNeitherTorchNorNpzIsRefused()
    {
        string path = Path.Combine(CheckpointFiles.TempDirectory(), "other.pth");
        using (var zip = ZipFile.Open(path, ZipArchiveMode.Create)) zip.CreateEntry("readme.txt");
        ReadFails(path, "readme.txt", "expected a torch.save archive");
    }

    [TestMethod]
    public void EvilPickleIsRefusedAndNothingRuns()
    {
        const string marker = "/tmp/pwned";
        bool existedBefore = File.Exists(marker);
        var error = ReadFails(CheckpointFiles.Fixture("evil.pth"), "refused", "could run code");
        Assert.AreEqual("posix.system", error.Key);
        if (!existedBefore) Assert.IsFalse(File.Exists(marker), "os.system was not called");
    }

    [TestMethod]
    public void TruncatedPthIsRefused()
    {
        byte[] whole = File.ReadAllBytes(CheckpointFiles.Fixture("tiny_vit.pth"));
        ReadFails(Write("truncated.pth", whole[..(whole.Length / 2)]), "zip");
    }

    [TestMethod]
    public void PthWithAMissingStorageIsRefusedNamingIt()
    {
        string path = Path.Combine(CheckpointFiles.TempDirectory(), "missing_storage.pth");
        File.Copy(CheckpointFiles.Fixture("tiny_vit.pth"), path);
        using (var zip = ZipFile.Open(path, ZipArchiveMode.Update)) zip.GetEntry("tiny_vit/data/3")!.Delete();
        var error = ReadFails(path, "missing");
        Assert.AreEqual("tiny_vit/data/3", error.Key);
    }

    [TestMethod]
    public void TruncatedNpzIsRefused()
    {
        byte[] whole = File.ReadAllBytes(CheckpointFiles.Fixture("tiny_vit_google.npz"));
        ReadFails(Write("truncated.npz", whole[..(whole.Length - 5000)]), "zip");
    }

    [TestMethod]
    public void AnNpzBombIsRefusedBeforeAnythingIsInflated()
    {
        // 1.5 GiB of zeros in one array deflate to about 1.5 MB: the archive declares 1,000x its size.
        string path = Path.Combine(CheckpointFiles.TempDirectory(), "bomb.npz");
        long count = 3L << 28;                                  // float16: 1.5 GiB
        using (var zip = ZipFile.Open(path, ZipArchiveMode.Create))
        {
            string header = $"{{'descr': '<f2', 'fortran_order': False, 'shape': ({count},), }}";
            header = header.PadRight(128 - 10 - 1) + "\n";
            using var stream = zip.CreateEntry("zeros.npy", CompressionLevel.SmallestSize).Open();
            stream.Write([0x93, .. "NUMPY"u8, 1, 0, (byte)header.Length, 0]);
            stream.Write(Encoding.ASCII.GetBytes(header));
            var block = new byte[1 << 20];
            for (long written = 0; written < 2 * count; written += block.Length) stream.Write(block);
        }
        Assert.IsLessThan(8L << 20, new FileInfo(path).Length);
        long before = GC.GetTotalAllocatedBytes(precise: true);
        var error = ReadFails(path, "zip bomb", "1,610,612,864 bytes");
        Assert.IsLessThan(64L << 20, GC.GetTotalAllocatedBytes(precise: true) - before, "nothing was inflated");
        Assert.IsNull(error.Key);
    }

    [TestMethod]
    public void ASafetensorsHeaderNamingATensorTwiceIsRefusedByName()
    {
        string json = "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
        byte[] header = Encoding.UTF8.GetBytes(json);
        var error = ReadFails(Write("twice.safetensors", [.. BitConverter.GetBytes((long)header.Length), .. header, 0, 0, 0, 0]), "names this tensor twice");
        Assert.AreEqual("w", error.Key);
    }

    [TestMethod]
    public void NpzObjectArrayIsRefused()
    {
        string path = Path.Combine(CheckpointFiles.TempDirectory(), "objects.npz");
        using (var zip = ZipFile.Open(path, ZipArchiveMode.Create))
        {
            string header = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }";
            header = header.PadRight(64 - 10 - 1) + "\n";
            using var stream = zip.CreateEntry("evil.npy").Open();
            stream.Write([0x93, .. "NUMPY"u8, 1, 0, (byte)header.Length, 0]);
            stream.Write(Encoding.ASCII.GetBytes(header));
            stream.Write(new byte[8]);
        }
        var error = ReadFails(path, "unsupported dtype", "found '|O'");
        Assert.AreEqual("evil", error.Key);
    }

    [TestMethod]
    public void TruncatedOnnxIsRefused()
    {
        string source = Path.Combine(AppContext.BaseDirectory, "DnnImageModels", "ResNet18Onnx", "ResNet18.onnx");
        using var stream = File.OpenRead(source);
        var head = new byte[100_000];
        stream.ReadExactly(head);
        ReadFails(Write("cut.onnx", head), "corrupt ONNX", "truncated");
    }

    // ---- Files that parse but do not fit the model ----

    private static CheckpointException LoadFails(string path, string key, params string[] fragments)
    {
        var error = Assert.ThrowsExactly<CheckpointException>(() => PretrainedBackbones.Load(path, loadOptions: new VisionTransformerLoadOptions(NumHeads: 2)));
        StringAssert.Contains(error.Message, Path.GetFileName(path));
        Assert.AreEqual(key, error.Key, error.Message);
        foreach (string fragment in fragments) StringAssert.Contains(error.Message, fragment);
        return error;
    }

    [TestMethod]
    public void MissingKeyIsRefused() =>
        LoadFails(CheckpointFiles.EditedCopy("tiny_vit.safetensors", t => t.Remove("blocks.1.norm2.bias")), "blocks.1.norm2.bias", "missing from the checkpoint");

    [TestMethod]
    public void UnexpectedKeyIsRefused() =>
        LoadFails(CheckpointFiles.EditedCopy("tiny_vit.safetensors", t => t["blocks.0.attn.extra"] = zeros(3)), "blocks.0.attn.extra", "unexpected");

    [TestMethod]
    public void ShapeMismatchIsRefused() =>
        LoadFails(CheckpointFiles.EditedCopy("tiny_vit.safetensors", t => t["norm.weight"] = ones(31)), "norm.weight", "expected [32], found [31]");

    [TestMethod]
    public void WrongDTypeIsRefused() =>
        LoadFails(CheckpointFiles.EditedCopy("tiny_vit.safetensors", t => t["norm.bias"] = zeros([32], ScalarType.Int64)), "norm.bias", "expected Float32, found Int64");

    [TestMethod]
    public void UnknownLayoutIsRefused()
    {
        string path = CheckpointFiles.EditedCopy("tiny_vit.safetensors", t =>
        {
            t.Clear();
            t["encoder.weight"] = zeros(2);
        });
        var error = Assert.ThrowsExactly<CheckpointException>(() => PretrainedBackbones.Load(path));
        StringAssert.Contains(error.Message, "unrecognised layout");
        StringAssert.Contains(error.Message, "encoder.weight");
    }

    [TestMethod]
    public void GoogleNpzWithAnUnknownEntryIsRefused()
    {
        string path = Path.Combine(CheckpointFiles.TempDirectory(), "extra.npz");
        File.Copy(CheckpointFiles.Fixture("tiny_vit_google.npz"), path);
        using (var zip = ZipFile.Open(path, ZipArchiveMode.Update))
        {
            using var source = zip.GetEntry("cls.npy")!.Open();
            var bytes = new MemoryStream();
            source.CopyTo(bytes);
            source.Dispose();
            using var target = zip.CreateEntry("Transformer/extra_token.npy").Open();
            target.Write(bytes.ToArray());
        }
        LoadFails(path, "Transformer/extra_token", "unexpected key(s) for a Google ViT .npz checkpoint");
    }

    [TestMethod]
    public void AFailedLoadLeavesTheBackboneUnchanged()
    {
        var backbone = TinyModels.Create("vit", seed: 3);
        var before = backbone.state_dict().ToDictionary(p => p.Key, p => p.Value.clone());
        string path = CheckpointFiles.EditedCopy("tiny_vit.safetensors", t => t["blocks.1.mlp.fc2.weight"] = zeros(32, 127));
        var error = Assert.ThrowsExactly<CheckpointException>(() => backbone.LoadWeights(path));
        StringAssert.Contains(error.Message, "nothing was loaded");
        foreach (var (key, value) in backbone.state_dict())
            Assert.IsTrue(CheckpointFiles.Identical(value, before[key]), $"{key} changed by a failed load");
    }

    [TestMethod]
    [DataRow(float.NaN)]
    [DataRow(float.PositiveInfinity)]
    [DataRow(float.NegativeInfinity)]
    public void NonFiniteWeightsAreRefusedAtLoadNamingTheKey(float value) =>
        LoadFails(CheckpointFiles.EditedCopy("tiny_vit.safetensors", t =>
        {
            var qkv = t["blocks.0.attn.qkv.weight"].clone();
            qkv[3, 5] = value;
            t["blocks.0.attn.qkv.weight"] = qkv;
        }), "blocks.0.attn.qkv.weight", "non-finite values");

    [TestMethod]
    public void ANonStandardViTTrainsWhenItsHeadCountComesFromTheOptions()
    {
        // tiny_vit has width 32: the shapes do not give its 2 heads and the width / 64 rule does not hold.
        var mlContext = new MLContext(seed: 1);
        var data = TestData.Prepared(mlContext, TestData.Images(classes: 2, perClass: 2));
        var options = new RepAdapter.Classification.RepAdapterImageClassificationTrainer.Options
        {
            CheckpointPath = CheckpointFiles.Fixture("tiny_vit.safetensors"),
            Epochs = 1,
            BatchSize = 4,
            WarmupEpochs = 0,
        };
        var error = Assert.ThrowsExactly<CheckpointException>(() => mlContext.MulticlassClassification.Trainers.RepAdapter(options).Fit(data));
        StringAssert.Contains(error.Message, "pass VisionTransformerLoadOptions(NumHeads: n)");
        options.BackboneLoadOptions = new VisionTransformerLoadOptions(NumHeads: 2);
        var model = mlContext.MulticlassClassification.Trainers.RepAdapter(options).Fit(data);
        Assert.AreEqual(2, model.NumberOfClasses);
    }
}
