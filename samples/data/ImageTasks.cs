// Image classification tasks for the samples and benchmarks, each as labelled encoded images in memory: real
// Fashion-MNIST (Debian's dataset-fashion-mnist IDX files) and two structured tasks generated deterministically (how
// many shapes, which orientation), in the spirit of VTAB's structured group (CLEVR counting, dSprites orientation).
using System.IO.Compression;

namespace RepAdapter.SampleData;

/// <summary>One labelled image: its class name and the encoded file bytes.</summary>
public sealed record LabeledImage(string Label, byte[] Encoded);

/// <summary>A classification task: training and test images and the class names in index order.</summary>
public sealed record ImageTask(string Name, string Kind, IReadOnlyList<string> Classes, IReadOnlyList<LabeledImage> Train, IReadOnlyList<LabeledImage> Test)
{
    /// <summary>Writes every image under <paramref name="folder"/>/{train,test}/{label}/NNNNN.bmp and returns the (path, label) rows.</summary>
    public (List<(string Path, string Label)> Train, List<(string Path, string Label)> Test) WriteFiles(string folder)
    {
        List<(string, string)> Write(string split, IReadOnlyList<LabeledImage> images)
        {
            var rows = new List<(string, string)>();
            for (int i = 0; i < images.Count; i++)
            {
                string dir = Path.Combine(folder, split, images[i].Label);
                Directory.CreateDirectory(dir);
                string path = Path.Combine(dir, $"{i:D5}.bmp");
                if (!File.Exists(path)) File.WriteAllBytes(path, images[i].Encoded);
                rows.Add((path, images[i].Label));
            }
            return rows;
        }
        return (Write("train", Train), Write("test", Test));
    }
}


/// <summary>Fashion-MNIST from its IDX files (Debian: apt-get install dataset-fashion-mnist, or build/install-benchmark-data.sh).</summary>
public static class FashionMnist
{
    /// <summary>Where Debian's package puts the files.</summary>
    public const string DebianFolder = "/usr/share/datasets/fashion-mnist";

    /// <summary>Class names in label order (file-name friendly).</summary>
    public static readonly string[] Classes = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"];

    /// <summary>
    /// Images of <paramref name="split"/> ("train" or "t10k") in file order, after the first <paramref name="skip"/> (of
    /// each class when <paramref name="perClass"/> is given): the next <paramref name="perClass"/> of each class when it is
    /// given, else the next <paramref name="count"/> images; <paramref name="alter"/> changes the pixels of image i.
    /// </summary>
    public static List<LabeledImage> Read(string folder, string split, int? perClass = null, int? count = null, int skip = 0,
        Func<byte[], int, byte[]>? alter = null)
    {
        byte[] images = ReadGzip(Path.Combine(folder, $"{split}-images-idx3-ubyte.gz"));
        byte[] labels = ReadGzip(Path.Combine(folder, $"{split}-labels-idx1-ubyte.gz"));
        const int Side = 28, ImageHeader = 16, LabelHeader = 8;
        var rows = new List<LabeledImage>();
        var taken = new int[Classes.Length];
        int limit = perClass is int p ? p * Classes.Length : count ?? int.MaxValue;
        for (int i = 0; i < labels.Length - LabelHeader && rows.Count < limit; i++)
        {
            int label = labels[LabelHeader + i];
            if (perClass is int most ? taken[label]++ is var t && (t < skip || t >= skip + most) : i < skip) continue;
            var pixels = images.AsSpan(ImageHeader + i * Side * Side, Side * Side).ToArray();
            if (alter is not null) pixels = alter(pixels, i);
            rows.Add(new LabeledImage(Classes[label], Bmp.Gray(pixels, Side, Side)));
        }
        return rows;
    }

    /// <summary>The benchmark split: the first 100 training images of each class (1,000), the first 2,000 t10k images.</summary>
    public static ImageTask Task1k(string folder = DebianFolder) =>
        new("fashion-mnist-1k", "natural", Classes, Read(folder, "train", perClass: 100), Read(folder, "t10k", count: 2000));

    /// <summary>Another split of the same size: the next 100 training images of each class, t10k images 2,000-3,999.</summary>
    public static ImageTask Task1kB(string folder = DebianFolder) =>
        new("fashion-mnist-1k-b", "natural", Classes, Read(folder, "train", perClass: 100, skip: 100), Read(folder, "t10k", count: 2000, skip: 2000));

    /// <summary>Few-shot: 16 training images of each class (after the first 200), t10k images 4,000-5,999.</summary>
    public static ImageTask FewShot16(string folder = DebianFolder) =>
        new("fashion-mnist-16-shot", "natural", Classes, Read(folder, "train", perClass: 16, skip: 200), Read(folder, "t10k", count: 2000, skip: 4000));

    /// <summary>
    /// A shift between training and test images: 100 training images of each class (after the first 300) as they are;
    /// t10k images 6,000-7,999 moved by up to 3 pixels and at 60 % contrast, as photographs of another setting would be.
    /// </summary>
    public static ImageTask Shifted(string folder = DebianFolder) =>
        new("fashion-mnist-shifted", "natural", Classes, Read(folder, "train", perClass: 100, skip: 300),
            Read(folder, "t10k", count: 2000, skip: 6000, alter: Shift));

