using System.Text;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Checkpoints;
using Microsoft.ML.RepAdapter.Formats;
using Microsoft.ML.RepAdapter.Torch;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.MLNet;

/// <summary>
/// What training changed in a task network, apart from its frozen backbone: the adapters before merging, the head (or a
/// segmentation decoder) and any trained backbone bias. Saved instead of the merged weights it is a task model of
/// kilobytes; loaded, it is applied to the backbone rebuilt from its <see cref="BackboneSource"/> and merged, which gives
/// the merged network the trainer returned.
/// </summary>
internal sealed class TaskModel : IDisposable
{
    private TaskModel(OrderedDictionary<string, Tensor> tensors) => Tensors = tensors;

    /// <summary>The tensors by their key in the task network's state dict (CPU copies).</summary>
    public OrderedDictionary<string, Tensor> Tensors { get; }

    /// <summary>
    /// The tensors of the unmerged <paramref name="network"/> that its backbone's source does not give: every entry except
    /// the backbone's frozen parameters and its buffers. Null for a full fine-tune, which changes all of them.
    /// </summary>
    public static TaskModel? Capture(nn.Module network, TrainableParameters trained)
    {
        if (trained == TrainableParameters.All) return null;
        var (prefix, backbone) = FindBackbone(network);
        var frozen = new HashSet<string>(backbone.named_parameters().Where(p => !p.parameter.requires_grad).Select(p => prefix + p.name)
            .Concat(backbone.named_buffers().Select(b => prefix + b.name)));
        var tensors = new OrderedDictionary<string, Tensor>();
        foreach (var (key, tensor) in network.state_dict().Where(p => !frozen.Contains(p.Key)))
        {
            using var scope = NewDisposeScope();
            tensors.Add(key, tensor.detach().cpu().clone().MoveToOuterDisposeScope());
        }
        foreach (var tensor in tensors.Values) tensor.DetachFromDisposeScope();
        return new TaskModel(tensors);
    }

    /// <summary>
    /// <paramref name="network"/> (built plain from its description) given the backbone weights of <paramref name="source"/>
    /// (fingerprint checked), the adapters of <paramref name="adapters"/> with these tensors, then merged. The weights that
    /// merging left as the backbone's are then shared with every other task model on the same backbone
    /// (<see cref="SharedBackboneWeights"/>) for as long as this task model lives.
    /// </summary>
    public void Rebuild(nn.Module network, BackboneSource source, AdapterConfig? adapters)
    {
        using var scope = NewDisposeScope();
        var (prefix, backbone) = FindBackbone(network);
        var fromBackbone = new HashSet<string>();
        var lease = SharedBackboneWeights.Acquire(source);
        try
        {
            using (no_grad())
            {
                var target = backbone.state_dict();
                foreach (var (key, tensor) in lease.Tensors)
                {
                    if (!target.TryGetValue(key, out var into) || !into.shape.SequenceEqual(tensor.shape))
                        throw new InvalidDataException($"The backbone {source.Describe()} does not fit the task model's network at '{key}'.");
                    into.copy_(tensor);
                    fromBackbone.Add(prefix + key);
                }
            }
            if (adapters is not null) ((IAdaptableModel)network).AttachAdapters(adapters);
            using (no_grad())
            {
                var state = network.state_dict();
                // Everything the backbone did not give must come from the task model: adapters, head, decoder and its statistics.
                var missing = state.Keys.Where(k => !fromBackbone.Contains(k) && !Tensors.ContainsKey(k)).ToList();
                if (missing.Count > 0) throw new InvalidDataException($"The task model has no values for {Describe.Keys(missing)}.");
                foreach (var (key, tensor) in Tensors)
                {
                    if (!state.TryGetValue(key, out var into) || !into.shape.SequenceEqual(tensor.shape) || into.dtype != tensor.dtype)
                        throw new InvalidDataException($"The task model's tensor '{key}' {Describe.ShapeOf(tensor)} does not fit its network.");
                    into.copy_(tensor);
                }
            }
            network.MergeAdapters();
            SharedBytes = lease.Share(network.state_dict(), prefix);
        }
        catch
        {
            lease.Dispose();
            throw;
        }
        _lease?.Dispose();
        _lease = lease;
    }

