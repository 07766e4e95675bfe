using System.Reflection;
using Microsoft.ML.RepAdapter.Torch;
using Microsoft.ML.RepAdapter.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Tests.Foundation;

/// <summary>
/// TorchSharp 0.107 hands libtorch a Scalar's handle without keeping the Scalar alive, so a garbage collection during the
/// call can free it (<see cref="Scalars"/>): the library must never create one implicitly or call a TorchSharp method that
/// does. Read from the IL of both assemblies, so that a new <c>x * 0.5</c> or <c>a + b</c> fails here, not once in a
/// few training runs.
/// </summary>
[TestClass]
public class ScalarLifetimeTests
{
    // A Scalar's Dispose, directly or through `using`: the call after the last use keeps it alive until then.
    private static readonly string[] Disposes = ["TorchSharp.Scalar::Dispose()", "System.IDisposable::Dispose()"];

    private static bool Creates(string method) =>
        method.StartsWith("TorchSharp.Scalar::op_Implicit(", StringComparison.Ordinal)
        || method.StartsWith("TorchSharp.ScalarExtensionMethods::ToScalar(", StringComparison.Ordinal);

    private static readonly Lazy<HashSet<string>> TorchSharpTemporaries = new(() =>
    {
        // A TorchSharp method that makes a Scalar and never disposes it, or calls one that does (strictly: a `using`
        // of anything else does not count).
        var calls = MethodCalls.Read(typeof(torch).Assembly.Location);
        var temporaries = calls.Where(m => m.Value.Any(Creates) && !m.Value.Contains(Disposes[0])).Select(m => m.Key).ToHashSet();
        for (int found = -1; found != temporaries.Count;)
        {
            found = temporaries.Count;
            foreach (var (method, called) in calls)
                if (called.Any(temporaries.Contains)) temporaries.Add(method);
        }
        return temporaries;
    });

    private static readonly Lazy<Dictionary<string, List<string>>> Library = new(() => MethodCalls.Read(typeof(Scalars).Assembly.Location));

    [TestMethod]
    public void TheScanFindsTheTemporariesThatCrashedTraining()
    {
        // The two seen in failed runs: Tensor + Tensor (alpha 1) and AdamW's step (a division by a number).
        var temporaries = TorchSharpTemporaries.Value;
        Assert.Contains("TorchSharp.torch/Tensor::op_Addition(TorchSharp.torch/Tensor,TorchSharp.torch/Tensor)", temporaries);
        Assert.IsTrue(temporaries.Any(m => m.StartsWith("TorchSharp.Modules.AdamW::<step>", StringComparison.Ordinal)), "AdamW's step");
        Assert.DoesNotContain("TorchSharp.torch/Tensor::mul(TorchSharp.torch/Tensor)", temporaries);
        // And the library's own calls are read: the embedding's addition goes through Scalars.
        var embed = Library.Value.Single(m => m.Key.StartsWith("Microsoft.ML.RepAdapter.Backbones.VisionTransformer::Embed(", StringComparison.Ordinal));
        Assert.Contains("Microsoft.ML.RepAdapter.Torch.Scalars::Plus(TorchSharp.torch/Tensor,TorchSharp.torch/Tensor)", embed.Value);
    }

    [TestMethod]
    public void NoLibraryMethodHandsLibTorchATemporaryScalar()
    {
        var temporaries = TorchSharpTemporaries.Value;
        var violations = new List<string>();
        foreach (var (method, called) in Library.Value)
        {
            bool keepsAlive = called.Any(Disposes.Contains) || method == "Microsoft.ML.RepAdapter.Torch.Scalars::.cctor()";
            foreach (string target in called.Distinct())
            {
                if (target.StartsWith("TorchSharp.Scalar::op_Implicit(", StringComparison.Ordinal)
                    || (Creates(target) && !keepsAlive) || temporaries.Contains(target))
                    violations.Add($"{method} calls {target}");
            }
        }
        Assert.HasCount(0, violations, "use Torch.Scalars instead:\n" + string.Join("\n", violations));
    }

