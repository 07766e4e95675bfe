using RepAdapter.SampleData;

namespace Microsoft.ML.RepAdapter.Tests.Segmentation;

/// <summary>Fashion-MNIST mosaics for the tests (the sample's generator), written once per test run.</summary>
internal static class SegmentationData
{
    private static readonly Lazy<string> Root = new(() =>
    {
        string root = Path.Combine(Path.GetTempPath(), $"repadapter-mosaics-{Environment.ProcessId}");
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            if (Directory.Exists(root)) Directory.Delete(root, recursive: true);
        };
        return root;
    });

    public static string[] ClassNames => SegmentationMosaics.ClassNames(Path.Combine(TestData.FashionMnist, "train"));

    /// <summary><paramref name="count"/> mosaics of 2 x 2 cells of 28 px items (56 px) from the given split.</summary>
    public static List<MosaicRow> Mosaics(string split, int count, int seed = 0)
    {
        string folder = Path.Combine(Root.Value, $"{split}-{count}-{seed}");
        return [.. SegmentationMosaics.Write(Path.Combine(TestData.FashionMnist, split), folder, count, cells: 2, scale: 1, seed: seed)
            .Select(m => new MosaicRow { ImagePath = m.ImagePath, MaskPath = m.MaskPath })];
    }
}

public sealed class MosaicRow
{
    public string ImagePath { get; set; } = "";
    public string MaskPath { get; set; } = "";
}
