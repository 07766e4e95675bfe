using System.Threading.Channels;
using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Training;
using Microsoft.ML.Runtime;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.MLNet;

/// <summary>Where decoded training images are kept between epochs.</summary>
public enum ImageCache
{
    /// <summary>In memory when the decoded images fit in <c>CacheMemoryLimitMegabytes</c>, else on disk.</summary>
    Auto,
    /// <summary>In memory (fastest; needs 3 x S x S bytes per image).</summary>
    Memory,
    /// <summary>In a temporary file of decoded pixels, read back in each epoch's shuffled order; memory stays bounded.</summary>
    Disk,
    /// <summary>Nowhere: every epoch decodes the images again from the data, shuffled through a bounded buffer.</summary>
    None,
}

/// <summary>One decoded example: its source row, input pixels [3, S, S] and target.</summary>
internal sealed record Example(long Row, Tensor Pixels, Tensor Target) : IDisposable
{
    public void Dispose()
    {
        Pixels.Dispose();
        Target.Dispose();
    }
}

/// <summary>
/// Reads examples from an IDataView in row order, decoding on background threads: one thread walks the cursor and takes
/// each row's image and target cheaply (the getters are not thread-safe), up to <see cref="Workers"/> threads decode and
/// resize them, and the examples come out in row order through bounded queues, so that memory holds only the rows in
/// flight, whatever the data's size.
/// </summary>
internal sealed class RowStream(IHost host, IDataView data, ImageTask task, ImagePreprocessor preprocessor, string what, int workers)
{
    /// <summary>Rows decoded at once at most.</summary>
    public int Workers { get; } = Math.Max(1, workers);

    public IEnumerable<Example> Read(Func<long, bool> keepRow)
    {
        using var cancel = new CancellationTokenSource();
        // Each row's decoding starts as soon as it is fetched, but at most Workers at a time; their order is the rows'.
        var pending = Channel.CreateBounded<Task<Example>>(new BoundedChannelOptions(2 * Workers) { SingleReader = true, SingleWriter = true });
        using var slots = new SemaphoreSlim(Workers);
        var producer = Task.Run(() => Produce(pending.Writer, slots, keepRow, cancel.Token));
        try
        {
            while (true)
            {
                bool more;
                try
                {
                    more = pending.Reader.WaitToReadAsync().AsTask().GetAwaiter().GetResult();
                }
                catch (ChannelClosedException)
                {
                    more = false;
                }
                if (!more) break;
                while (pending.Reader.TryRead(out var decoding)) yield return decoding.GetAwaiter().GetResult();
            }
            // The producer's own error (a row that cannot be read, a cancellation), as it was thrown.
            producer.GetAwaiter().GetResult();
        }
        finally
        {
            cancel.Cancel();
            try { producer.Wait(); } catch (AggregateException) { }
            // Free whatever was decoded but not consumed (an error, or a reader that stopped early).
            while (pending.Reader.TryRead(out var left))
            {
                try { left.GetAwaiter().GetResult().Dispose(); } catch (Exception) { }
            }
        }
    }

    private void Produce(ChannelWriter<Task<Example>> pending, SemaphoreSlim slots, Func<long, bool> keepRow, CancellationToken cancel)
    {
        Task<Example>? unwritten = null;
        try
        {
            var textColumns = data.Schema.Where(c => c.Type is TextDataViewType);
            using var cursor = data.GetRowCursor([data.Schema[task.ImageColumnName], .. task.TargetColumns(data.Schema), .. textColumns]);
            var fetchImage = ImageColumn.CreateFetcher(cursor, task.ImageColumnName);
            var fetchTarget = task.CreateTargetFetcher(cursor, what);
            while (cursor.MoveNext())
            {
                host.CheckAlive();
                long row = cursor.Position;
                if (!keepRow(row)) continue;
                var image = fetchImage();
                var target = fetchTarget();
                slots.Wait(cancel);
                unwritten = Task.Run(() =>
                {
                    try
                    {
                        var read = ImageColumn.Decode(image, preprocessor.Read, preprocessor.MaxPixels);
                        return new Example(row, read.Pixels, task.ToTarget(target, row, read, preprocessor, what));
                    }
                    finally
                    {
                        slots.Release();
                    }
                });
                pending.WriteAsync(unwritten, cancel).AsTask().GetAwaiter().GetResult();
                unwritten = null;
            }
            pending.Complete();
        }
        catch (OperationCanceledException) when (cancel.IsCancellationRequested)
        {
            // The reader stopped early: nothing to report.
            pending.Complete();
            unwritten?.ContinueWith(t => { if (t.IsCompletedSuccessfully) t.Result.Dispose(); }, TaskScheduler.Default);
        }
        catch (Exception e)
        {
            pending.Complete(e);
            unwritten?.ContinueWith(t => { if (t.IsCompletedSuccessfully) t.Result.Dispose(); }, TaskScheduler.Default);
            throw;
        }
    }
}

