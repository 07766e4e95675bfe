namespace RepAdapter.SampleData;

/// <summary>One labelled clip: its class name and its frames, each an encoded image (BMP), in time order.</summary>
public sealed record LabeledClip(string Label, IReadOnlyList<byte[]> Frames);

/// <summary>A video classification task: training and test clips and the class names in index order.</summary>
public sealed record ClipTask(string Name, IReadOnlyList<string> Classes, IReadOnlyList<LabeledClip> Train, IReadOnlyList<LabeledClip> Test)
{
    /// <summary>
    /// Writes every clip as a folder of numbered frames (<c>train/00012/frame_03.bmp</c>) under <paramref name="root"/>;
    /// returns each split's (clip folder, label) rows.
    /// </summary>
    public (List<(string Folder, string Label)> Train, List<(string Folder, string Label)> Test) WriteFolders(string root)
    {
        List<(string, string)> Write(string split, IReadOnlyList<LabeledClip> clips) =>
        [
            .. clips.Select((clip, i) =>
            {
                string folder = Path.Combine(root, split, i.ToString("D5"));
                Directory.CreateDirectory(folder);
                for (int t = 0; t < clip.Frames.Count; t++) File.WriteAllBytes(Path.Combine(folder, $"frame_{t:D2}.bmp"), clip.Frames[t]);
                return (folder, clip.Label);
            }),
        ];
        return (Write("train", Train), Write("test", Test));
    }
}

/// <summary>
/// Generated clips whose label is motion, so that one frame is not enough: a disc moves in one of four directions.
/// Its position in the middle frame is drawn the same way for every class (uniform over the centre of the frame), so
/// the middle frame alone carries no information about the label, and a single-frame classifier stays at chance.
/// Deterministic for a seed.
/// </summary>
public static class MotionClips
{
    /// <summary>The four directions, in class order, as (dx, dy) per frame in units of the speed.</summary>
    public static readonly (string Name, int Dx, int Dy)[] Directions = [("right", 1, 0), ("left", -1, 0), ("down", 0, 1), ("up", 0, -1)];

    /// <summary>
    /// The direction task: <paramref name="frames"/> frames of <paramref name="size"/> px; the disc (radius size / 10) moves
    /// size / 64 to size / 32 px per frame, on a noisy background whose brightness varies from clip to clip; classes
    /// balanced. Frame <see cref="MiddleFrame"/> is the one whose disc position does not depend on the class.
    /// </summary>
    public static ClipTask Direction(int train = 400, int test = 400, int frames = 16, int size = 64, int seed = 7)
    {
        if (frames < 2 || size < 16 || Margin(frames, size, speed: size / 32.0) * 2 >= size)
            throw new ArgumentOutOfRangeException(nameof(frames), $"{frames} frames of {size} px: the disc's path does not fit (at most about 0.4 x size frames)");
        string[] names = [.. Directions.Select(d => d.Name)];
        List<LabeledClip> Split(int count, int splitSeed)
        {
            var random = new Random(splitSeed);
            return [.. Enumerable.Range(0, count).Select(i => Clip(random, i % Directions.Length, frames, size))];
        }
        return new ClipTask("motion-direction", names, Split(train, seed), Split(test, seed + 1000));
    }

    /// <summary>The frame (frames / 2) whose disc position is drawn the same way for every class: a single-frame baseline's frame.</summary>
    public static int MiddleFrame(int frames) => frames / 2;

    /// <summary>How far from the border the middle frame's centre must be for the whole path to stay inside.</summary>
    private static double Margin(int frames, int size, double speed) => size / 10.0 + 1 + speed * Math.Max(MiddleFrame(frames), frames - 1 - MiddleFrame(frames));

    private static LabeledClip Clip(Random random, int label, int frames, int size)
    {
        double radius = size / 10.0, speed = size / 64.0 * (1 + random.NextDouble());
        // The middle frame's centre is uniform over the square that every path through it stays inside, whatever the direction.
        double margin = Margin(frames, size, speed);
        double cx = margin + random.NextDouble() * (size - 2 * margin), cy = margin + random.NextDouble() * (size - 2 * margin);
        int background = random.Next(20, 60), foreground = random.Next(170, 240);
        var (_, dx, dy) = Directions[label];
        var encoded = new List<byte[]>(frames);
        for (int t = 0; t < frames; t++)
        {
            double offset = (t - MiddleFrame(frames)) * speed;
            double x = cx + dx * offset, y = cy + dy * offset;
            var pixels = new byte[size * size];
            for (int py = 0; py < size; py++)
            {
                for (int px = 0; px < size; px++)
                {
                    bool inside = double.Hypot(px + 0.5 - x, py + 0.5 - y) <= radius;
                    pixels[py * size + px] = (byte)Math.Clamp((inside ? foreground : background) + random.Next(-15, 16), 0, 255);
                }
            }
            encoded.Add(Bmp.Gray(pixels, size, size));
        }
        return new LabeledClip(Directions[label].Name, encoded);
    }
}
