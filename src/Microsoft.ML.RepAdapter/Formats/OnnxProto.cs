using System.Buffers.Binary;
using System.Text;

namespace Microsoft.ML.RepAdapter.Formats;

/// <summary>
/// The ONNX protobuf field numbers (onnx.proto, IR version 8) that <see cref="OnnxReader"/> reads and
/// <see cref="OnnxWriter"/> writes: one table for both directions.
/// </summary>
internal static class OnnxFields
{
    public static class Model
    {
        public const int IrVersion = 1, ProducerName = 2, ProducerVersion = 3, DocString = 6, Graph = 7, OpsetImport = 8, MetadataProps = 14;
    }

    public static class OperatorSet
    {
        public const int Domain = 1, Version = 2;
    }

    public static class Graph
    {
        public const int Node = 1, Name = 2, Initializer = 5, Input = 11, Output = 12;
    }

    public static class Node
    {
        public const int Input = 1, Output = 2, Name = 3, OpType = 4, Attribute = 5, Domain = 7;
    }

    public static class Attribute
    {
        public const int Name = 1, Float = 2, Int = 3, String = 4, Floats = 7, Ints = 8, Strings = 9, Type = 20;
    }

    /// <summary>AttributeProto.AttributeType values.</summary>
    public static class AttributeType
    {
        public const int Float = 1, Int = 2, String = 3, Floats = 6, Ints = 7, Strings = 8;
    }

    public static class Tensor
    {
        public const int Dims = 1, DataType = 2, FloatData = 4, Int32Data = 5, StringData = 6, Int64Data = 7, Name = 8, RawData = 9,
            DoubleData = 10, ExternalData = 13, DataLocation = 14;

        /// <summary>TensorProto.DataLocation.EXTERNAL.</summary>
        public const int External = 1;
    }

    /// <summary>StringStringEntryProto (metadata_props, external_data).</summary>
    public static class Entry
    {
        public const int Key = 1, Value = 2;
    }

    public static class ValueInfo
    {
        public const int Name = 1, Type = 2;
    }

    /// <summary>TypeProto (1: tensor_type) -> TypeProto.Tensor (1: elem_type, 2: shape) -> TensorShapeProto (1: dim) -> Dimension.</summary>
    public static class Type
    {
        public const int TensorType = 1, ElemType = 1, Shape = 2, Dim = 1, DimValue = 1, DimParam = 2;
    }

    /// <summary>TensorProto.DataType values.</summary>
    public static class DataType
    {
        public const int Float = 1, UInt8 = 2, Int8 = 3, Int32 = 6, Int64 = 7, String = 8, Bool = 9, Double = 11, UInt32 = 12;
    }
}

/// <summary>Reads protobuf wire format from a byte range; throws on anything that runs past its end.</summary>
internal sealed class ProtoReader(byte[] data, int start, int end)
{
    private int _position = start;

    public long Remaining => end - _position;

    public ReadOnlySpan<byte> Rest => data.AsSpan(_position, end - _position);

    public bool Next(out int field, out int wire)
    {
        field = wire = 0;
        if (_position >= end) return false;
        ulong tag = (ulong)Varint();
        field = (int)(tag >> 3);
        wire = (int)(tag & 7);
        if (field == 0) throw new InvalidDataException($"field number 0 at byte {_position}.");
        return true;
    }

    public long Varint()
    {
        ulong value = 0;
        for (int shift = 0; shift < 64; shift += 7)
        {
            if (_position >= end) throw new InvalidDataException("truncated varint.");
            byte b = data[_position++];
            value |= (ulong)(b & 0x7f) << shift;
            if (b < 0x80) return (long)value;
        }
        throw new InvalidDataException("varint longer than 10 bytes.");
    }

    public ProtoReader Message()
    {
        long length = Varint();
        if (length < 0 || length > end - _position)
            throw new InvalidDataException($"truncated file: a field of {length} bytes at byte {_position}, but only {end - _position} bytes remain.");
        var sub = new ProtoReader(data, _position, _position + (int)length);
        _position += (int)length;
        return sub;
    }

    public string String()
    {
        var sub = Message();
        return Encoding.UTF8.GetString(sub.Rest);
    }

    public float Fixed32Float() => BinaryPrimitives.ReadSingleLittleEndian(Take(4));

    public void RepeatedVarint(int wire, List<long> values)
    {
        if (wire == 0) { values.Add(Varint()); return; }
        if (wire != 2) throw new InvalidDataException($"wire type {wire} for a repeated integer.");
        var packed = Message();
        while (packed.Remaining > 0) values.Add(packed.Varint());
    }

    public void RepeatedFloat(int wire, List<float> values)
    {
        if (wire == 5) { values.Add(Fixed32Float()); return; }
        if (wire != 2) throw new InvalidDataException($"wire type {wire} for a repeated float.");
        var packed = Message();
        if (packed.Remaining % 4 != 0) throw new InvalidDataException("packed floats not a multiple of 4 bytes.");
        var span = packed.Rest;
        values.EnsureCapacity(values.Count + span.Length / 4);
        for (int i = 0; i < span.Length; i += 4) values.Add(BinaryPrimitives.ReadSingleLittleEndian(span[i..]));
    }

    public void RepeatedDouble(int wire, List<double> values)
    {
        if (wire == 1) { values.Add(BinaryPrimitives.ReadDoubleLittleEndian(Take(8))); return; }
        if (wire != 2) throw new InvalidDataException($"wire type {wire} for a repeated double.");
        var packed = Message();
        var span = packed.Rest;
        for (int i = 0; i + 8 <= span.Length; i += 8) values.Add(BinaryPrimitives.ReadDoubleLittleEndian(span[i..]));
    }