/// <summary>Builds the <see cref="TrainingImages"/> of an IDataView in the chosen <see cref="ImageCache"/>.</summary>
internal static class TrainingData
{
    /// <summary>Reads <paramref name="data"/>'s rows that <paramref name="keepRow"/> keeps, cached as <paramref name="cache"/> says.</summary>
    public static TrainingImages Create(IHost host, IDataView data, ImageTask task, ImagePreprocessor preprocessor, string what,
        Func<long, bool> keepRow, IReadOnlyCollection<long> rows, ImageCache cache, long memoryLimitBytes, int workers, int shuffleBuffer)
    {
        var stream = new RowStream(host, data, task, preprocessor, what, workers);
        long bytes = rows.Count * RecordBytes(preprocessor);
        if (cache == ImageCache.Auto) cache = bytes <= memoryLimitBytes ? ImageCache.Memory : ImageCache.Disk;
        return cache switch
        {
            ImageCache.Memory => InMemory(stream, keepRow, rows.Count, preprocessor.Spec.ImageSize),
            ImageCache.Disk => DiskCachedImages.Write(stream, keepRow, preprocessor.Spec.ImageSize),
            ImageCache.None => new StreamedImages(stream, keepRow, [.. rows.Order()], shuffleBuffer),
            _ => throw new ArgumentOutOfRangeException(nameof(cache), cache, null),
        };
    }

    /// <summary>Bytes of one decoded example: 3 x S x S pixels and up to S x S target bytes.</summary>
    public static long RecordBytes(ImagePreprocessor preprocessor) => 4L * preprocessor.Spec.ImageSize * preprocessor.Spec.ImageSize;

    /// <summary>
    /// Every example in one uint8 tensor, filled in place as examples are decoded (never a list of tensors stacked at the
    /// end, which would hold the data twice).
    /// </summary>
    private static LabeledImages InMemory(RowStream stream, Func<long, bool> keepRow, int expected, int size)
    {
        var pixels = empty([expected, 3, size, size], ScalarType.Byte);
        Tensor? targets = null;
        var rows = new List<long>(expected);
        try
        {
            foreach (var example in stream.Read(keepRow))
            {
                using (example)
                {
                    if (rows.Count == expected) throw new InvalidOperationException($"The data yielded more than the {expected} rows it held when first read.");
                    // A class per pixel fits a byte (the ignore value included): a quarter of the memory of int64.
                    targets ??= example.Target.dim() == 2 ? empty([expected, size, size], ScalarType.Byte) : empty([expected], ScalarType.Int64);
                    using (no_grad())
                    {
                        using var pixelSlot = pixels[rows.Count];
                        pixelSlot.copy_(example.Pixels);
                        using var targetSlot = targets[rows.Count];
                        targetSlot.copy_(example.Target);
                    }
                    rows.Add(example.Row);
                }
            }
            targets ??= empty([expected], ScalarType.Int64);
            if (rows.Count == expected) return new LabeledImages(pixels, targets, [.. rows]);
            // Fewer rows than counted (the data changed between passes): keep what was read.
            using (pixels)
            using (targets)
            {
                return new LabeledImages(pixels.narrow(0, 0, rows.Count).clone(), targets.narrow(0, 0, rows.Count).clone(), [.. rows]);
            }
        }
        catch
        {
            pixels.Dispose();
            targets?.Dispose();
            throw;
        }
    }

