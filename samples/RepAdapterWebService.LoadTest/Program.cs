// Load test of samples/RepAdapterWebService, for both model kinds (the TorchSharp .zip and the ONNX chain .zip):
//   dotnet run -c Release --project samples/RepAdapterWebService.LoadTest
//   dotnet run -c Release --project samples/RepAdapterWebService.LoadTest -- --model-folder DIR   (DIR/model.zip, DIR/model.onnx.zip)
// Without --model-folder it first trains a small model on the committed Fashion-MNIST images (samples/data/fashion-mnist,
// no download): ML.NET's pretrained ResNet-18, a few epochs, no recipe search. Each kind gets a server process on a free
// port; the phases and their limits are in LoadTestArguments.Usage. The clients run on the same machine as the server.
// Prints Markdown tables (docs/benchmarks/serving.md) and exits with 1 when a check failed (a 5xx, a bad image not 400, ...).
using System.Diagnostics;
using Microsoft.ML;
using Microsoft.ML.RepAdapter.Classification;
using RepAdapterWebService.LoadTest;

LoadTestArguments arguments;
try
{
    arguments = LoadTestArguments.Parse(args);
}
catch (Exception e) when (e is ArgumentException or FormatException)
{
    Console.Error.WriteLine(e.Message);
    Console.Error.WriteLine(LoadTestArguments.Usage);
    return 2;
}

string repo = RepositoryRoot();
// The service is built alongside (a ProjectReference), in this project's configuration.
string configuration = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar)).Parent!.Name;
string serverDll = Path.Combine(repo, "samples", "RepAdapterWebService", "bin", configuration, "net10.0", "RepAdapterWebService.dll");
string fashion = Path.Combine(repo, "samples", "data", "fashion-mnist");

var clock = Stopwatch.StartNew();
string modelFolder = arguments.ModelFolder ?? Directory.CreateTempSubdirectory("repadapter-serving-").FullName;
string torchModel = Path.Combine(modelFolder, "model.zip"), onnxModel = Path.Combine(modelFolder, "model.onnx.zip");
if (arguments.ModelFolder is null)
{
    var train = ServingModels.ReadFolder(Path.Combine(fashion, "train"));
    Console.WriteLine($"Training on {train.Count} images: ML.NET's ResNet-18 at {arguments.ImageSize} px, {arguments.Epochs} epochs, no recipe search");
    var options = new RepAdapterImageClassificationTrainer.Options { Epochs = arguments.Epochs, ImageSize = arguments.ImageSize, TimeBudget = TimeSpan.Zero };
    ServingModels.TrainAndSave(new MLContext(seed: 1), train, options, modelFolder);
    Console.WriteLine($"Trained and saved in {clock.Elapsed.TotalSeconds:F0} s: {torchModel}, {onnxModel}");
}

// The good images: the committed test images, which the model has not seen.
var images = ServingModels.ReadFolder(Path.Combine(fashion, "test")).Select(r => r.ImageSource).ToList();
var report = new Report();
using var client = new HttpClient { Timeout = TimeSpan.FromSeconds(60) };
var test = new ServingLoadTest(arguments, serverDll, client, images, report);
foreach (string kind in arguments.Kinds)
{
    try
    {
        await test.RunAsync(kind, kind == "torch" ? torchModel : onnxModel);
    }
    catch (Exception e) when (e is InvalidOperationException or TimeoutException or HttpRequestException or IOException)
    {
        // A server that would not start or stop: a failed check, and the other kind still runs.
        report.Check(false, $"[{kind}] {e.Message}");
    }
}

Console.WriteLine();
Console.WriteLine(report.ToMarkdown());
Console.WriteLine($"Total time {clock.Elapsed.TotalMinutes:F1} min.");
if (arguments.ModelFolder is null) Directory.Delete(modelFolder, recursive: true);
if (report.Failures.Count == 0)
{
    Console.WriteLine("All checks passed.");
    return 0;
}
Console.WriteLine($"{report.Failures.Count} checks failed:");
report.Failures.ForEach(f => Console.WriteLine($"  {f}"));
return 1;

static string RepositoryRoot()
{
    foreach (var start in new[] { Directory.GetCurrentDirectory(), AppContext.BaseDirectory })
    {
        for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Microsoft.ML.RepAdapter.sln"))) return dir.FullName;
    }
    throw new DirectoryNotFoundException("Microsoft.ML.RepAdapter.sln not found: run from the repository.");
}
