// The benchmark suites, each writing docs/benchmarks/<suite>.md (machine, versions, settings, command, tables), .json and
// PNG plots:
//
//   dotnet run -c Release --project samples/RepAdapter.Benchmarks -- <suite> [options]
//
//   latency       plain / unmerged / merged inference per backbone and batch size, with the noise floor and 95 % intervals
//                 [--models a,b --batches 1,16 --rounds 60 --large-batch-rounds 24]
//   training      one training step per method (full fine-tune, RepAdapter, LoRA, head-only, cached prefix): time and peak memory
//   accuracy      RepAdapter, LoRA, head-only, full fine-tune and the ML.NET pipeline on Fashion-MNIST-1k and two structured
//                 tasks [--tasks a,b] (Fashion-MNIST: run build/install-benchmark-data.sh once)
//   segmentation  the bare call against head-only on the Fashion-MNIST mosaics, several seeds, and the search's candidates
//                 as fixed recipes on the first seed [--seeds 1,2,3] [--methods "bare call,head only"]
//   prefix-precision  the CPU recipe with its frozen prefix in float32 and in bfloat16 (FrozenPrefixPrecision): Fit time
//                 and accuracy side by side [--tasks a,b --seeds 1,2,3]
//   onnx          merged model latency: TorchSharp float32 and bfloat16, ONNX Runtime float32 and int8, per backbone and batch
//                 size [--models a,b --batches 1,16]
//   deployment    bytes on disk, load time, scoring latency and memory of adapters-only task models against merged models
//                 [--models resnet18,vit_base_patch16_224 --copies 10]
//   all           every suite
//   replot latency|accuracy  draws the suite's plot again from docs/benchmarks/<suite>.json, measuring nothing
using RepAdapter.Benchmarks;

if (args.Length > 0 && args[0] == "training-step-one")
{
    return TrainingStepSuite.One(args[1], int.Parse(args[2]), args[3], int.Parse(args[4]), int.Parse(args[5]));
}
if (args is ["deployment-memory-one", var modelPath, var imagePath, var copies])
{
    return DeploymentSuite.One(modelPath, imagePath, int.Parse(copies));
}
if (args is ["replot", var plotted])
{
    if (plotted == "latency") LatencySuite.Replot();
    else if (plotted == "accuracy") AccuracySuite.Replot();
    else return 2;
    return 0;
}
string suite = args.FirstOrDefault() ?? "";
var options = new Dictionary<string, string>();
for (int i = 1; i + 1 < args.Length; i += 2) options[args[i].TrimStart('-')] = args[i + 1];
string settings = string.Join(" ", options.Select(o => $"--{o.Key} {o.Value}"));
// A list is comma-separated, or semicolon-separated where its items hold commas ("bare call, LoRA;head only").
string[] List(string key, string[] fallback) => options.TryGetValue(key, out var v) ? v.Split(v.Contains(';') ? ';' : ',') : fallback;
int Int(string key, int fallback) => options.TryGetValue(key, out var v) ? int.Parse(v) : fallback;

var suites = suite == "all" ? ["latency", "training", "accuracy", "segmentation", "onnx", "deployment"] : new[] { suite };
foreach (string name in suites)
{
    var report = new Report(name, settings);
    switch (name)
    {
        case "latency":
            var latency = LatencySuite.Settings.Default;
            LatencySuite.Run(latency with
            {
                Models = List("models", latency.Models),
                Batches = [.. List("batches", [.. latency.Batches.Select(b => b.ToString())]).Select(int.Parse)],
                Rounds = Int("rounds", latency.Rounds),
                LargeBatchRounds = Int("large-batch-rounds", latency.LargeBatchRounds),
            }, report);
            break;
        case "training":
            TrainingStepSuite.Run(TrainingStepSuite.Settings.Default, report);
            break;
        case "accuracy":
            var accuracy = AccuracySuite.Settings.Default;
            AccuracySuite.Run(accuracy with { Tasks = List("tasks", accuracy.Tasks), Methods = List("methods", accuracy.Methods) }, report);
            break;
        case "methods":
            var methods = AccuracySuite.Settings.MethodComparison;
            AccuracySuite.Run(methods with { Tasks = List("tasks", methods.Tasks), Seeds = [.. List("seeds", [.. methods.Seeds.Select(s => s.ToString())]).Select(int.Parse)] }, report);
            break;
        case "prefix-precision":
            var prefix = AccuracySuite.Settings.PrefixPrecision;
            AccuracySuite.Run(prefix with { Tasks = List("tasks", prefix.Tasks), Seeds = [.. List("seeds", [.. prefix.Seeds.Select(s => s.ToString())]).Select(int.Parse)] }, report);
            break;
        case "segmentation":
            var segmentation = SegmentationSuite.Settings.Default;
            SegmentationSuite.Run(segmentation with
            {
                Seeds = [.. List("seeds", [.. segmentation.Seeds.Select(s => s.ToString())]).Select(int.Parse)],
                Methods = List("methods", segmentation.Methods),
            }, report);
            break;
        case "onnx":
            var onnx = OnnxSuite.Settings.Default;
            OnnxSuite.Run(onnx with { Models = List("models", onnx.Models), Batches = [.. List("batches", [.. onnx.Batches.Select(b => b.ToString())]).Select(int.Parse)] }, report);
            break;
        case "deployment":
            var deployment = DeploymentSuite.Settings.Default;
            DeploymentSuite.Run(deployment with { Models = List("models", deployment.Models), Copies = Int("copies", deployment.Copies) }, report);
            break;
        default:
            Console.Error.WriteLine("usage: RepAdapter.Benchmarks latency|training|accuracy|methods|segmentation|onnx|deployment|all [options] (see Program.cs)");
            return 2;
    }
    report.Write();
}
return 0;
