// Renders the PNG plots a benchmark run asked for: dotnet run --project samples/RepAdapter.Benchmarks.Plots -- <requests.json>
// (RepAdapter.Benchmarks runs it itself at the end of each suite).
using System.Text.Json;
using RepAdapter.Benchmarks;

if (args.Length != 1 || !File.Exists(args[0]))
{
    Console.Error.WriteLine("usage: RepAdapter.Benchmarks.Plots <requests.json> (a JSON array of PlotRequest)");
    return 2;
}
var requests = JsonSerializer.Deserialize<PlotRequest[]>(File.ReadAllText(args[0]), PlotRequest.Json)
    ?? throw new InvalidDataException($"{args[0]}: no plot requests.");
foreach (var request in requests)
{
    Plots.Render(request);
    Console.WriteLine($"Wrote {request.Path}");
}
return 0;
