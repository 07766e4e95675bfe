using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Training;

/// <summary>
/// A batch of examples: uint8 pixels [B, 3, S, S] (or stored inputs, such as a frozen prefix's outputs) and int64
/// targets, [B] (a class each) or [B, S, S] (a class per pixel).
/// </summary>
public sealed class ImageBatch(Tensor pixels, Tensor targets) : IDisposable
{
    /// <summary>The pixels, in the backbone's channel order, at its input size.</summary>
    public Tensor Pixels { get; } = pixels;

    /// <summary>The targets.</summary>
    public Tensor Targets { get; } = targets;

    /// <summary>Examples in the batch.</summary>
    public int Count => (int)Pixels.shape[0];

    /// <inheritdoc/>
    public void Dispose()
    {
        Pixels.Dispose();
        Targets.Dispose();
    }
}

/// <summary>
/// The examples a training run reads, each known by its row in the source data: held in memory, in a disk cache of
/// decoded pixels, or streamed from the source every epoch. Epochs are shuffled deterministically from (seed, epoch),
/// so a resumed run reads what an uninterrupted one would.
/// </summary>
public abstract class TrainingImages : IDisposable
{
    /// <summary>The source rows of the examples, in source order.</summary>
    public abstract IReadOnlyList<long> Rows { get; }

    /// <summary>Number of examples.</summary>
    public int Count => Rows.Count;

    /// <summary>
    /// The batches of epoch <paramref name="epoch"/> in its shuffled order; the last partial batch is dropped (the
    /// recipe's drop_last) unless it is the only one.
    /// </summary>
    public abstract IEnumerable<ImageBatch> Epoch(int epoch, int batchSize, int seed);

    /// <summary>Every example once, in source order (evaluation).</summary>
    public abstract IEnumerable<ImageBatch> InOrder(int batchSize);

    /// <summary>The examples whose source row satisfies <paramref name="keepRow"/>, sharing this set's storage.</summary>
    public abstract TrainingImages Subset(Func<long, bool> keepRow);

    /// <inheritdoc/>
    public virtual void Dispose() { }

    /// <summary>A permutation of <paramref name="count"/> examples that depends only on the seed and the epoch.</summary>
    public static int[] Shuffle(int count, int seed, int epoch)
    {
        var random = new Random(unchecked(seed * 7919 + epoch));
        var order = Enumerable.Range(0, count).ToArray();
        random.Shuffle(order);
        return order;
    }

    /// <summary>How many batches an epoch of <paramref name="count"/> examples has (drop_last, but never none).</summary>
    public static int BatchesPerEpoch(int count, int batchSize) => count >= batchSize ? count / batchSize : 1;

    /// <summary>
    /// About <paramref name="fraction"/> of the rows of each class (at least one of a class with two or more rows),
    /// chosen with <paramref name="seed"/>: a hold-out that leaves every class in the rest.
    /// </summary>
    public static HashSet<long> StratifiedHoldOut(IReadOnlyDictionary<long, long> classOfRow, double fraction, int seed)
    {
        var random = new Random(seed);
        var holdout = new HashSet<long>();
        foreach (var group in classOfRow.GroupBy(p => p.Value).OrderBy(g => g.Key))
        {
            var rows = group.Select(p => p.Key).Order().ToArray();
            random.Shuffle(rows);
            int held = rows.Length < 2 ? 0 : Math.Max(1, (int)Math.Round(rows.Length * fraction));
            holdout.UnionWith(rows.Take(held));
        }
        return holdout;
    }
}

/// <summary>
/// Examples held in memory: images as bytes ([N, 3, S, S] uint8, in the backbone's channel order), or any other stored
/// input such as a frozen prefix's outputs ([N, ...] float), with their targets (int64 [N], or [N, S, S] as int64 or as
/// uint8 class indices, handed out as int64). Bytes keep a VTAB-1k sized set at 224 px near 150 MB.
/// </summary>
public sealed class LabeledImages : TrainingImages
{
    private readonly long[] _rows;

    /// <summary>Examples from stacked <paramref name="pixels"/> and <paramref name="labels"/> (owned); <paramref name="rows"/> defaults to 0..N-1.</summary>
    public LabeledImages(Tensor pixels, Tensor labels, long[]? rows = null)
    {
        bool images = pixels.dtype == ScalarType.Byte && pixels.dim() == 4 && pixels.shape[1] == 3;
        if (pixels.dim() < 2 || pixels.dtype == ScalarType.Byte && !images)
            throw new ArgumentException($"Pixels must be uint8 [N, 3, S, S] (or stored float inputs [N, ...]), got {pixels.dtype} [{string.Join(", ", pixels.shape)}].");
        bool perImage = labels.dim() == 1, perPixel = images && labels.dim() == 3 && labels.shape[1] == pixels.shape[2] && labels.shape[2] == pixels.shape[3];
        bool typed = labels.dtype == ScalarType.Int64 || perPixel && labels.dtype == ScalarType.Byte;
        if (!typed || !(perImage || perPixel) || labels.shape[0] != pixels.shape[0])
            throw new ArgumentException(
                $"Labels must be int64 [{pixels.shape[0]}]{(images ? $" or [{pixels.shape[0]}, {pixels.shape[2]}, {pixels.shape[3]}]" : "")}, got {labels.dtype} [{string.Join(", ", labels.shape)}].");
        Pixels = pixels;
        Labels = labels;
        _rows = rows ?? [.. Enumerable.Range(0, (int)pixels.shape[0]).Select(i => (long)i)];
        if (_rows.Length != pixels.shape[0]) throw new ArgumentException($"{_rows.Length} row ids for {pixels.shape[0]} examples.");
    }

    /// <summary>The pixels [N, 3, S, S], or the stored inputs [N, ...].</summary>
    public Tensor Pixels { get; }

    /// <summary>The targets [N] or [N, S, S].</summary>
    public Tensor Labels { get; }

    /// <inheritdoc/>
    public override IReadOnlyList<long> Rows => _rows;

    /// <inheritdoc/>
    public override IEnumerable<ImageBatch> Epoch(int epoch, int batchSize, int seed)
    {
        var order = Shuffle(Count, seed, epoch);
        int size = Math.Min(batchSize, Count);
        for (int b = 0; b < BatchesPerEpoch(Count, batchSize); b++) yield return Gather(order[(b * size)..((b + 1) * size)]);
    }

    /// <inheritdoc/>
    public override IEnumerable<ImageBatch> InOrder(int batchSize)
    {
        for (int start = 0; start < Count; start += batchSize)
        {
            int length = Math.Min(batchSize, Count - start);
            yield return new ImageBatch(Pixels.narrow(0, start, length), Labels.narrow(0, start, length).to(ScalarType.Int64));
        }
    }

    private ImageBatch Gather(int[] indices)
    {
        using var index = tensor(indices.Select(i => (long)i).ToArray());
        using var labels = Labels.index_select(0, index);
        return new ImageBatch(Pixels.index_select(0, index), labels.to(ScalarType.Int64));
    }

    /// <inheritdoc/>
    public override TrainingImages Subset(Func<long, bool> keepRow)
    {
        var kept = Enumerable.Range(0, Count).Where(i => keepRow(_rows[i])).ToArray();
        using var index = tensor(kept.Select(i => (long)i).ToArray());
        return new LabeledImages(Pixels.index_select(0, index), Labels.index_select(0, index), [.. kept.Select(i => _rows[i])]);
    }

    /// <inheritdoc/>
    public override void Dispose()
    {
        Pixels.Dispose();
        Labels.Dispose();
    }
}