    private SharedBackboneWeights.Lease? _lease;

    /// <summary>Bytes of the rebuilt network's weights shared with other task models on the same backbone (0 before <see cref="Rebuild"/>).</summary>
    public long SharedBytes { get; private set; }

    /// <summary>The backbone inside <paramref name="network"/> (the network itself for classification) and its key prefix.</summary>
    private static (string Prefix, Backbone Backbone) FindBackbone(nn.Module network) =>
        network is Backbone itself ? ("", itself)
        : network.named_modules().Where(m => m.module is Backbone).Select(m => ($"{m.name}.", (Backbone)m.module)).FirstOrDefault() is var (prefix, backbone) && backbone is not null
            ? (prefix, backbone)
            : throw new InvalidOperationException($"{network.GetType().Name} holds no backbone.");

    // The stream: a count, then per tensor its key, dtype, rank, shape and little-endian bytes.
    private const int MaxRank = 8;
    private const int MaxTensors = 1 << 20;

    /// <summary>Writes the tensors to <paramref name="writer"/>.</summary>
    public void Write(BinaryWriter writer)
    {
        writer.Write(Tensors.Count);
        foreach (var (key, tensor) in Tensors)
        {
            writer.Write(key);
            writer.Write((int)tensor.dtype);
            writer.Write(tensor.dim());
            foreach (long size in tensor.shape) writer.Write(size);
            using var contiguous = tensor.contiguous();
            writer.Write(contiguous.bytes);
        }
    }

    /// <summary>
    /// Reads what <see cref="Write"/> wrote, checking every count, dtype and shape against what is left of the stream before
    /// allocating; a damaged stream is an <see cref="InvalidDataException"/> naming <paramref name="entry"/>.
    /// </summary>
    public static TaskModel Read(Stream stream, string entry)
    {
        var tensors = new OrderedDictionary<string, Tensor>();
        try
        {
            using var reader = new BinaryReader(stream, Encoding.UTF8, leaveOpen: true);
            int count = reader.ReadInt32();
            Check(count is >= 0 and <= MaxTensors, $"{count} tensors");
            for (int i = 0; i < count; i++)
            {
                string key = reader.ReadString();
                var dtype = (ScalarType)reader.ReadInt32();
                Check(dtype is ScalarType.Float32 or ScalarType.Float64 or ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Int64,
                    $"tensor '{key}' of type {dtype}");
                long rank = reader.ReadInt64();
                Check(rank is >= 0 and <= MaxRank, $"tensor '{key}' of rank {rank}");
                var shape = new long[rank];
                long elements = 1;
                for (int d = 0; d < rank; d++)
                {
                    shape[d] = reader.ReadInt64();
                    Check(shape[d] >= 0 && (shape[d] == 0 || elements <= long.MaxValue / 8 / shape[d]), $"tensor '{key}' of shape [{string.Join(", ", shape[..(d + 1)])}]");
                    elements *= shape[d];
                }
                using var probe = empty(0, dtype);
                long bytes = elements * probe.ElementSize;
                Check(bytes <= stream.Length - stream.Position, $"tensor '{key}' of {bytes} bytes, more than the stream has left");
                Check(!tensors.ContainsKey(key), $"tensor '{key}' twice");
                var tensor = ModuleScopes.Unscoped(() => empty(shape, dtype));
                tensors.Add(key, tensor);
                tensor.bytes = reader.ReadBytes((int)bytes);
            }
            Check(stream.Position == stream.Length, "bytes after the last tensor");
            return new TaskModel(tensors);
        }
        catch (Exception e) when (e is EndOfStreamException or IOException or InvalidDataException)
        {
            foreach (var tensor in tensors.Values) tensor.Dispose();
            throw new InvalidDataException($"The model's '{entry}' task-model stream could not be read ({e.Message}): the file was damaged or altered.");
        }

        static void Check(bool ok, string what)
        {
            if (!ok) throw new InvalidDataException($"unexpected {what}");
        }
    }

    /// <summary>Frees the tensors and ends the hold on the shared backbone weights.</summary>
    public void Dispose()
    {
        foreach (var tensor in Tensors.Values) tensor.Dispose();
        _lease?.Dispose();
        _lease = null;
    }
}
