// A web service for a RepAdapter image classifier (ASP.NET Core minimal API), from either saved form of the model:
//   dotnet run -c Release --project samples/RepAdapterWebService -- --model MLModel.zip            the TorchSharp .zip
//   dotnet run -c Release --project samples/RepAdapterWebService -- --model MLModel.onnx.zip       the ONNX chain .zip
// (both written by samples/RepAdapterImageClassification), then
//   curl --data-binary @image.png http://localhost:5000/predict      -> {"label":"Bag","scores":{"Ankle_boot":0.01,...}}
//   curl -F file=@image.png http://localhost:5000/predict             (multipart form)
//   curl http://localhost:5000/health
// Options: ServiceOptions.Usage. Ctrl+C or SIGTERM stops it after the requests in flight (--shutdown-timeout).
// samples/RepAdapterWebService.LoadTest measures it; docs/benchmarks/serving.md has the figures.
using RepAdapterWebService;

ServiceOptions options;
try
{
    options = ServiceOptions.Parse(args);
}
catch (ArgumentException e)
{
    Console.Error.WriteLine(e.Message);
    Console.Error.WriteLine(ServiceOptions.Usage);
    return 2;
}

// Before the model loads and request threads start allocating: keeps resident memory flat under load (NativeHeap).
NativeHeap.LimitArenas();

WebApplication app;
try
{
    app = ServiceApp.Build(options);
}
catch (Exception e) when (e is InvalidDataException or IOException or FormatException or InvalidOperationException or System.Reflection.TargetInvocationException)
{
    // A file that is no model of this kind, or one ML.NET cannot load: say so, without a stack trace.
    Console.Error.WriteLine($"Cannot serve '{options.ModelPath}': {e.GetBaseException().Message}");
    return 1;
}
await using (app)
{
    await app.RunAsync();
}
return 0;
