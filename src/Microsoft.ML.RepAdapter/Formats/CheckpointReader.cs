using System.IO.Compression;
using System.Text;

namespace Microsoft.ML.RepAdapter.Formats;

/// <summary>
/// Reads a checkpoint file of any supported <see cref="CheckpointFormat"/>, recognised from its content (magic bytes,
/// zip entry names), never from its extension. Nothing in a file is executed: .pth pickles go through a restricted
/// unpickler that refuses every global except the tensor-rebuilding ones.
/// </summary>
public static class CheckpointReader
{
    /// <summary>Reads every tensor of the checkpoint at <paramref name="path"/> onto the CPU, as stored; dispose the result.</summary>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="CheckpointException">
    /// The file is empty, truncated or corrupt, of an unknown or refused format (a bare pickle, a Git LFS pointer), or
    /// holds something other than plain tensors; the message names the file and, where there is one, the key.
    /// </exception>
    public static TensorCheckpoint Read(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"Checkpoint file not found: {path}", path);
        using var stream = File.OpenRead(path);
        var prefix = new byte[16];
        int length = stream.ReadAtLeast(prefix, prefix.Length, throwOnEndOfStream: false);
        var head = prefix.AsSpan(0, length);
        if (length == 0) throw new CheckpointException(path, null, "the file is empty: expected a checkpoint.");

        if (head.StartsWith("PK"u8)) return ReadZip(path, stream);
        if (SafeTensorsReader.Sniff(head, stream.Length)) return SafeTensorsReader.Read(path);
        if (head.Length >= 2 && head[0] == 0x80 && head[1] is >= 2 and <= 5)
            throw new CheckpointException(path, null, "this is a bare pickle (torch.save before PyTorch 1.6, or pickle.dump): expected the zip format of torch.save. "
                + "Re-save it with a current PyTorch or convert it to safetensors; bare pickles are not read because they can run code.");
        if (head.StartsWith("version https://git-lfs"u8))
            throw new CheckpointException(path, null, "this is a Git LFS pointer file, not the checkpoint: fetch the real file (git lfs pull).");
        // A JSON header whose announced length runs past the end of the file: a truncated safetensors file.
        if (head.Length >= 9 && head[8] == (byte)'{') return SafeTensorsReader.Read(path);
        if (OnnxReader.Sniff(head)) return OnnxReader.Read(path);
        throw new CheckpointException(path, null,
            $"unknown checkpoint format: expected safetensors, NumPy .npz, a torch.save zip (.pth/.pt) or an ONNX model; the file starts with {Hex(head)}.");
    }

    private static TensorCheckpoint ReadZip(string path, Stream stream)
    {
        stream.Position = 0;
        ZipArchive archive;
        try
        {
            archive = new ZipArchive(stream, ZipArchiveMode.Read, leaveOpen: true);
        }
        catch (InvalidDataException e)
        {
            throw new CheckpointException(path, null, $"corrupt or truncated zip archive ({e.Message}).", e);
        }
        using (archive)
        {
            CheckExpansion(path, archive);
            try
            {
                if (PyTorchZipReader.IsTorchArchive(archive)) return PyTorchZipReader.Read(path, archive);
                if (archive.Entries.Count > 0 && archive.Entries.All(e => e.FullName.EndsWith(".npy", StringComparison.Ordinal)))
                    return NpzReader.Read(path, archive);
            }
            catch (InvalidDataException e)
            {
                throw new CheckpointException(path, null, $"corrupt zip archive ({e.Message}).", e);
            }
            throw new CheckpointException(path, null,
                $"zip archive with entries {Describe.Keys(archive.Entries.Select(e => e.FullName), 5)}: expected a torch.save archive (<folder>/data.pkl) or a NumPy .npz (only .npy entries).");
        }
    }

    /// <summary>
    /// How many times its compressed size a zip checkpoint's entries may declare: torch.save stores entries uncompressed
    /// and trained float weights barely compress (np.savez_compressed gains about 10 %), so an archive that claims far
    /// more is a zip bomb, refused before anything is inflated.
    /// </summary>
    internal const int MaxExpansion = 20;

    /// <summary>Below this many declared bytes in all, no expansion is refused (small arrays of zeros compress well).</summary>
    private const long ExpansionFloor = 64L << 20;

    private static void CheckExpansion(string path, ZipArchive archive)
    {
        long declared = archive.Entries.Sum(e => e.Length), compressed = archive.Entries.Sum(e => e.CompressedLength);
        if (declared > ExpansionFloor && declared > MaxExpansion * Math.Max(compressed, 1))
        {
            throw new CheckpointException(path, null, $"its entries declare {declared:N0} bytes from {compressed:N0} compressed, more than "
                + $"{MaxExpansion}x: weights do not compress that well, so the archive is refused unread as a zip bomb.");
        }
    }

    private static string Hex(ReadOnlySpan<byte> bytes)
    {
        var text = new StringBuilder();
        foreach (byte b in bytes[..Math.Min(8, bytes.Length)]) text.Append($"{b:x2} ");
        return text.ToString().TrimEnd();
    }
}
