using Microsoft.ML.RepAdapter.Torch;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Checkpoints;

/// <summary>
/// The frozen weights of backbones (by <see cref="BackboneSource.Fingerprint"/>), each loaded once per process and shared
/// by every task model rebuilt from it while any of them is alive: a weight that merging left as it was (all but the
/// adapted projections) is then one tensor in memory however many task models use it, and a second task model on the
/// same backbone loads without reading or hashing the file again, as long as the file is unchanged (same length and
/// time of last write; otherwise it is read and checked as for the first). So a missing or replaced file is reported
/// as without sharing. The registry holds its weights weakly: task models that are never disposed (ML.NET's habit) do
/// not keep them alive once unreachable. Shared tensors are read-only by contract: scoring never writes weights, and
/// merging happens before sharing (<see cref="Lease.Share"/>).
/// </summary>
internal static class SharedBackboneWeights
{
    /// <summary>One backbone's weights, and the file state they were read from (null for built-in weights).</summary>
    internal sealed class Entry(Dictionary<string, Tensor> tensors, (string Path, long Length, DateTime Written)? stamp)
    {
        public Dictionary<string, Tensor> Tensors { get; } = tensors;

        public (string Path, long Length, DateTime Written)? Stamp { get; set; } = stamp;

        public int Leases;
    }

    private static readonly Dictionary<string, WeakReference<Entry>> Live = [];
    private static readonly object Gate = new();

    /// <summary>Whether the weights with <paramref name="fingerprint"/> are held now (for tests and diagnostics).</summary>
    public static bool Holds(string fingerprint)
    {
        lock (Gate) return Live.TryGetValue(fingerprint, out var weak) && weak.TryGetTarget(out _);
    }

    /// <summary>
    /// A lease on <paramref name="source"/>'s weights: those held already for its fingerprint when its file is unchanged,
    /// else loaded (and checked against the fingerprint) now. Dispose the lease when its task model goes; the last lease
    /// frees the weights.
    /// </summary>
    public static Lease Acquire(BackboneSource source)
    {
        lock (Gate)
        {
            foreach (var dead in Live.Where(p => !p.Value.TryGetTarget(out _)).Select(p => p.Key).ToList()) Live.Remove(dead);
            var stamp = source.FileStamp();
            if (!Live.TryGetValue(source.Fingerprint, out var weak) || !weak.TryGetTarget(out var entry) || entry.Stamp != stamp)
            {
                using var loaded = source.Load();
                if (weak is not null && weak.TryGetTarget(out entry))
                {
                    // The file was touched but holds the same weights (Load checked the fingerprint): keep the shared copy.
                    entry.Stamp = stamp;
                }
                else
                {
                    var tensors = new Dictionary<string, Tensor>();
                    foreach (var (key, tensor) in loaded.state_dict().Where(p => !loaded.IsHeadParameter(p.Key)))
                        tensors[key] = ModuleScopes.Unscoped(() => tensor.detach());
                    entry = new Entry(tensors, stamp);
                    Live[source.Fingerprint] = new WeakReference<Entry>(entry);
                }
            }
            entry.Leases++;
            return new Lease(source.Fingerprint, entry);
        }
    }

    /// <summary>One task model's hold on a backbone's shared weights.</summary>
    public sealed class Lease : IDisposable
    {
        private readonly string _fingerprint;
        private Entry? _entry;

        internal Lease(string fingerprint, Entry entry) => (_fingerprint, _entry) = (fingerprint, entry);

        /// <summary>The backbone's state (no head) by key, CPU.</summary>
        public IReadOnlyDictionary<string, Tensor> Tensors => (_entry ?? throw new ObjectDisposedException(nameof(Lease))).Tensors;

        /// <summary>
        /// Points every tensor of <paramref name="state"/> (a merged network's state, the backbone's keys behind
        /// <paramref name="prefix"/>) that is still bit for bit the backbone's to the shared copy, freeing its own; returns
        /// the bytes so shared.
        /// </summary>
        public long Share(IReadOnlyDictionary<string, Tensor> state, string prefix)
        {
            long bytes = 0;
            using var _ = no_grad();
            foreach (var (key, shared) in Tensors)
            {
                if (!state.TryGetValue(prefix + key, out var own) || own.dtype != shared.dtype || !own.shape.SequenceEqual(shared.shape)
                    || own.device_type != shared.device_type || !own.eq(shared).all().item<bool>())
                    continue;
                own.set_(shared);
                bytes += shared.NumberOfElements * shared.ElementSize;
            }
            return bytes;
        }

        /// <summary>Ends the lease; the last one on a backbone frees its copy (tensors pointed at it keep its memory alive).</summary>
        public void Dispose()
        {
            lock (Gate)
            {
                if (_entry is null) return;
                if (--_entry.Leases == 0)
                {
                    if (Live.TryGetValue(_fingerprint, out var weak) && weak.TryGetTarget(out var held) && held == _entry) Live.Remove(_fingerprint);
                    foreach (var tensor in _entry.Tensors.Values) tensor.Dispose();
                }
                _entry = null;
            }
        }
    }
}