    /// <summary>Batches of examples from a sequence (stacked, then freed; a batch cut short is freed too).</summary>
    public static IEnumerable<ImageBatch> Batch(IEnumerable<Example> examples, int batchSize)
    {
        var batch = new List<Example>(batchSize);
        try
        {
            foreach (var example in examples)
            {
                batch.Add(example);
                if (batch.Count == batchSize) yield return Stack(batch);
            }
            if (batch.Count > 0) yield return Stack(batch);
        }
        finally
        {
            foreach (var example in batch) example.Dispose();
        }
    }

    private static ImageBatch Stack(List<Example> examples)
    {
        try
        {
            return new ImageBatch(stack(examples.Select(e => e.Pixels)), stack(examples.Select(e => e.Target)));
        }
        finally
        {
            foreach (var example in examples) example.Dispose();
            examples.Clear();
        }
    }
}

/// <summary>
/// Decoded examples in a temporary file of fixed-size records (uint8 pixels, then the target as int64 or a uint8 mask),
/// read back in each epoch's shuffled order: bounded memory, and no decoding after the first pass.
/// </summary>
internal sealed class DiskCachedImages : TrainingImages
{
    private readonly string _path;
    private readonly Microsoft.Win32.SafeHandles.SafeFileHandle _file;
    private readonly long[] _rows;
    private readonly int[] _records;
    private readonly int _size;
    private readonly bool _perPixel;
    private readonly DiskCachedImages? _owner;

    private DiskCachedImages(string path, Microsoft.Win32.SafeHandles.SafeFileHandle file, long[] rows, int[] records, int size, bool perPixel, DiskCachedImages? owner)
    {
        (_path, _file, _rows, _records, _size, _perPixel, _owner) = (path, file, rows, records, size, perPixel, owner);
    }

    private int PixelBytes => 3 * _size * _size;
    private int TargetBytes => _perPixel ? _size * _size : sizeof(long);
    private long RecordBytes => PixelBytes + TargetBytes;

