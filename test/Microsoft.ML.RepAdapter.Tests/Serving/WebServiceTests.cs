using System.Net;
using System.Net.Http.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.ML.RepAdapter.Tests.Classification;
using RepAdapterWebService;
using RepAdapterWebService.LoadTest;

namespace Microsoft.ML.RepAdapter.Tests.Serving;

/// <summary>
/// samples/RepAdapterWebService started in-process on a free port, serving a tiny model saved both ways (the TorchSharp
/// .zip and the ONNX chain .zip) as a user saves them, under a short load from the load test's own client. Nothing here
/// depends on timing: the overload and shutdown cases hold a request in flight by withholding the rest of its body.
/// </summary>
[TestClass]
public class WebServiceTests
{
    private static string _folder = "";
    private static ServingModels.Saved _models = null!;
    private static List<byte[]> _images = [];
    private static string[] _classes = [];

    [ClassInitialize]
    public static void Train(TestContext _)
    {
        _folder = Path.Combine(Path.GetTempPath(), $"repadapter-serving-{Guid.NewGuid():N}");
        var train = ServingModels.ReadFolder(Path.Combine(TestData.FashionMnist, "train"), classes: 3, perClass: 8);
        _classes = [.. train.Select(r => r.Label).Distinct()];
        _models = ServingModels.TrainAndSave(new MLContext(seed: 1), train, TinyTrainerOptions.Create(epochs: 2), _folder);
        _images = [.. ServingModels.ReadFolder(Path.Combine(TestData.FashionMnist, "test"), classes: 3, perClass: 10).Select(r => r.ImageSource)];
    }

    [ClassCleanup]
    public static void Cleanup()
    {
        if (Directory.Exists(_folder)) Directory.Delete(_folder, recursive: true);
    }

    private static string ModelPath(string kind) => kind == "torch" ? _models.TorchPath : _models.OnnxPath;

    private static async Task<(WebApplication App, Uri Address)> StartAsync(ServiceOptions options)
    {
        var app = ServiceApp.Build(options with { Urls = "http://127.0.0.1:0" });
        await app.StartAsync();
        // Port 0: Kestrel chose a free port, which the started app's Urls show.
        return (app, new Uri(app.Urls.Single()));
    }

    [TestMethod]
    [DataRow("torch")]
    [DataRow("onnx")]
    public async Task AShortLoadGetsEveryGoodImageLabelledAndEveryBadOneRefusedWithItsReason(string kind)
    {
        const int MaxBody = 64 * 1024;
        var (app, address) = await StartAsync(new ServiceOptions { ModelPath = ModelPath(kind), Concurrency = 2, QueueLimit = 8, MaxBodyBytes = MaxBody });
        await using var _ = app;
        using var client = new HttpClient();

        var health = await client.GetFromJsonAsync<Health>(new Uri(address, "health"));
        Assert.AreEqual(kind, health!.Kind);
        CollectionAssert.AreEqual(_classes, health.Labels.ToArray(), "the labels the model was trained on, in key order");
        Assert.IsGreaterThan(0L, health.ResidentBytes);

        var runner = new LoadRunner(client, new Uri(address, "predict"), RetryPolicy.None);
        var bodies = RequestBodies.Mix(_images, count: 200, badFraction: 0.1, seed: 5);
        var result = await runner.RunAsync(bodies, clients: 4, TimeSpan.FromMinutes(5));

        Assert.IsFalse(result.CutShort);
        Assert.AreEqual(0, result.Count(o => o.Status >= 500), "no 5xx");
        var problems = result.Problems(_classes);
        Assert.IsEmpty(problems, string.Join("\n", problems));
        Assert.AreEqual(20, result.Count(o => o.Kind != BodyKind.Good && o.Status == 400), "every bad body 400");
        var truncatedPng = result.Outcomes.Where(o => o.Kind == BodyKind.Truncated && o.Detail!.Contains("PNG")).ToList();
        Assert.IsNotEmpty(truncatedPng, "the reason of a truncated image names its format");
        Console.WriteLine($"{kind}: e.g. '{truncatedPng[0].Detail}'; empty body: '{result.Outcomes.First(o => o.Kind == BodyKind.Empty).Detail}'");

        // The same image as the first file of a multipart form gets the raw body's answer.
        var raw = await runner.SendAsync(new RequestBody(BodyKind.Good, _images[0]));
        using var form = new MultipartFormDataContent { { new ByteArrayContent(_images[0]), "file", "image.png" } };
        using var multipart = await client.PostAsync(new Uri(address, "predict"), form);
        Assert.AreEqual(HttpStatusCode.OK, multipart.StatusCode);
        var fromForm = await multipart.Content.ReadFromJsonAsync<Prediction>();
        Assert.AreEqual(raw.Label, fromForm!.Label);
        Assert.IsTrue(result.Outcomes.Where(o => o.Kind == BodyKind.Good).Select(o => o.Label).Contains(raw.Label));

        // A 54-byte BMP whose header claims 30000 x 30000 (3.6 GB decoded) is refused from its header, on both kinds.
        var declared = await runner.SendAsync(new RequestBody(BodyKind.RandomBytes, MLNet.TestImages.BmpHeader(30000, 30000)));
        Assert.AreEqual(400, declared.Status, declared.Error ?? declared.Detail);
        StringAssert.Contains(declared.Detail, "30000 x 30000");

        // Last: Kestrel closes the connection of a refused oversized body.
        var tooLarge = await runner.SendAsync(new RequestBody(BodyKind.RandomBytes, new byte[MaxBody + 1]));
        Assert.AreEqual(413, tooLarge.Status, tooLarge.Error ?? tooLarge.Detail);
    }

