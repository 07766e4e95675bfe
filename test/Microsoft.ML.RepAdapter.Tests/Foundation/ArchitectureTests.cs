using System.Text.RegularExpressions;

namespace Microsoft.ML.RepAdapter.Tests.Foundation;

/// <summary>
/// The library's namespaces form layers and depend only downwards (no cycles): read from the source, so that a new
/// dependency against the grain fails here instead of in a later refactoring.
/// </summary>
[TestClass]
public partial class ArchitectureTests
{
    /// <summary>Bottom to top; a namespace may use only namespaces of lower rank.</summary>
    private static readonly Dictionary<string, int> Layers = new()
    {
        ["Torch"] = 0,           // TorchSharp helpers: dispose scopes, finiteness, init, devices
        ["Formats"] = 1,         // checkpoint file formats (safetensors, npz, pth, ONNX): never name a family
        ["Adapters"] = 1,        // adapter config, layers, attach / train / merge
        ["Backbones"] = 2,       // the feature contract, the family registry and one folder per family
        ["Checkpoints"] = 3,     // reading weights into backbones, writing them out
        ["Training"] = 3,        // the fine-tuning loop over an objective
        ["MLNet"] = 4,           // trainer and transformer bases, image columns
        ["Classification"] = 5,  // tasks
        ["Segmentation"] = 5,
        [""] = 6,                // catalog entry points
    };

    [GeneratedRegex(@"^namespace Microsoft\.ML\.RepAdapter\.?(\w*)\s*;", RegexOptions.Multiline)]
    private static partial Regex Namespace();

    [GeneratedRegex(@"Microsoft\.ML\.RepAdapter\.(\w+)")]
    private static partial Regex Reference();

    [TestMethod]
    public void NamespacesDependOnlyOnLowerLayers()
    {
        var violations = new List<string>();
        var sources = Directory.GetFiles(Path.Combine(TestData.RepoRoot, "src", "Microsoft.ML.RepAdapter"), "*.cs", SearchOption.AllDirectories)
            .Where(f => !f.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}") && !f.Contains($"{Path.DirectorySeparatorChar}bin{Path.DirectorySeparatorChar}"))
            .ToList();
        Assert.IsGreaterThan(20, sources.Count);
        foreach (string file in sources)
        {
            string text = File.ReadAllText(file);
            var declared = Namespace().Match(text);
            if (!declared.Success) continue;
            string own = declared.Groups[1].Value;
            Assert.IsTrue(Layers.ContainsKey(own), $"{file}: namespace '{own}' has no layer; add it to {nameof(Layers)}");
            foreach (var used in Reference().Matches(text).Select(m => m.Groups[1].Value).Where(Layers.ContainsKey).Distinct())
            {
                if (used != own && Layers[used] >= Layers[own])
                    violations.Add($"{Path.GetRelativePath(TestData.RepoRoot, file)}: {own} (layer {Layers[own]}) uses {used} (layer {Layers[used]})");
            }
        }
        Assert.HasCount(0, violations, string.Join("\n", violations));
    }
}