    public static DiskCachedImages Write(RowStream stream, Func<long, bool> keepRow, int size)
    {
        string path = Path.Combine(Path.GetTempPath(), $"repadapter-cache-{Guid.NewGuid():N}.bin");
        var file = File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, FileOptions.DeleteOnClose);
        // On Unix the open handle keeps an unlinked file readable, so a process killed during Fit leaves nothing behind;
        // Windows cannot unlink an open file, and deletes it on close instead.
        if (!OperatingSystem.IsWindows()) File.Delete(path);
        try
        {
            var rows = new List<long>();
            bool? perPixel = null;
            long offset = 0;
            foreach (var example in stream.Read(keepRow))
            {
                using (example)
                {
                    perPixel ??= example.Target.dim() == 2;
                    var pixels = example.Pixels.contiguous().bytes;
                    RandomAccess.Write(file, pixels, offset);
                    offset += pixels.Length;
                    using var target = perPixel.Value ? example.Target.to(ScalarType.Byte).contiguous() : example.Target.contiguous();
                    var targetBytes = target.bytes;
                    RandomAccess.Write(file, targetBytes, offset);
                    offset += targetBytes.Length;
                    rows.Add(example.Row);
                }
            }
            return new DiskCachedImages(path, file, [.. rows], [.. Enumerable.Range(0, rows.Count)], size, perPixel ?? false, null);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    public override IReadOnlyList<long> Rows => _rows;

    public override IEnumerable<ImageBatch> Epoch(int epoch, int batchSize, int seed)
    {
        var order = Shuffle(Count, seed, epoch);
        int size = Math.Min(batchSize, Count);
        for (int b = 0; b < BatchesPerEpoch(Count, batchSize); b++) yield return ReadBatch(order[(b * size)..((b + 1) * size)]);
    }

    public override IEnumerable<ImageBatch> InOrder(int batchSize)
    {
        for (int start = 0; start < Count; start += batchSize)
            yield return ReadBatch([.. Enumerable.Range(start, Math.Min(batchSize, Count - start))]);
    }

    private ImageBatch ReadBatch(int[] indices)
    {
        var pixels = new byte[indices.Length * PixelBytes];
        var targets = new byte[indices.Length * TargetBytes];
        for (int i = 0; i < indices.Length; i++)
        {
            long offset = _records[indices[i]] * RecordBytes;
            RandomAccess.Read(_file, pixels.AsSpan(i * PixelBytes, PixelBytes), offset);
            RandomAccess.Read(_file, targets.AsSpan(i * TargetBytes, TargetBytes), offset + PixelBytes);
        }
        using var scope = NewDisposeScope();
        var pixelTensor = tensor(pixels, ScalarType.Byte).view(indices.Length, 3, _size, _size).clone();
        var targetTensor = _perPixel
            ? tensor(targets, ScalarType.Byte).view(indices.Length, _size, _size).to(ScalarType.Int64)
            : tensor(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, long>(targets).ToArray());
        return new ImageBatch(pixelTensor.MoveToOuterDisposeScope(), targetTensor.MoveToOuterDisposeScope());
    }

    public override TrainingImages Subset(Func<long, bool> keepRow)
    {
        var kept = Enumerable.Range(0, Count).Where(i => keepRow(_rows[i])).ToArray();
        return new DiskCachedImages(_path, _file, [.. kept.Select(i => _rows[i])], [.. kept.Select(i => _records[i])], _size, _perPixel, _owner ?? this);
    }

    /// <summary>Closing the file (opened delete-on-close) deletes it; subsets share their owner's file.</summary>
    public override void Dispose()
    {
        if (_owner is null) _file.Dispose();
    }
}

/// <summary>
/// Examples decoded again from the data every epoch: each epoch reads the rows in order and shuffles them through a
/// buffer of <c>shuffleBuffer</c> examples, seeded by (seed, epoch). Memory holds the buffer, whatever the data's size.
/// </summary>
internal sealed class StreamedImages(RowStream stream, Func<long, bool> keepRow, long[] rows, int shuffleBuffer) : TrainingImages
{
    public override IReadOnlyList<long> Rows => rows;

    public override IEnumerable<ImageBatch> Epoch(int epoch, int batchSize, int seed)
    {
        int batches = BatchesPerEpoch(Count, batchSize), size = Math.Min(batchSize, Count);
        return TrainingData.Batch(Shuffled(stream.Read(keepRow), new Random(unchecked(seed * 7919 + epoch))), size).Take(batches);
    }

    public override IEnumerable<ImageBatch> InOrder(int batchSize) => TrainingData.Batch(stream.Read(keepRow), batchSize);

    public override TrainingImages Subset(Func<long, bool> keepRow2)
    {
        var outer = keepRow;
        return new StreamedImages(stream, row => outer(row) && keepRow2(row), [.. rows.Where(keepRow2)], shuffleBuffer);
    }

    /// <summary>A buffered shuffle: fill the buffer, then emit a random element and refill its place; drain at the end.</summary>
    private IEnumerable<Example> Shuffled(IEnumerable<Example> examples, Random random)
    {
        var buffer = new List<Example>(shuffleBuffer);
        try
        {
            foreach (var example in examples)
            {
                if (buffer.Count < shuffleBuffer)
                {
                    buffer.Add(example);
                    continue;
                }
                int pick = random.Next(buffer.Count);
                yield return buffer[pick];
                buffer[pick] = example;
            }
            while (buffer.Count > 0)
            {
                int pick = random.Next(buffer.Count);
                var chosen = buffer[pick];
                buffer[pick] = buffer[^1];
                buffer.RemoveAt(buffer.Count - 1);
                yield return chosen;
            }
        }
        finally
        {
            // An epoch cut short (the last partial batch dropped, or an error) frees what it did not use.
            foreach (var left in buffer) left.Dispose();
        }
    }
}
