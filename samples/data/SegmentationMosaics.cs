// Deterministic semantic-segmentation data built from real images, with no download: Fashion-MNIST items (the subset
// committed in samples/data/fashion-mnist) placed in the cells of a black canvas. A pixel's class is its item's class
// where the item is drawn (brighter than a threshold), background elsewhere. Compiled into the segmentation sample and
// linked into the tests, so both use one generator.
using Microsoft.ML.Data;

namespace RepAdapter.SampleData;

/// <summary>Fashion-MNIST mosaics with a class per pixel: class 0 is the background, 1..10 the clothing items.</summary>
public static class SegmentationMosaics
{
    /// <summary>Side of one Fashion-MNIST item.</summary>
    public const int ItemSize = 28;

    /// <summary>Item pixels at or below this gray value are background.</summary>
    public const byte Threshold = 40;

    /// <summary>One mosaic: its image and its mask, as PNG files.</summary>
    public sealed record Mosaic(string ImagePath, string MaskPath);

    /// <summary>"background", then the item classes in the subset's folder order.</summary>
    public static string[] ClassNames(string itemsFolder) =>
        ["background", .. Directory.GetDirectories(itemsFolder).Order(StringComparer.Ordinal).Select(Path.GetFileName)!];

    /// <summary>
    /// Writes <paramref name="count"/> mosaics of <paramref name="cells"/> x <paramref name="cells"/> cells, each cell an
    /// item scaled by <paramref name="scale"/> (nearest neighbour) or left empty (one in five), to
    /// <paramref name="outputFolder"/>/images and /masks; files already there are reused. Items come from
    /// <paramref name="itemsFolder"/> (one sub-folder per class), drawn with <paramref name="seed"/>.
    /// </summary>
    public static List<Mosaic> Write(string itemsFolder, string outputFolder, int count, int cells = 2, int scale = 2, int seed = 0)
    {
        var classes = Directory.GetDirectories(itemsFolder).Order(StringComparer.Ordinal)
            .Select(folder => Directory.GetFiles(folder, "*.png").Order(StringComparer.Ordinal).ToArray()).ToArray();
        if (classes.Length == 0 || classes.Any(files => files.Length == 0))
            throw new DirectoryNotFoundException($"Expected one folder of PNG items per class in {itemsFolder}.");
        Directory.CreateDirectory(Path.Combine(outputFolder, "images"));
        Directory.CreateDirectory(Path.Combine(outputFolder, "masks"));
        var random = new Random(seed);
        int cell = ItemSize * scale, side = cells * cell;
        var mosaics = new List<Mosaic>();
        for (int m = 0; m < count; m++)
        {
            var image = new byte[side * side * 4];
            var mask = new byte[side * side * 4];
            for (int p = 0; p < side * side; p++) image[4 * p + 3] = mask[4 * p + 3] = 255;
            for (int cy = 0; cy < cells; cy++)
            {
                for (int cx = 0; cx < cells; cx++)
                {
                    // Draw every random number whether or not the cell stays empty, so that one cell never shifts another.
                    int label = random.Next(classes.Length), pick = random.Next(1 << 20);
                    bool empty = random.Next(5) == 0;
                    if (empty) continue;
                    var item = Gray(classes[label][pick % classes[label].Length]);
                    for (int y = 0; y < cell; y++)
                    {
                        for (int x = 0; x < cell; x++)
                        {
                            byte v = item[(y / scale) * ItemSize + x / scale];
                            int p = (cy * cell + y) * side + cx * cell + x;
                            image[4 * p] = image[4 * p + 1] = image[4 * p + 2] = v;
                            byte c = v > Threshold ? (byte)(label + 1) : (byte)0;
                            mask[4 * p] = mask[4 * p + 1] = mask[4 * p + 2] = c;
                        }
                    }
                }
            }
            var mosaic = new Mosaic(Path.Combine(outputFolder, "images", $"{m:D5}.png"), Path.Combine(outputFolder, "masks", $"{m:D5}.png"));
            if (!File.Exists(mosaic.ImagePath) || !File.Exists(mosaic.MaskPath))
            {
                Save(image, side, mosaic.ImagePath);
                Save(mask, side, mosaic.MaskPath);
            }
            mosaics.Add(mosaic);
        }
        return mosaics;
    }

    private static byte[] Gray(string path)
    {
        using var image = MLImage.CreateFromFile(path);
        if (image.Width != ItemSize || image.Height != ItemSize) throw new InvalidDataException($"{path} is not a {ItemSize}x{ItemSize} item.");
        var bgr = image.GetBGRPixels;
        return [.. Enumerable.Range(0, ItemSize * ItemSize).Select(i => bgr[3 * i])];
    }

    private static void Save(byte[] bgra, int side, string path)
    {
        string partial = path + ".partial.png";
        using (var image = MLImage.CreateFromPixels(side, side, MLPixelFormat.Bgra32, bgra)) image.Save(partial);
        File.Move(partial, path, overwrite: true);
    }
}
