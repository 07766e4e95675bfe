using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Training;

/// <summary>
/// Images already resized to the model's input size, kept as bytes ([N, 3, S, S] uint8, in the backbone's channel
/// order) with their targets: a class index per image ([N] int64, 0-based) or per pixel ([N, S, S] int64, with the
/// task's ignore value where unlabelled). Bytes keep a VTAB-1k sized set at 224 px near 150 MB.
/// </summary>
public sealed class LabeledImages : IDisposable
{
    public LabeledImages(Tensor pixels, Tensor labels)
    {
        if (pixels.dtype != ScalarType.Byte || pixels.dim() != 4 || pixels.shape[1] != 3)
            throw new ArgumentException($"Pixels must be uint8 [N, 3, S, S], got {pixels.dtype} [{string.Join(", ", pixels.shape)}].");
        bool perImage = labels.dim() == 1, perPixel = labels.dim() == 3 && labels.shape[1] == pixels.shape[2] && labels.shape[2] == pixels.shape[3];
        if (labels.dtype != ScalarType.Int64 || !(perImage || perPixel) || labels.shape[0] != pixels.shape[0])
            throw new ArgumentException(
                $"Labels must be int64 [{pixels.shape[0]}] or [{pixels.shape[0]}, {pixels.shape[2]}, {pixels.shape[3]}], got {labels.dtype} [{string.Join(", ", labels.shape)}].");
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
    /// is held out (at least one row of a class with two or more rows). Per-pixel labels are split at random.
    /// </summary>
    public (LabeledImages train, LabeledImages holdout) SplitStratified(double fraction, int seed)
    {
        var random = new Random(seed);
        long[] labels = Labels.dim() == 1 ? Labels.data<long>().ToArray() : new long[Count];
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