    private static byte[] Shift(byte[] pixels, int index)
    {
        const int Side = 28;
        var random = new Random(index);
        int dx = random.Next(-3, 4), dy = random.Next(-3, 4);
        var moved = new byte[pixels.Length];
        for (int y = 0; y < Side; y++)
            for (int x = 0; x < Side; x++)
            {
                int sx = x - dx, sy = y - dy;
                moved[y * Side + x] = (byte)(sx is >= 0 and < Side && sy is >= 0 and < Side ? 0.6 * pixels[sy * Side + sx] : 0);
            }
        return moved;
    }

    private static byte[] ReadGzip(string path)
    {
        if (!File.Exists(path))
            throw new FileNotFoundException($"{path} not found: run build/install-benchmark-data.sh (apt-get install dataset-fashion-mnist).", path);
        using var gzip = new GZipStream(File.OpenRead(path), CompressionMode.Decompress);
        using var memory = new MemoryStream();
        gzip.CopyTo(memory);
        return memory.ToArray();
    }
}

/// <summary>Generated structured tasks: drawn shapes on a noisy background, deterministic for a seed.</summary>
public static class StructuredTasks
{
    /// <summary>How many discs (1 to 6) are drawn: classes "1".."6".</summary>
    public static ImageTask Counting(int train = 1000, int test = 2000, int size = 64, int seed = 1) =>
        Make("count-shapes", 6, train, test, seed, (random, label) => Draw(size, random, canvas =>
        {
            var centres = new List<(double x, double y, double r)>();
            while (centres.Count < label + 1)
            {
                double r = random.Next(size / 16, size / 8 + 1);
                double x = r + random.NextDouble() * (size - 2 * r), y = r + random.NextDouble() * (size - 2 * r);
                if (centres.All(c => double.Hypot(c.x - x, c.y - y) > c.r + r + 2)) centres.Add((x, y, r));
            }
            foreach (var (x, y, r) in centres) canvas((px, py) => double.Hypot(px - x, py - y) <= r);
        }), label => (label + 1).ToString());

    /// <summary>The angle of one elongated shape (a bar, an ellipse or a T) in 8 bins of 22.5 degrees over [0, 180).</summary>
    public static ImageTask Orientation(int train = 1000, int test = 2000, int size = 64, int seed = 2) =>
        Make("shape-orientation", 8, train, test, seed, (random, label) => Draw(size, random, canvas =>
        {
            double angle = (label + random.NextDouble()) * Math.PI / 8;
            double length = size * (0.25 + 0.1 * random.NextDouble()), width = size * (0.05 + 0.04 * random.NextDouble());
            double cx = size / 2.0 + (random.NextDouble() - 0.5) * size / 3, cy = size / 2.0 + (random.NextDouble() - 0.5) * size / 3;
            int shape = random.Next(3);
            var (c, s) = (Math.Cos(angle), Math.Sin(angle));
            canvas((px, py) =>
            {
                // Coordinates along (u) and across (v) the shape's axis.
                double u = (px - cx) * c + (py - cy) * s, v = -(px - cx) * s + (py - cy) * c;
                return shape switch
                {
                    0 => Math.Abs(u) <= length && Math.Abs(v) <= width,
                    1 => u * u / (length * length) + v * v / (width * width * 2.25) <= 1,
                    _ => Math.Abs(u) <= length && Math.Abs(v) <= width / 2 || Math.Abs(u - length) <= width && Math.Abs(v) <= length / 2,
                };
            });
        }), label => $"{label * 22.5:0.#}deg");

    private static ImageTask Make(string name, int classes, int train, int test, int seed, Func<Random, int, byte[]> draw, Func<int, string> className)
    {
        var names = Enumerable.Range(0, classes).Select(className).ToArray();
        List<LabeledImage> Split(int count, int splitSeed)
        {
            var random = new Random(splitSeed);
            // Balanced: image i has class i mod classes.
            return [.. Enumerable.Range(0, count).Select(i => new LabeledImage(names[i % classes], draw(random, i % classes)))];
        }
        return new ImageTask(name, "structured", names, Split(train, seed), Split(test, seed + 1000));
    }

    private static byte[] Draw(int size, Random random, Action<Action<Func<double, double, bool>>> shapes)
    {
        var pixels = new byte[size * size];
        int background = random.Next(20, 60), foreground = random.Next(170, 240);
        for (int i = 0; i < pixels.Length; i++) pixels[i] = (byte)Math.Clamp(background + random.Next(-15, 16), 0, 255);
        shapes(inside =>
        {
            for (int y = 0; y < size; y++)
            {
                for (int x = 0; x < size; x++)
                {
                    if (inside(x + 0.5, y + 0.5)) pixels[y * size + x] = (byte)Math.Clamp(foreground + random.Next(-15, 16), 0, 255);
                }
            }
        });
        return Bmp.Gray(pixels, size, size);
    }
}
