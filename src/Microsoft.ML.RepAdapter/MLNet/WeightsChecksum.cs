using System.Security.Cryptography;
using System.Text;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.MLNet;

/// <summary>
/// Writes and reads a model's TorchSharp weights stream while hashing it (SHA-256), so that a saved model can be checked
/// against the checksum stored beside it, without holding the (possibly gigabyte) stream in memory.
/// </summary>
internal static class WeightsChecksum
{
    /// <summary>Saves through <paramref name="save"/> into <paramref name="destination"/>; returns the SHA-256 of the bytes written.</summary>
    public static byte[] Write(Stream destination, Action<BinaryWriter> save)
    {
        using var hashing = new HashingStream(destination);
        using (var writer = new BinaryWriter(hashing, Encoding.UTF8, leaveOpen: true)) save(writer);
        return hashing.Hash();
    }

    /// <summary>
    /// Loads <paramref name="model"/>'s weights (strictly) from <paramref name="source"/>, the model entry
    /// <paramref name="entry"/>; returns the SHA-256 of the whole stream. A stream that does not parse, or does not fit
    /// the model, is an <see cref="InvalidDataException"/> naming the entry.
    /// </summary>
    public static byte[] Read(Stream source, string entry, nn.Module model)
    {
        using var hashing = new HashingStream(source);
        using (var reader = new BinaryReader(hashing, Encoding.UTF8, leaveOpen: true))
        {
            try
            {
                model.load(reader, strict: true);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                // No inner exception: ML.NET wraps loader errors in TargetInvocationExceptions, and GetBaseException() should
                // then be this message, which says which entry failed and why.
                throw new InvalidDataException($"The model's '{entry}' weights stream could not be read ({e.GetType().Name}: {e.Message}): the file was damaged or altered.");
            }
        }
        hashing.CopyTo(Stream.Null);
        return hashing.Hash();
    }

    /// <summary>The SHA-256 of the rest of <paramref name="source"/>, read through once without loading anything.</summary>
    public static byte[] Hash(Stream source) => SHA256.HashData(source);

    /// <summary>A pass-through stream that hashes every byte read from or written to it.</summary>
    private sealed class HashingStream(Stream inner) : Stream
    {
        private readonly IncrementalHash _hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);

        public byte[] Hash() => _hash.GetHashAndReset();

        public override int Read(byte[] buffer, int offset, int count)
        {
            int read = inner.Read(buffer, offset, count);
            _hash.AppendData(buffer, offset, read);
            return read;
        }

        public override void Write(byte[] buffer, int offset, int count)
        {
            _hash.AppendData(buffer, offset, count);
            inner.Write(buffer, offset, count);
        }

        public override void Flush() => inner.Flush();
        public override bool CanRead => inner.CanRead;
        public override bool CanWrite => inner.CanWrite;
        public override bool CanSeek => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();

        protected override void Dispose(bool disposing)
        {
            if (disposing) _hash.Dispose();
            base.Dispose(disposing);
        }
    }
}
