using Microsoft.ML.RepAdapter.Torch;
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
    /// The most pixels (width x height) an image may have, checked from its header before anything decodes it: 8192 x
    /// 8192, 67 megapixels. That is above common camera resolutions (24 to 61 megapixels; phones' 50-megapixel modes)
    /// while a decode at this limit takes 256 MiB (Skia decodes to 4 bytes per pixel), and the BGR copy and the
    /// resize's input add about as much again: with several images decoded in parallel, memory stays within a
    /// training machine's means. A header claiming more (a 54-byte BMP can claim 30000 x 30000, 3.6 GB) is refused
    /// without allocating it.
    /// </summary>
    public const long DefaultMaxImagePixels = 8192L * 8192;

    /// <summary>What sets the pixel limit, as errors name it (the trainer options' and the transformer's property).</summary>
    internal const string MaxImagePixelsName = "MaxImagePixels";

    /// <summary>
    /// A function returning the current row's image as the backbone's uint8 input pixels [3, S, S], with the image's own
    /// size: <see cref="CreateFetcher"/> and <see cref="Decode{T}"/> in one step.
    /// </summary>
    public static Func<ImageRead> CreateReader(DataViewRow row, string column, ImagePreprocessor preprocessor)
    {
        var fetch = CreateFetcher(row, column);
        return () => Decode(fetch(), preprocessor.Read, preprocessor.MaxPixels);
    }

    /// <summary>
    /// A function that takes the current row's image from its column, cheaply, on the cursor's thread: encoded bytes as
    /// they are, or an MLImage's pixels (LoadImages has decoded it; the getter disposes it on the next row, so nothing
    /// waits for a finalizer). <see cref="Decode{T}"/> does the rest, on any thread. An image LoadImages cannot load is an
    /// <see cref="InvalidDataException"/> naming the column, the row and (when the row shows it) the file.
    /// </summary>
    public static Func<FetchedImage> CreateFetcher(DataViewRow row, string column)
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
                return new FetchedImage(column, row.Position, null, new DecodedImage(image.GetBGRPixels, image.Width, image.Height), image.Tag as string);
            };
        }
        var bytesGetter = row.GetGetter<VBuffer<byte>>(col);
        var bytes = default(VBuffer<byte>);
        return () =>
        {
            bytesGetter(ref bytes);
            return new FetchedImage(column, row.Position, bytes.DenseValues().ToArray(), null, null);
        };
    }

    /// <summary>
    /// Decodes a fetched image and returns <paramref name="convert"/> of it. Bytes that are empty, truncated or not an
    /// image, and LoadImages files that are truncated (Skia decodes them silently, half black), are an
    /// <see cref="InvalidDataException"/> naming the column, the row and the file; so is an image whose header declares
    /// more than <paramref name="maxPixels"/> pixels, refused before it is decoded. (LoadImages decodes its files before
    /// this runs; their limit spares the conversion and resize, which would take several times the decode's memory.)
    /// <paramref name="kind"/> says what the column holds in those messages ("Image", "Mask").
    /// </summary>
    public static T Decode<T>(FetchedImage fetched, Func<DecodedImage, T> convert, long maxPixels = DefaultMaxImagePixels, string kind = "Image")
    {
        string where = $"{kind} column '{fetched.Column}', row {fetched.Row}";
        DecodedImage image;
        if (fetched.Pixels is { } pixels)
        {
            // LoadImages keeps the file's path in Tag: check the file itself.
            if (fetched.File is string path && File.Exists(path))
                CheckEncoded(File.ReadAllBytes(path), maxPixels, $"{where} (file '{path}')", notAnImage: "");
            else if ((long)pixels.Width * pixels.Height > maxPixels)
                throw new InvalidDataException($"{where}: {ImageIntegrity.PixelLimitProblem("the image is", pixels.Width, pixels.Height, maxPixels, MaxImagePixelsName)}.");
            image = pixels;
        }
        else
        {
            var encoded = fetched.Encoded!;
            if (encoded.Length == 0) throw new InvalidDataException($"{where}: the image bytes are empty.");
            CheckEncoded(encoded, maxPixels, where, notAnImage: $"the {encoded.Length} bytes are not a decodable image: ");
            try
            {
                using var decoded = MLImage.CreateFromStream(new MemoryStream(encoded));
                image = new DecodedImage(decoded.GetBGRPixels, decoded.Width, decoded.Height);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                throw new InvalidDataException($"{where}: the {encoded.Length} bytes are not a decodable image ({e.Message}).", e);
            }
        }
        if (image.Width <= 0 || image.Height <= 0) throw new InvalidDataException($"{where}: the image has no pixels ({image.Width} x {image.Height}).");
        try
        {
            return convert(image);
        }
        catch (InvalidDataException e)
        {
            throw new InvalidDataException($"{where}: {e.Message}", e);
        }
    }

    /// <summary>A fetched image's width and height: LoadImages' decoded size, else the size its header declares (nothing decoded).</summary>
    public static (int Width, int Height) Size(FetchedImage fetched) =>
        fetched.Pixels is { } pixels ? (pixels.Width, pixels.Height)
        : ImageIntegrity.Dimensions(fetched.Encoded) is { } header ? (header.Width, header.Height)
        : Decode(fetched, image => (image.Width, image.Height));

    /// <summary>
    /// Refuses an encoded image whose header declares too many pixels (first: the integrity check of some formats
    /// decodes, which allocates the declared size) or that is incomplete.
    /// </summary>
    private static void CheckEncoded(byte[] encoded, long maxPixels, string where, string notAnImage)
    {
        if (ImageIntegrity.SizeProblem(encoded, maxPixels, MaxImagePixelsName) is string tooLarge)
            throw new InvalidDataException($"{where}: {tooLarge}.");
        if (ImageIntegrity.Problem(encoded) is string problem)
            throw new InvalidDataException($"{where}: {notAnImage}{problem}.");
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

/// <summary>Decoded pixels: BGR bytes, row-major, and the size.</summary>
internal readonly record struct DecodedImage(byte[] Bgr, int Width, int Height);

/// <summary>
/// A row's image as taken from its column: encoded bytes, or the pixels LoadImages decoded (with its file, to check).
/// </summary>
internal sealed record FetchedImage(string Column, long Row, byte[]? Encoded, DecodedImage? Pixels, string? File);

/// <summary>Turns images into the backbone's input pixels: RGB or BGR order, resized (bicubic, antialiased) to S x S.</summary>
internal sealed class ImagePreprocessor(ImageInputSpec spec, long maxPixels = ImageColumn.DefaultMaxImagePixels)
{
    public ImageInputSpec Spec { get; } = spec;

    /// <summary>The most pixels an image may declare before it is decoded (the options' and transformer's <c>MaxImagePixels</c>).</summary>
    public long MaxPixels { get; set; } = maxPixels;

    /// <summary>uint8 [3, S, S] in the spec's channel order.</summary>
    public Tensor ToPixels(MLImage image) => ToPixels(new DecodedImage(image.GetBGRPixels, image.Width, image.Height));

    /// <summary>The input pixels and the image's own size.</summary>
    public ImageRead Read(DecodedImage image) => new(ToPixels(image), image.Width, image.Height);

    /// <summary>
    /// Images above this many pixels are resized in strips of rows rather than as one float copy (12 bytes a pixel: 48 MB
    /// here). Below it the one-shot resize stays, so results for ordinary images do not change.
    /// </summary>
    internal const long StripResizeAbovePixels = 4_000_000;

    /// <summary>Pixels per strip: a strip's float copy is 12 MB whatever the image's size.</summary>
    private const long StripPixels = 1 << 20;

    /// <summary>uint8 [3, S, S] in the spec's channel order.</summary>
    public Tensor ToPixels(DecodedImage image)
    {
        using var scope = NewDisposeScope();
        if (image.Width <= 0 || image.Height <= 0)
            throw new InvalidDataException($"Image has no pixels ({image.Width} x {image.Height}).");
        var bgr = tensor(image.Bgr, ScalarType.Byte).view(image.Height, image.Width, 3).permute(2, 0, 1);
        int size = Spec.ImageSize;
        if (image.Height == size && image.Width == size) return InOrder(bgr).contiguous().MoveToOuterDisposeScope();
        var resized = (long)image.Width * image.Height > StripResizeAbovePixels
            ? ResizeInStrips(bgr, size, StripRows(image.Width))
            : ResizeWhole(InOrder(bgr), size);
        return resized.MoveToOuterDisposeScope();
    }

    /// <summary>The spec's channel order from BGR [3, H, W].</summary>
    private Tensor InOrder(Tensor bgr) => Spec.Order == ChannelOrder.Bgr ? bgr : bgr.flip(0);

    /// <summary>uint8 [3, H, W] to uint8 [3, S, S] in one step: bicubic, antialiased.</summary>
    internal static Tensor ResizeWhole(Tensor pixels, int size) =>
        ToBytes(Interpolate(pixels.unsqueeze(0).to(float32), size, size));

    /// <summary>
    /// The same resize with bounded memory. Antialiased bicubic interpolation is separable (torch resamples width, then
    /// height), so each strip of rows is resampled to width S alone (its height unchanged), the strips gathered as
    /// float [1, 3, H, S], and that resampled to height S: the one-shot result up to float rounding. The extra memory is
    /// one strip's float copy and the H x S intermediate, not the image's float copy. Channels are put in order per
    /// strip (a flip copies).
    /// </summary>
    internal Tensor ResizeInStrips(Tensor bgr, int size, int rowsPerStrip)
    {
        long height = bgr.shape[1];
        var widthResampled = empty(1, 3, height, size, float32);
        for (long top = 0; top < height; top += rowsPerStrip)
        {
            using var stripScope = NewDisposeScope();
            long rows = Math.Min(rowsPerStrip, height - top);
            var strip = InOrder(bgr.narrow(1, top, rows)).unsqueeze(0).to(float32);
            widthResampled.narrow(2, top, rows).copy_(Interpolate(strip, (int)rows, size));
        }
        return ToBytes(Interpolate(widthResampled, size, size));
    }

    /// <summary>Rows in a strip of about <see cref="StripPixels"/> pixels; at least one.</summary>
    internal static int StripRows(int width) => (int)Math.Max(1, StripPixels / width);

    private static Tensor Interpolate(Tensor input, int height, int width) =>
        nn.functional.interpolate(input, [height, width], mode: InterpolationMode.Bicubic, align_corners: false, antialias: true);

    private static Tensor ToBytes(Tensor resized) => resized.squeeze(0).round().ClampToBytes();

    /// <summary>uint8 [N, 3, S, S] for a list of images.</summary>
    public Tensor ToPixels(IEnumerable<MLImage> images)
    {
        using var scope = NewDisposeScope();
        return stack(images.Select(ToPixels).ToArray()).MoveToOuterDisposeScope();
    }
}