    public void Skip(int wire)
    {
        switch (wire)
        {
            case 0: Varint(); break;
            case 1: Take(8); break;
            case 2: Message(); break;
            case 5: Take(4); break;
            default: throw new InvalidDataException($"unsupported wire type {wire} at byte {_position}.");
        }
    }

    private ReadOnlySpan<byte> Take(int count)
    {
        if (count > end - _position) throw new InvalidDataException($"truncated file: {count} bytes needed at byte {_position}, {end - _position} remain.");
        var span = data.AsSpan(_position, count);
        _position += count;
        return span;
    }
}

/// <summary>
/// One protobuf message being written: fields are recorded first, then <see cref="WriteTo"/> streams them out. Sizes
/// are computed before anything is written, so nested messages need no temporary buffers and large payloads (tensor
/// data) are copied once, from their source straight to the stream.
/// </summary>
internal sealed class ProtoWriter
{
    private readonly List<Field> _fields = [];
    private long _size = -1;

    private abstract record Field(int Number)
    {
        public abstract long PayloadSize { get; }
        public abstract int Wire { get; }
        public abstract void WritePayload(Stream stream);
    }

    private sealed record VarintField(int Number, ulong Value) : Field(Number)
    {
        public override long PayloadSize => VarintSize(Value);
        public override int Wire => 0;
        public override void WritePayload(Stream stream) => WriteVarint(stream, Value);
    }

    private sealed record Fixed32Field(int Number, float Value) : Field(Number)
    {
        public override long PayloadSize => 4;
        public override int Wire => 5;
        public override void WritePayload(Stream stream)
        {
            Span<byte> bytes = stackalloc byte[4];
            BinaryPrimitives.WriteSingleLittleEndian(bytes, Value);
            stream.Write(bytes);
        }
    }

    /// <summary>A length-delimited field whose bytes a callback writes (<paramref name="Length"/> of them).</summary>
    private sealed record BytesField(int Number, long Length, Action<Stream> Write) : Field(Number)
    {
        public override long PayloadSize => VarintSize((ulong)Length) + Length;
        public override int Wire => 2;
        public override void WritePayload(Stream stream)
        {
            WriteVarint(stream, (ulong)Length);
            long before = stream.CanSeek ? stream.Position : -1;
            Write(stream);
            if (before >= 0 && stream.Position - before != Length)
                throw new InvalidOperationException($"protobuf field {Number}: {Length} bytes announced, {stream.Position - before} written.");
        }
    }

    private sealed record MessageField(int Number, ProtoWriter Message) : Field(Number)
    {
        public override long PayloadSize => VarintSize((ulong)Message.Size) + Message.Size;
        public override int Wire => 2;
        public override void WritePayload(Stream stream)
        {
            WriteVarint(stream, (ulong)Message.Size);
            Message.WriteTo(stream);
        }
    }

    /// <summary>The message's size in bytes, without its own tag and length.</summary>
    public long Size
    {
        get
        {
            if (_size < 0) _size = _fields.Sum(f => VarintSize((ulong)f.Number << 3) + f.PayloadSize);
            return _size;
        }
    }

    public ProtoWriter Varint(int field, long value) => Add(new VarintField(field, (ulong)value));

    public ProtoWriter Float(int field, float value) => Add(new Fixed32Field(field, value));

    public ProtoWriter String(int field, string value)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(value);
        return Bytes(field, bytes);
    }

    public ProtoWriter Bytes(int field, byte[] bytes) => Add(new BytesField(field, bytes.Length, s => s.Write(bytes)));

    /// <summary>A length-delimited field of <paramref name="length"/> bytes that <paramref name="write"/> writes when the message is written.</summary>
    public ProtoWriter Bytes(int field, long length, Action<Stream> write) => Add(new BytesField(field, length, write));

    public ProtoWriter Message(int field, ProtoWriter message) => Add(new MessageField(field, message));

    public ProtoWriter PackedVarints(int field, IEnumerable<long> values)
    {
        var list = values.Select(v => (ulong)v).ToArray();
        long length = list.Sum(VarintSize);
        return Bytes(field, length, s =>
        {
            foreach (ulong v in list) WriteVarint(s, v);
        });
    }

    public ProtoWriter PackedFloats(int field, IReadOnlyList<float> values)
    {
        var bytes = new byte[values.Count * 4];
        for (int i = 0; i < values.Count; i++) BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan(i * 4), values[i]);
        return Bytes(field, bytes);
    }

    public void WriteTo(Stream stream)
    {
        foreach (var field in _fields)
        {
            WriteVarint(stream, ((ulong)field.Number << 3) | (uint)field.Wire);
            field.WritePayload(stream);
        }
    }

    private ProtoWriter Add(Field field)
    {
        _fields.Add(field);
        _size = -1;
        return this;
    }

    private static int VarintSize(ulong value)
    {
        int size = 1;
        while (value >= 0x80)
        {
            value >>= 7;
            size++;
        }
        return size;
    }

    private static void WriteVarint(Stream stream, ulong value)
    {
        Span<byte> buffer = stackalloc byte[10];
        int i = 0;
        while (value >= 0x80)
        {
            buffer[i++] = (byte)(value | 0x80);
            value >>= 7;
        }
        buffer[i++] = (byte)value;
        stream.Write(buffer[..i]);
    }
}
