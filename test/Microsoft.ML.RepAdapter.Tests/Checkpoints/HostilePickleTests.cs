using System.IO.Compression;
using System.Text;
using Microsoft.ML.RepAdapter.Formats;
using Microsoft.ML.RepAdapter.Checkpoints;

namespace Microsoft.ML.RepAdapter.Tests.Checkpoints;

/// <summary>
/// Hand-written torch.save archives an attacker could send: pickles that nest without end or make a few bytes ask for
/// gigabytes. Each is a <see cref="CheckpointException"/>; those that once overflowed the stack run in a separate
/// process, so that a regression fails the test instead of killing the test run.
/// </summary>
[TestClass]
public class HostilePickleTests
{
    /// <summary>A torch.save-style zip (archive/data.pkl, archive/data/0, version, byteorder) around <paramref name="pickle"/>.</summary>
    private static string TorchArchive(string name, byte[] pickle, byte[]? storage = null)
    {
        string path = Path.Combine(CheckpointFiles.TempDirectory(), name);
        using var zip = ZipFile.Open(path, ZipArchiveMode.Create);
        void Add(string entry, byte[] bytes)
        {
            using var stream = zip.CreateEntry(entry, CompressionLevel.NoCompression).Open();
            stream.Write(bytes);
        }
        Add("archive/data.pkl", pickle);
        Add("archive/byteorder", "little"u8.ToArray());
        Add("archive/version", "3\n"u8.ToArray());
        if (storage is not null) Add("archive/data/0", storage);
        return path;
    }

    /// <summary>Pickle opcodes (protocol 2), enough for these files.</summary>
    private sealed class Pickle
    {
        private readonly List<byte> _bytes = [0x80, 0x02];
        public Pickle Op(char opcode) { _bytes.Add((byte)opcode); return this; }
        public Pickle Byte(byte value) { _bytes.Add(value); return this; }
        public Pickle Text(string value)
        {
            var utf8 = Encoding.UTF8.GetBytes(value);
            _bytes.Add((byte)'X');
            _bytes.AddRange(BitConverter.GetBytes(utf8.Length));
            _bytes.AddRange(utf8);
            return this;
        }
        public Pickle Int(int value) { _bytes.Add((byte)'J'); _bytes.AddRange(BitConverter.GetBytes(value)); return this; }
        public Pickle Global(string module, string name) { _bytes.Add((byte)'c'); _bytes.AddRange(Encoding.ASCII.GetBytes($"{module}\n{name}\n")); return this; }
        public byte[] Stop() => [.. _bytes, (byte)'.'];
    }

    [TestMethod]
    public void AListThatContainsItselfIsRefusedWithoutOverflowingTheStack()
    {
        // l = []; l.append(l)
        var pickle = new Pickle().Op(']').Op('q').Byte(0).Op('h').Byte(0).Op('a').Stop();
        string message = TestHost.ExpectException<CheckpointException>("read-checkpoint", TorchArchive("self_list.pth", pickle));
        StringAssert.Contains(message, "expected a pickled dict of tensors, found list");
    }

    [TestMethod]
    public void ADictThatContainsItselfIsRefusedWithoutOverflowingTheStack()
    {
        // d = {}; d["state_dict"] = d
        var pickle = new Pickle().Op('}').Op('q').Byte(0).Text("state_dict").Op('h').Byte(0).Op('s').Stop();
        string message = TestHost.ExpectException<CheckpointException>("read-checkpoint", TorchArchive("self_dict.pth", pickle));
        StringAssert.Contains(message, "expected a tensor under a string key, found dict");
    }

    [TestMethod]
    public void ListsNested300000DeepAreRefusedWithoutOverflowingTheStack()
    {
        const int depth = 300_000;
        var pickle = new Pickle();
        for (int i = 0; i < depth; i++) pickle.Op(']');
        for (int i = 1; i < depth; i++) pickle.Op('a');
        string message = TestHost.ExpectException<CheckpointException>("read-checkpoint", TorchArchive("deep.pth", pickle.Stop()));
        StringAssert.Contains(message, $"nested more than {1000} levels");
    }

    [TestMethod]
    [DataRow("lists", ']')]
    [DataRow("memo", (char)0x94)]
    [DataRow("marks", '(')]
    public void MillionsOfOneByteOpcodesAreRefusedBeforeTheyFillTheMemory(string what, char opcode)
    {
        // 64 MB of one-byte "empty list", "memoize" or "mark" opcodes would build 64 million lists, memo entries or marks
        // (gigabytes); the cap stops at a million of them, all kinds together.
        var pickle = new Pickle().Op(']');
        for (int i = 0; i < 3_000_000; i++) pickle.Op(opcode);
        string message = TestHost.ExpectException<CheckpointException>("read-checkpoint", TorchArchive($"many_{what}.pth", pickle.Stop()));
        StringAssert.Contains(message, "more than 1000000 values, memo entries and marks");
    }

    [TestMethod]
    public void AStrideZeroViewLargerThanItsStorageIsRefusedBeforeAllocating()
    {
        // {"w": _rebuild_tensor_v2(storage of 1 float, offset 0, size (400000000,), stride (0,), False, OrderedDict())}:
        // 1.6 GB from a file of a few hundred bytes if materialised.
        var pickle = new Pickle().Op('}').Op('(').Text("w")
            .Global("torch._utils", "_rebuild_tensor_v2").Op('(')
            .Op('(').Text("storage").Global("torch", "FloatStorage").Text("0").Text("cpu").Int(1).Op('t').Op('Q')
            .Int(0).Op('(').Int(400_000_000).Op('t').Op('(').Int(0).Op('t').Byte(0x89)
            .Global("collections", "OrderedDict").Op(')').Op('R')
            .Op('t').Op('R').Op('u').Stop();
        string path = TorchArchive("stride0.pth", pickle, storage: new byte[4]);
        Assert.IsLessThan(1024L, new FileInfo(path).Length);
        var error = Assert.ThrowsExactly<CheckpointException>(() => CheckpointReader.Read(path));
        StringAssert.Contains(error.Message, "400000000 elements but its storage only 1");
    }
}
