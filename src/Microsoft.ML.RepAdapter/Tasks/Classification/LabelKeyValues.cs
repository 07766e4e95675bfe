using System.Reflection;
using Microsoft.ML.Data;
using Microsoft.ML.Data.IO;
using Microsoft.ML.Runtime;

namespace Microsoft.ML.RepAdapter.Classification;

/// <summary>
/// The key values of the training label column (their type and values, e.g. Text or Int32), kept with the model so
/// that PredictedLabel carries the same KeyValues annotation and MapKeyToValue gives back the original labels.
/// <see cref="Names"/> are their text forms, used as the Score column's slot names.
/// </summary>
internal sealed class LabelKeyValues
{
    private readonly object _values;

    private LabelKeyValues(VectorDataViewType type, object values, string[] names)
    {
        Type = type;
        _values = values;
        Names = names;
    }

    public VectorDataViewType Type { get; }

    public string[] Names { get; }

    public int Count => Names.Length;

    /// <summary>From a key label column; a key without values gets its key numbers as text values.</summary>
    public static LabelKeyValues FromColumn(DataViewSchema.Column label)
    {
        if (label.Annotations.Schema.GetColumnOrNull(AnnotationUtils.Kinds.KeyValues)?.Type is VectorDataViewType type)
            return Invoke<LabelKeyValues>(nameof(Read), type.ItemType.RawType, label, type);
        int count = (int)label.Type.GetKeyCount();
        var names = Enumerable.Range(1, count).Select(k => k.ToString()).ToArray();
        return FromNames(names);
    }

    public static LabelKeyValues FromNames(string[] names) => new(
        new VectorDataViewType(TextDataViewType.Instance, names.Length),
        new VBuffer<ReadOnlyMemory<char>>(names.Length, [.. names.Select(n => n.AsMemory())]),
        names);

    /// <summary>A getter for the KeyValues annotation (a ValueGetter of VBuffer of the item type).</summary>
    public Delegate Getter() => Invoke<Delegate>(nameof(MakeGetter), Type.ItemType.RawType, _values);

    public void Save(IHostEnvironment env, Stream stream) => Invoke<bool>(nameof(Write), Type.ItemType.RawType, env, stream, Type, _values);

    public static LabelKeyValues Load(IHostEnvironment env, Stream stream)
    {
        var saver = new BinarySaver(env, new BinarySaver.Arguments());
        if (!saver.TryLoadTypeAndValue(stream, out var type, out var values) || type is not VectorDataViewType vector)
            throw env.ExceptDecode("The label key values could not be read.");
        return new LabelKeyValues(vector, values, Invoke<string[]>(nameof(TextOf), vector.ItemType.RawType, values));
    }

    private static LabelKeyValues Read<T>(DataViewSchema.Column label, VectorDataViewType type)
    {
        var values = default(VBuffer<T>);
        label.Annotations.GetValue(AnnotationUtils.Kinds.KeyValues, ref values);
        return new LabelKeyValues(type, values, TextOf<T>(values));
    }

    private static string[] TextOf<T>(object values) => [.. ((VBuffer<T>)values).DenseValues().Select(v => v?.ToString() ?? "")];

    private static Delegate MakeGetter<T>(object values)
    {
        var buffer = (VBuffer<T>)values;
        return (ValueGetter<VBuffer<T>>)((ref VBuffer<T> dst) => buffer.CopyTo(ref dst));
    }

    private static bool Write<T>(IHostEnvironment env, Stream stream, VectorDataViewType type, object values)
    {
        var buffer = (VBuffer<T>)values;
        if (!new BinarySaver(env, new BinarySaver.Arguments()).TryWriteTypeAndValue(stream, type, ref buffer, out _))
            throw env.Except($"Label key values of type {type.ItemType} cannot be saved.");
        return true;
    }

    /// <summary>Calls the generic method <paramref name="name"/> for the item type <paramref name="itemType"/>.</summary>
    private static TResult Invoke<TResult>(string name, Type itemType, params object[] arguments) =>
        (TResult)typeof(LabelKeyValues).GetMethod(name, BindingFlags.NonPublic | BindingFlags.Static)!
            .MakeGenericMethod(itemType).Invoke(null, arguments)!;
}
