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
    /// <summary>Families whose types another family may use: CLIP's image encoders are ViTs.</summary>
    private static readonly Dictionary<string, string[]> FamilyUses = new() { ["Clip"] = ["VisionTransformer"] };

    [GeneratedRegex(@"^(?:public |internal )?(?:(?:sealed|static|abstract|partial) )*(?:class|record|enum|struct|interface) (\w+)", RegexOptions.Multiline)]
    private static partial Regex TopLevelType();

    /// <summary>
    /// A backbone family is its folder and its registry line: no code outside Backbones/&lt;Family&gt;/ names a type
    /// declared there (its model, config, family, load options), except the registry's <c>XFamily.Instance</c>.
    /// Comments may mention families; code may not.
    /// </summary>
    [TestMethod]
    public void NoCodeOutsideAFamilysFolderNamesItsTypes()
    {
        string root = Path.Combine(TestData.RepoRoot, "src", "Microsoft.ML.RepAdapter");
        string backbones = Path.Combine(root, "Backbones");
        var sources = Directory.GetFiles(root, "*.cs", SearchOption.AllDirectories)
            .Where(f => !f.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}") && !f.Contains($"{Path.DirectorySeparatorChar}bin{Path.DirectorySeparatorChar}"))
            .ToDictionary(f => f, f => string.Join("\n", File.ReadAllLines(f).Select(CodeOnly)));
        var families = Directory.GetDirectories(backbones).ToDictionary(d => Path.GetFileName(d), d => Directory.GetFiles(d, "*.cs")
            .SelectMany(f => TopLevelType().Matches(File.ReadAllText(f)).Select(m => m.Groups[1].Value)).ToHashSet());
        Assert.IsGreaterThanOrEqualTo(5, families.Count);
        Assert.IsTrue(families["VisionTransformer"].Contains("VisionTransformerLoadOptions"), "a family's load options are declared in its folder");
        var violations = new List<string>();
        foreach (var (family, types) in families)
        {
            var name = new Regex($@"\b({string.Join("|", types)})\b");
            foreach (var (file, code) in sources)
            {
                string folder = Path.GetFileName(Path.GetDirectoryName(file)!);
                if (folder == family || FamilyUses.GetValueOrDefault(folder, []).Contains(family)) continue;
                foreach (Match match in name.Matches(code))
                {
                    bool registry = Path.GetFileName(file) == "BackboneFamily.cs" && code[match.Index..].StartsWith($"{family}Family.Instance,", StringComparison.Ordinal);
                    if (!registry) violations.Add($"{Path.GetRelativePath(root, file)} names {match.Value} (family {family})");
                }
            }
        }
        Assert.IsEmpty(violations, string.Join("\n", violations));
    }

    /// <summary>A source line without its comment (// to the end, outside string literals approximated by a leading //).</summary>
    private static string CodeOnly(string line)
    {
        string trimmed = line.TrimStart();
        if (trimmed.StartsWith("//", StringComparison.Ordinal)) return "";
        int comment = line.IndexOf(" // ", StringComparison.Ordinal);
        return comment >= 0 && line[..comment].Count(c => c == '"') % 2 == 0 ? line[..comment] : line;
    }
}
