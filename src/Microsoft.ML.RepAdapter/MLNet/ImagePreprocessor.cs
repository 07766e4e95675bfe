using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.Runtime;
using Microsoft.ML.Transforms.Image;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.MLNet;

/// <summary>
/// Reads the image column of an IDataView row, whichever of the two ML.NET image representations it holds: an
/// <see cref="MLImage"/> (LoadImages) or encoded bytes (LoadRawImageBytes, Model Builder's <c>byte[] ImageSource</c>).
/// </summary>
internal static class ImageColumn
{
    public static bool IsImageType(DataViewType type) =>
        type is ImageDataViewType || type is VectorDataViewType { ItemType: var item } && item == NumberDataViewType.Byte;

    /// <summary>Throws a schema error naming the column when it is missing or of a type we cannot read.</summary>
    public static void Check(IExceptionContext host, SchemaShape schema, string column)
    {
        if (!schema.TryFindColumn(column, out var found))
            throw host.ExceptSchemaMismatch(nameof(schema), "image", column);
        bool isImage = found.ItemType is ImageDataViewType && found.Kind == SchemaShape.Column.VectorKind.Scalar;
        bool isBytes = found.ItemType == NumberDataViewType.Byte && found.Kind != SchemaShape.Column.VectorKind.Scalar;
        if (!isImage && !isBytes)
            throw host.ExceptSchemaMismatch(nameof(schema), "image", column, "Image (LoadImages) or Vector<Byte> (LoadRawImageBytes)", found.GetTypeString());
    }

    public static void Check(IExceptionContext host, DataViewSchema schema, string column) => Check(host, SchemaShape.Create(schema), column);

    /// <summary>
    /// A function returning the current row's image as the backbone's uint8 input pixels [3, S, S], with the image's own
    /// size. See <see cref="CreateDecoder{T}"/> for what is checked.
    /// </summary>
    public static Func<ImageRead> CreateReader(DataViewRow row, string column, ImagePreprocessor preprocessor) =>
        CreateDecoder(row, column, image => new ImageRead(preprocessor.ToPixels(image), image.Width, image.Height));

    /// <summary>
    /// A function that decodes the current row's image and returns <paramref name="convert"/> of it. Each image is
    /// converted as soon as it is read: an image decoded here from bytes is disposed at once, and an MLImage from
    /// LoadImages is handed back to its getter on the next row, which disposes it (so nothing waits for a finalizer).
    /// Images that cannot be read, or whose file or bytes are truncated, are an <see cref="InvalidDataException"/>
    /// naming the column, the row and (when the row shows it) the file.
    /// </summary>
    public static Func<T> CreateDecoder<T>(DataViewRow row, string column, Func<MLImage, T> convert)
    {
        var col = row.Schema[column];
        string Where() => $"Image column '{column}', row {row.Position}";
        if (col.Type is ImageDataViewType)
        {
            var getter = row.GetGetter<MLImage>(col);
            MLImage image = null!;
            return () =>
            {
                try
                {
                    getter(ref image);
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or InvalidOperationException)
                {
                    throw new InvalidDataException($"{Where()}{PathsOf(row)}: the image could not be loaded ({e.Message}).", e);
                }
                if (image is null) throw new InvalidDataException($"{Where()}{PathsOf(row)}: no image (an empty path?).");
                // LoadImages keeps the file's path in Tag: check the file itself, since Skia decodes a truncated one silently.
                if (image.Tag is string path && File.Exists(path) && ImageIntegrity.Problem(File.ReadAllBytes(path)) is string problem)
                    throw new InvalidDataException($"{Where()} (file '{path}'): {problem}.");
                return Convert(image);
            };
        }
        var bytesGetter = row.GetGetter<VBuffer<byte>>(col);
        var bytes = default(VBuffer<byte>);
        return () =>
        {
            bytesGetter(ref bytes);
            var dense = bytes.DenseValues().ToArray();
            if (dense.Length == 0) throw new InvalidDataException($"{Where()}: the image bytes are empty.");
            if (ImageIntegrity.Problem(dense) is string problem)
                throw new InvalidDataException($"{Where()}: the {dense.Length} bytes are not a decodable image: {problem}.");
            MLImage decoded;
            try
            {
                decoded = MLImage.CreateFromStream(new MemoryStream(dense));
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                throw new InvalidDataException($"{Where()}: the {dense.Length} bytes are not a decodable image ({e.Message}).", e);
            }
            using (decoded) return Convert(decoded);
        };

        T Convert(MLImage image)
        {
            if (image.Width <= 0 || image.Height <= 0) throw new InvalidDataException($"{Where()}: the image has no pixels ({image.Width} x {image.Height}).");
            try
            {
                return convert(image);
            }
            catch (InvalidDataException e)
            {
                throw new InvalidDataException($"{Where()}: {e.Message}", e);
            }
        }
    }

    /// <summary>
    /// " (ImagePath = '...', a directory)" for the row's active text columns whose value names a file or directory: where
    /// LoadImages read the image from, which its own errors do not always say.
    /// </summary>
    private static string PathsOf(DataViewRow row)
    {
        var found = new List<string>();
        foreach (var column in row.Schema.Where(c => c.Type is TextDataViewType && row.IsColumnActive(c)))
        {
            var value = default(ReadOnlyMemory<char>);
            row.GetGetter<ReadOnlyMemory<char>>(column)(ref value);
            string text = value.ToString();
            if (text.Length == 0) continue;
            if (Directory.Exists(text)) found.Add($"{column.Name} = '{text}', a directory, not an image file");
            else if (File.Exists(text) || text.Contains('/') || text.Contains('\\')) found.Add($"{column.Name} = '{text}'");
        }
        return found.Count == 0 ? "" : $" ({string.Join("; ", found)})";
    }
}

/// <summary>One image read from a row: the backbone's input pixels (uint8 [3, S, S]) and the image's own size.</summary>
internal readonly record struct ImageRead(Tensor Pixels, int Width, int Height);

/// <summary>Turns images into the backbone's input pixels: RGB or BGR order, resized (bicubic, antialiased) to S x S.</summary>
internal sealed class ImagePreprocessor(ImageInputSpec spec)
{
    public ImageInputSpec Spec { get; } = spec;

    /// <summary>uint8 [3, S, S] in the spec's channel order.</summary>
    public Tensor ToPixels(MLImage image)
    {
        using var scope = NewDisposeScope();
        if (image.Width <= 0 || image.Height <= 0)
            throw new InvalidDataException($"Image has no pixels ({image.Width} x {image.Height}).");
        var bgr = tensor(image.GetBGRPixels, ScalarType.Byte).view(image.Height, image.Width, 3).permute(2, 0, 1);
        var ordered = Spec.Order == ChannelOrder.Bgr ? bgr : bgr.flip(0);
        int size = Spec.ImageSize;
        if (image.Height == size && image.Width == size) return ordered.contiguous().MoveToOuterDisposeScope();
        var resized = nn.functional.interpolate(
            ordered.unsqueeze(0).to(float32), [size, size], mode: InterpolationMode.Bicubic, align_corners: false, antialias: true);
        return resized.squeeze(0).round().clamp(0, 255).to(ScalarType.Byte).MoveToOuterDisposeScope();
    }

    /// <summary>uint8 [N, 3, S, S] for a list of images.</summary>
    public Tensor ToPixels(IEnumerable<MLImage> images)
    {
        using var scope = NewDisposeScope();
        return stack(images.Select(ToPixels).ToArray()).MoveToOuterDisposeScope();
    }
}
