using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Formats;

/// <summary>Container formats that <see cref="CheckpointReader"/> recognises from a file's content.</summary>
public enum CheckpointFormat
{
    /// <summary>Hugging Face safetensors: 8-byte header length, JSON header, raw little-endian data.</summary>
    SafeTensors,
    /// <summary>NumPy .npz: a zip of .npy arrays (Google's original ViT checkpoints).</summary>
    NumpyNpz,
    /// <summary>PyTorch torch.save zip (.pth/.pt/.bin): a pickled state dict plus one file per storage.</summary>
    PyTorchZip,
    /// <summary>ONNX model protobuf: graph initializers as tensors, plus the graph itself.</summary>
    Onnx,
}

/// <summary>
/// The tensors of one checkpoint file under their names in the file, in file order, as stored (dtype included),
/// on the CPU. Disposing it disposes the tensors.
/// </summary>
public sealed class TensorCheckpoint : IDisposable
{
    private readonly OrderedDictionary<string, Tensor> _tensors;

    internal TensorCheckpoint(string path, CheckpointFormat format, OrderedDictionary<string, Tensor> tensors,
        IReadOnlyDictionary<string, string>? metadata = null, OnnxGraph? graph = null)
    {
        Path = path;
        Format = format;
        _tensors = tensors;
        Metadata = metadata ?? new Dictionary<string, string>();
        Graph = graph;
    }

    /// <summary>The file the tensors were read from.</summary>
    public string Path { get; }

    /// <summary>The container format recognised from the file's content.</summary>
    public CheckpointFormat Format { get; }

    /// <summary>The tensors by their names in the file, in file order; owned by this checkpoint (disposed with it).</summary>
    public IReadOnlyDictionary<string, Tensor> Tensors => _tensors;

    /// <summary>String metadata (safetensors <c>__metadata__</c>); empty for the other formats.</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>The ONNX graph (nodes, inputs, outputs) for <see cref="CheckpointFormat.Onnx"/>; null otherwise.</summary>
    internal OnnxGraph? Graph { get; }

    /// <summary>The tensor named <paramref name="key"/>; a missing key is a <see cref="CheckpointException"/> naming the file.</summary>
    public Tensor this[string key] =>
        _tensors.TryGetValue(key, out var tensor) ? tensor : throw new CheckpointException(Path, key, "missing from the checkpoint.");

    /// <summary>Disposes every tensor and empties <see cref="Tensors"/>.</summary>
    public void Dispose()
    {
        foreach (var tensor in _tensors.Values) tensor.Dispose();
        _tensors.Clear();
    }
}

/// <summary>Shared formatting for error messages.</summary>
internal static class Describe
{
    public static string Shape(IEnumerable<long> shape) => $"[{string.Join(", ", shape)}]";

    public static string ShapeOf(Tensor tensor) => Shape(tensor.shape);

    public static string Keys(IEnumerable<string> keys, int max = 8)
    {
        var list = keys.ToList();
        string shown = string.Join(", ", list.Take(max));
        return list.Count > max ? $"{shown}, ... ({list.Count} in all)" : shown;
    }
}
