using RepAdapter.SampleData;

namespace Microsoft.ML.RepAdapter.Tests.Video;

/// <summary>
/// The generated motion task (samples/data/MotionClips.cs): the label is in the motion, not in any one frame. Checked on
/// the frames' pixels: the disc moves by the class's direction, and the middle frame's disc position does not tell the class.
/// </summary>
[TestClass]
public class MotionClipsTests
{
    private const int Size = 32, Frames = 8;

    /// <summary>The disc's centre in a decoded BMP frame: the centroid of the bright pixels.</summary>
    private static (double X, double Y) Centre(byte[] bmp)
    {
        int rowBytes = (Size * 3 + 3) & ~3;
        double sx = 0, sy = 0, n = 0;
        for (int y = 0; y < Size; y++)
        {
            for (int x = 0; x < Size; x++)
            {
                if (bmp[54 + y * rowBytes + 3 * x] < 120) continue;
                sx += x + 0.5;
                sy += y + 0.5;
                n++;
            }
        }
        Assert.IsGreaterThan(0.0, n, "the disc is in the frame");
        return (sx / n, sy / n);
    }

    [TestMethod]
    public void TheDiscMovesInTheClassesDirectionAndStaysInTheFrame()
    {
        var task = MotionClips.Direction(train: 40, test: 8, frames: Frames, size: Size);
        CollectionAssert.AreEqual(new[] { "right", "left", "down", "up" }, task.Classes.ToArray());
        Assert.AreEqual(10, task.Train.Count(c => c.Label == "up"), "balanced");
        foreach (var clip in task.Train)
        {
            Assert.AreEqual(Frames, clip.Frames.Count);
            var (first, last) = (Centre(clip.Frames[0]), Centre(clip.Frames[^1]));
            var (_, dx, dy) = MotionClips.Directions.Single(d => d.Name == clip.Label);
            // 0.5-1 px per frame over 7 frames: 3.5-7 px along the direction, about none across it.
            double along = (last.X - first.X) * dx + (last.Y - first.Y) * dy, across = Math.Abs((last.X - first.X) * dy - (last.Y - first.Y) * dx);
            Assert.IsTrue(along is > 2.5 and < 8, $"{clip.Label}: moved {along:F1} px along its direction");
            Assert.IsLessThan(1.5, across, $"{clip.Label}: moved {across:F1} px across it");
        }
    }

    [TestMethod]
    public void TheMiddleFrameAloneDoesNotTellTheClass()
    {
        // The middle frame's disc position has the same distribution for every class: per class, the mean centre of 200
        // clips is within sampling noise of the others (uniform over about 17 px: 0.5 px standard error of a difference,
        // so 2 px is four of them), while the first frame's is shifted by about 3 px against the direction.
        var task = MotionClips.Direction(train: 800, test: 4, frames: Frames, size: Size);
        var means = task.Classes.Select(label =>
        {
            var centres = task.Train.Where(c => c.Label == label).Select(c => Centre(c.Frames[MotionClips.MiddleFrame(Frames)])).ToList();
            return (X: centres.Average(c => c.X), Y: centres.Average(c => c.Y));
        }).ToList();
        foreach (var a in means)
        {
            foreach (var b in means) Assert.IsLessThan(2.0, Math.Max(Math.Abs(a.X - b.X), Math.Abs(a.Y - b.Y)), "middle-frame centres per class");
        }
        // Two frames do tell it: the first frame's centre is shifted against the direction.
        var firstRight = task.Train.Where(c => c.Label == "right").Average(c => Centre(c.Frames[0]).X);
        var firstLeft = task.Train.Where(c => c.Label == "left").Average(c => Centre(c.Frames[0]).X);
        Assert.IsGreaterThan(4.0, firstLeft - firstRight, "a moving disc starts on the other side");
    }

    [TestMethod]
    public void ClipsAreDeterministicForASeedAndWrittenAsFoldersOfFrames()
    {
        var a = MotionClips.Direction(train: 4, test: 4, frames: Frames, size: Size, seed: 3);
        var b = MotionClips.Direction(train: 4, test: 4, frames: Frames, size: Size, seed: 3);
        for (int i = 0; i < 4; i++) CollectionAssert.AreEqual(a.Train[i].Frames[2], b.Train[i].Frames[2], $"clip {i}");
        string root = Path.Combine(Path.GetTempPath(), "motion-" + Guid.NewGuid().ToString("N"));
        try
        {
            var (train, test) = a.WriteFolders(root);
            Assert.AreEqual(4, train.Count);
            Assert.AreEqual(Frames, Directory.GetFiles(train[0].Folder, "frame_*.bmp").Length);
            CollectionAssert.AreEqual(a.Test[1].Frames[0], File.ReadAllBytes(Path.Combine(test[1].Folder, "frame_00.bmp")));
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => MotionClips.Direction(frames: 40, size: 32), "a path longer than the frame");
    }
}