    [TestMethod]
    public async Task OverloadGets503WithRetryAfterAndShutdownLetsTheRequestInFlightFinish()
    {
        // One scoring place, no queue: while one request holds the place, any other is refused at once.
        var (app, address) = await StartAsync(new ServiceOptions { ModelPath = _models.OnnxPath, Concurrency = 1, QueueLimit = 0 });
        await using var _ = app;
        using var client = new HttpClient();
        var predict = new Uri(address, "predict");

        // A request whose body is sent in two parts: it takes the place, then waits for the rest of its image.
        var content = new HeldBody(_images[0], sentFirst: 16);
        var held = client.PostAsync(predict, content);
        await WaitUntilAsync(client, new Uri(address, "health"), h => h.Scoring == 1);

        var runner = new LoadRunner(client, predict, RetryPolicy.None);
        var refused = await Task.WhenAll(Enumerable.Range(0, 4).Select(_ => runner.SendAsync(new RequestBody(BodyKind.Good, _images[1]))));
        foreach (var outcome in refused)
        {
            Assert.AreEqual(503, outcome.Status, outcome.Error ?? outcome.Detail);
            Assert.IsTrue(outcome.HasRetryAfter, "a 503 says when to come back");
        }

        // Shutdown while the request is in flight: it still gets its answer, then the server stops.
        var stopping = app.StopAsync();
        Assert.IsFalse(stopping.IsCompleted, "the server waits for the request in flight");
        content.Release();
        using var response = await held;
        Assert.AreEqual(HttpStatusCode.OK, response.StatusCode, await response.Content.ReadAsStringAsync());
        var prediction = await response.Content.ReadFromJsonAsync<Prediction>();
        CollectionAssert.Contains(_classes, prediction!.Label);
        await stopping;
    }

    [TestMethod]
    public void AModelOfAnotherKindThanAskedIsRefusedAtStartNamingWhatItHolds()
    {
        var e = Assert.ThrowsExactly<InvalidDataException>(() => ServiceApp.Build(new ServiceOptions { ModelPath = _models.TorchPath, Kind = ModelKind.Onnx }));
        StringAssert.Contains(e.Message, "Torch model");
        Assert.ThrowsExactly<ArgumentException>(() => ServiceOptions.Parse(["--model", _models.OnnxPath, "--queue", "-1"]));
    }

    /// <summary>A body (chunked) whose first bytes are sent at once and the rest only after <see cref="Release"/>.</summary>
    private sealed class HeldBody(byte[] bytes, int sentFirst) : HttpContent
    {
        private readonly TaskCompletionSource _released = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public void Release() => _released.SetResult();

        protected override async Task SerializeToStreamAsync(Stream stream, TransportContext? context)
        {
            await stream.WriteAsync(bytes.AsMemory(0, sentFirst));
            // HttpClient buffers small writes: flushed, the headers and the first bytes reach the server now.
            await stream.FlushAsync();
            await _released.Task;
            await stream.WriteAsync(bytes.AsMemory(sentFirst));
        }

        protected override bool TryComputeLength(out long length)
        {
            length = 0;
            return false;
        }
    }

    /// <summary>Polls /health until <paramref name="condition"/> holds (a guard of a minute against a hang, not a timing assertion).</summary>
    private static async Task WaitUntilAsync(HttpClient client, Uri health, Func<Health, bool> condition)
    {
        for (var deadline = DateTime.UtcNow.AddMinutes(1); DateTime.UtcNow < deadline; await Task.Delay(20))
        {
            if (condition((await client.GetFromJsonAsync<Health>(health))!)) return;
        }
        Assert.Fail("the server never reached the state waited for");
    }
}