    [TestMethod]
    public void NoModuleOrOptimiserTheLibraryBuildsMakesTemporariesInItsForwardOrStep()
    {
        // Virtual calls (module.forward, optimizer.step) are not in the library's IL: check what its factories return.
        var temporaries = TorchSharpTemporaries.Value;
        // BatchNorm makes one only in training mode (num_batches_tracked += 1); ResNet keeps its BatchNorm in eval mode.
        string[] evalOnly = ["TorchSharp.Modules.BatchNorm"];
        var factories = new[] { typeof(nn), typeof(optim) }.SelectMany(t => t.GetMethods(BindingFlags.Public | BindingFlags.Static)).ToList();
        var violations = new List<string>();
        foreach (string target in Library.Value.Values.SelectMany(c => c).Distinct())
        {
            if (!(target.StartsWith("TorchSharp.torch/nn::", StringComparison.Ordinal) || target.StartsWith("TorchSharp.torch/optim::", StringComparison.Ordinal))) continue;
            string name = target.Split("::")[1].Split('(')[0];
            foreach (var type in factories.Where(f => f.Name == name).Select(f => f.ReturnType).Distinct())
            {
                for (var t = type; t is not null && t.Assembly == typeof(torch).Assembly; t = t.BaseType)
                {
                    string prefix = $"{t.FullName!.Split('`')[0].Replace('+', '/')}::";
                    if (evalOnly.Contains(t.FullName)) continue;
                    if (temporaries.Any(m => m.StartsWith(prefix + "forward(", StringComparison.Ordinal) || m.StartsWith(prefix + "<step>", StringComparison.Ordinal)))
                        violations.Add($"{target} builds {t.FullName}");
                }
            }
        }
        Assert.HasCount(0, violations, string.Join("\n", violations));
        Assert.IsFalse(Library.Value.Values.Any(c => c.Any(m => m.StartsWith("TorchSharp.torch/optim::", StringComparison.Ordinal))),
            "training builds its optimiser as KeepAliveAdamW");
    }

    [TestMethod]
    public void KeepAliveAdamWStepsAsTorchSharpsAdamW()
    {
        using var scope = NewDisposeScope();
        var generator = new Generator(7);
        Parameter Make() => new(randn([6, 5], generator: generator));
        var ours = Make();
        var theirs = new Parameter(ours.detach().clone());
        var start = ours.detach().clone();
        using var keepAlive = new KeepAliveAdamW([ours], lr: 3e-3, weightDecay: 0.05);
        using var reference = optim.AdamW([theirs], lr: 3e-3, weight_decay: 0.05);
        for (int step = 0; step < 25; step++)
        {
            var grad = randn([6, 5], generator: generator);
            ours.grad = grad.clone();
            theirs.grad = grad.clone();
            // The schedule sets the rate per epoch: follow it here too.
            foreach (var group in keepAlive.ParamGroups) group.LearningRate = 3e-3 / (1 + step);
            foreach (var group in reference.ParamGroups) group.LearningRate = 3e-3 / (1 + step);
            keepAlive.step();
            reference.step();
        }
        Assert.IsGreaterThan(1e-3, (ours - start).abs().max().item<float>(), "the parameters moved");
        Assert.IsTrue(ours.allclose(theirs, rtol: 1e-5, atol: 1e-7), $"max difference {(ours - theirs).abs().max().item<float>()}");
    }

    [TestMethod]
    public void ScalarsSurviveGarbageCollectionsDuringTheCall()
    {
        // Another thread collecting and finalising all the time: Plus, Times and With read what they were given.
        using var stop = new CancellationTokenSource();
        var collector = Task.Run(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                GC.Collect();
                GC.WaitForPendingFinalizers();
            }
        });
        try
        {
            using var scope = NewDisposeScope();
            var a = ones(2048, 2048);
            var weight = new Parameter(ones(1024, 1024));
            using var optimizer = new KeepAliveAdamW([weight], lr: 1e-3, weightDecay: 0.05);
            for (int i = 0; i < 120; i++)
            {
                using var step = NewDisposeScope();
                float sum = a.Plus(a).Times(0.5).Plus(1.0).sum().item<float>();
                Assert.AreEqual(2 * 2048 * 2048, sum, $"iteration {i}");
                Assert.AreEqual(2048L * 2048, Scalars.With(2, a.Plus(a).eq).sum().item<long>());
                weight.grad = ones(1024, 1024);
                optimizer.step();
            }
            // A constant gradient moves each weight by lr per step (Adam's normalised step), less the decay.
            Assert.IsTrue(weight.allclose(full(1024, 1024, weight[0, 0].item<float>())), "every weight moved alike");
            Assert.IsLessThan(1 - 0.1, weight[0, 0].item<float>());
        }
        finally
        {
            stop.Cancel();
            collector.Wait();
        }
    }
}
