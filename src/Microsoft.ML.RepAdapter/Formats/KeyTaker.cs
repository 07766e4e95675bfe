using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Formats;

/// <summary>Hands out source tensors by name, remembering which were used.</summary>
internal sealed class KeyTaker(string path, IReadOnlyDictionary<string, Tensor> tensors)
{
    /// <summary>The tensor <paramref name="key"/> of <paramref name="tensors"/>, which must exist with <paramref name="rank"/> dimensions.</summary>
    public static Tensor Require(string path, IReadOnlyDictionary<string, Tensor> tensors, string key, int rank)
    {
        if (!tensors.TryGetValue(key, out var tensor)) throw new CheckpointException(path, key, "missing from the checkpoint.");
        if (tensor.dim() != rank) throw new CheckpointException(path, key, $"rank: expected a {rank}-D tensor, found {Describe.ShapeOf(tensor)}.");
        return tensor;
    }

    private readonly HashSet<string> _used = [];

    public string Path => path;

    public bool Has(string key) => tensors.ContainsKey(key);

    public Tensor Take(string key, int? rank = null)
    {
        if (!tensors.TryGetValue(key, out var tensor)) throw new CheckpointException(path, key, "missing from the checkpoint.");
        if (rank is int r && tensor.dim() != r)
            throw new CheckpointException(path, key, $"rank: expected a {r}-D tensor, found {Describe.ShapeOf(tensor)}.");
        _used.Add(key);
        return tensor;
    }

    /// <summary>Concatenates the transformed parts along dim 0 after checking they have equal shapes.</summary>
    public Tensor Concat(string[] parts, Func<Tensor, Tensor> transform, int rank)
    {
        var first = Take(parts[0], rank);
        foreach (string part in parts.Skip(1))
        {
            var tensor = Take(part, rank);
            if (!tensor.shape.SequenceEqual(first.shape))
                throw new CheckpointException(path, part, $"shape: expected {Describe.ShapeOf(first)} like '{parts[0]}', found {Describe.ShapeOf(tensor)}.");
        }
        return cat(parts.Select(part => transform(tensors[part])).ToArray(), 0);
    }

    public void ThrowIfAnyUnused(string layout)
    {
        var unused = tensors.Keys.Where(k => !_used.Contains(k)).ToList();
        if (unused.Count > 0)
            throw new CheckpointException(path, unused[0], $"unexpected key(s) for a {layout} checkpoint: {Describe.Keys(unused)}.");
    }

    /// <summary>The number of consecutive blocks whose first key <paramref name="firstKeyOfBlock"/> names; at least one.</summary>
    public int CountBlocks(Func<int, string> firstKeyOfBlock)
    {
        int depth = 0;
        while (Has(firstKeyOfBlock(depth))) depth++;
        if (depth == 0) throw new CheckpointException(Path, firstKeyOfBlock(0), "missing: expected at least one block.");
        return depth;
    }
}
