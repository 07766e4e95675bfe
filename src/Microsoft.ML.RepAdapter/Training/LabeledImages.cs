using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Training;

/// <summary>
/// Images already resized to the model's input size, kept as bytes ([N, 3, S, S] uint8, in the backbone's channel
/// order) with their class indices ([N] int64, 0-based). Bytes keep a VTAB-1k sized set at 224 px near 150 MB.
/// </summary>
public sealed class LabeledImages : IDisposable
{
    public LabeledImages(Tensor pixels, Tensor labels)
    {
        if (pixels.dtype != ScalarType.Byte || pixels.dim() != 4 || pixels.shape[1] != 3)
            throw new ArgumentException($"Pixels must be uint8 [N, 3, S, S], got {pixels.dtype} [{string.Join(", ", pixels.shape)}].");
        if (labels.dtype != ScalarType.Int64 || labels.dim() != 1 || labels.shape[0] != pixels.shape[0])
            throw new ArgumentException($"Labels must be int64 [{pixels.shape[0]}], got {labels.dtype} [{string.Join(", ", labels.shape)}].");
        Pixels = pixels;
        Labels = labels;
    }

    public Tensor Pixels { get; }
    public Tensor Labels { get; }
    public int Count => (int)Pixels.shape[0];

    /// <summary>The rows at <paramref name="indices"/>, as a new set.</summary>
    public LabeledImages Select(long[] indices)
    {
        using var index = tensor(indices);
        return new LabeledImages(Pixels.index_select(0, index), Labels.index_select(0, index));
    }

    /// <summary>
    /// A seeded split that keeps every class in the training part: about <paramref name="fraction"/> of each class
    /// is held out (at least one row of a class with two or more rows).
    /// </summary>
    public (LabeledImages train, LabeledImages holdout) SplitStratified(double fraction, int seed)
    {
        var random = new Random(seed);
        long[] labels = Labels.data<long>().ToArray();
        var train = new List<long>();
        var holdout = new List<long>();
        foreach (var group in Enumerable.Range(0, labels.Length).GroupBy(i => labels[i]))
        {
            var rows = group.OrderBy(_ => random.Next()).ToArray();
            int held = rows.Length < 2 ? 0 : Math.Max(1, (int)Math.Round(rows.Length * fraction));
            holdout.AddRange(rows.Take(held).Select(i => (long)i));
            train.AddRange(rows.Skip(held).Select(i => (long)i));
        }
        train.Sort();
        holdout.Sort();
        return (Select([.. train]), Select([.. holdout]));
    }

    public void Dispose()
    {
        Pixels.Dispose();
        Labels.Dispose();
    }
}
