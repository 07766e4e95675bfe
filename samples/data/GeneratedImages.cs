// Generated image classification data of any size, for tests and benchmarks that need many images (streaming, caches,
// memory bounds) without storing them: each row's image is drawn when it is read.

/// <summary>
/// A generated row: a bright bar on a noisy background, horizontal for label "h" and vertical for "v", at a random
/// position seeded by the row's index. The image is an uncompressed BMP drawn when <see cref="ImageSource"/> is read,
/// so that a data set of any size takes no memory until a trainer reads it.
/// </summary>
public sealed class GeneratedImage(int index, int pixels)
{
    /// <summary>Rows 0..count-1 at <paramref name="pixels"/> px, alternating labels.</summary>
    public static IEnumerable<GeneratedImage> Rows(int count, int pixels) => Enumerable.Range(0, count).Select(i => new GeneratedImage(i, pixels));

    public string Label { get; set; } = index % 2 == 0 ? "h" : "v";

    public byte[] ImageSource
    {
        get
        {
            var random = new Random(index);
            int bar = random.Next(pixels / 4, 3 * pixels / 4);
            var gray = new byte[pixels * pixels];
            for (int y = 0; y < pixels; y++)
            {
                for (int x = 0; x < pixels; x++)
                {
                    bool on = Math.Abs((index % 2 == 0 ? y : x) - bar) < pixels / 16 + 1;
                    gray[y * pixels + x] = (byte)Math.Clamp((on ? 200 : 40) + random.Next(-30, 30), 0, 255);
                }
            }
            return Bmp.Gray(gray, pixels, pixels);
        }
        set { }
    }
}

/// <summary>Uncompressed 24-bit BMP files: every image decoder reads them, and writing one needs no library.</summary>
public static class Bmp
{
    /// <summary>A gray image (one byte per pixel, row-major, top row first) as BMP bytes.</summary>
    public static byte[] Gray(byte[] pixels, int width, int height)
    {
        int rowBytes = (width * 3 + 3) & ~3;
        var bmp = new byte[54 + rowBytes * height];
        void Int(int at, int value) => BitConverter.TryWriteBytes(bmp.AsSpan(at), value);
        bmp[0] = (byte)'B';
        bmp[1] = (byte)'M';
        Int(2, bmp.Length);
        Int(10, 54);
        Int(14, 40);
        Int(18, width);
        Int(22, -height); // negative: rows stored top-down
        bmp[26] = 1;
        bmp[28] = 24;
        for (int y = 0; y < height; y++)
        {
            for (int x = 0; x < width; x++)
            {
                int at = 54 + y * rowBytes + 3 * x;
                bmp[at] = bmp[at + 1] = bmp[at + 2] = pixels[y * width + x];
            }
        }
        return bmp;
    }
}
