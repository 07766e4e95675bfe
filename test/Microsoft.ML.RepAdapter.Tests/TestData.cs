using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Classification;
using Microsoft.ML.RepAdapter.MLNet;
using Microsoft.ML.RepAdapter.Tests.Classification;

namespace Microsoft.ML.RepAdapter.Tests;

/// <summary>Paths in the repository and the committed Fashion-MNIST subset (samples/data/fashion-mnist).</summary>
internal static class TestData
{
    public static string RepoRoot { get; } = FindRepoRoot();

    public static string FashionMnist => Path.Combine(RepoRoot, "samples", "data", "fashion-mnist");

    public static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "Fixtures", name);

    /// <summary>The build configuration this test assembly was built in (Debug/Release), from its output path.</summary>
    public static string Configuration => new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar)).Parent!.Name;

    /// <summary>The first <paramref name="perClass"/> images of the first <paramref name="classes"/> classes (sorted by name).</summary>
    public static List<ImageRow> Images(string split = "train", int classes = 3, int perClass = 10)
    {
        var rows = new List<ImageRow>();
        foreach (var folder in Directory.GetDirectories(Path.Combine(FashionMnist, split)).Order(StringComparer.Ordinal).Take(classes))
        {
            foreach (var file in Directory.GetFiles(folder, "*.png").Order(StringComparer.Ordinal).Take(perClass))
                rows.Add(new ImageRow { ImagePath = file, Label = Path.GetFileName(folder) });
        }
        return rows;
    }

    /// <summary>
    /// <paramref name="options"/> with its option field <paramref name="name"/> set to <paramref name="value"/> (a DataRow's
    /// value, converted to the field's type): for tests that try one option at a time.
    /// </summary>
    public static T WithOption<T>(T options, string name, object value) where T : RepAdapterTrainerOptions
    {
        var field = typeof(T).GetField(name) ?? throw new ArgumentException($"{typeof(T).Name} has no option {name}.", nameof(name));
        field.SetValue(options, Convert.ChangeType(value, Nullable.GetUnderlyingType(field.FieldType) ?? field.FieldType));
        return options;
    }

    /// <summary>Copies the files under <paramref name="source"/> to <paramref name="target"/>, leaving out build outputs (bin, obj).</summary>
    public static void CopyDirectory(string source, string target)
    {
        foreach (var file in Directory.EnumerateFiles(source, "*", SearchOption.AllDirectories))
        {
            string relative = Path.GetRelativePath(source, file);
            if (relative.Split(Path.DirectorySeparatorChar)[0] is "bin" or "obj") continue;
            Directory.CreateDirectory(Path.GetDirectoryName(Path.Combine(target, relative))!);
            File.Copy(file, Path.Combine(target, relative));
        }
    }

    /// <summary>The raw messages <paramref name="mlContext"/> logs from now on (those <paramref name="keep"/> accepts), as they come.</summary>
    public static List<string> CaptureLog(MLContext mlContext, Func<LoggingEventArgs, bool>? keep = null)
    {
        var log = new List<string>();
        mlContext.Log += (_, e) => { if (keep?.Invoke(e) ?? true) lock (log) log.Add(e.RawMessage); };
        return log;
    }

    /// <summary>Rows with the label mapped to a key and the image loaded: what the trainer consumes.</summary>
    public static IDataView Prepared(MLContext mlContext, IEnumerable<ImageRow> rows)
    {
        var data = mlContext.Data.LoadFromEnumerable(rows);
        return mlContext.Transforms.Conversion.MapValueToKey("Label")
            .Append(mlContext.Transforms.LoadImages("Image", "", nameof(ImageRow.ImagePath)))
            .Fit(data).Transform(data);
    }

    /// <summary>
    /// A tiny RepAdapter model fitted (2 epochs) on 3 classes x 8 training images, its pipeline starting from image paths
    /// (LoadImages, then the trainer) as a scoring application's does; the label is mapped to a key beforehand.
    /// </summary>
    public static TransformerChain<RepAdapterImageClassificationTransformer> TinyModelFromPaths(MLContext mlContext)
    {
        var data = mlContext.Data.LoadFromEnumerable(Images("train", classes: 3, perClass: 8));
        var keyed = mlContext.Transforms.Conversion.MapValueToKey("Label").Fit(data).Transform(data);
        return mlContext.Transforms.LoadImages("Image", "", nameof(ImageRow.ImagePath))
            .Append(mlContext.MulticlassClassification.Trainers.RepAdapter(TinyTrainerOptions.Create(epochs: 2)))
            .Fit(keyed);
    }

    private static string FindRepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Microsoft.ML.RepAdapter.sln"))) return dir.FullName;
        }
        throw new InvalidOperationException($"No Microsoft.ML.RepAdapter.sln above {AppContext.BaseDirectory}.");
    }
}

public sealed class ImageRow
{
    public string ImagePath { get; set; } = "";
    public string Label { get; set; } = "";
}

public sealed class NumericLabelRow
{
    public string ImagePath { get; set; } = "";
    public int Label { get; set; }
}

public sealed class ImageBytesRow
{
    public byte[] ImageSource { get; set; } = [];
    public string Label { get; set; } = "";
}
