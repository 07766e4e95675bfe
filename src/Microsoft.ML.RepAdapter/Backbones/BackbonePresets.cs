using Microsoft.ML.RepAdapter.Torch;

namespace Microsoft.ML.RepAdapter.Backbones;

/// <summary>Builds backbones by their timm / torchvision preset name (randomly initialised; load weights separately).</summary>
public static class BackbonePresets
{
    /// <summary>Every family's presets, sorted.</summary>
    public static IEnumerable<string> Names => BackboneFamilies.PresetNames;

    /// <summary>
    /// Creates <paramref name="preset"/>; <paramref name="numClasses"/> overrides the preset's head (0: none),
    /// <paramref name="imageSize"/> its input resolution.
    /// </summary>
    public static Backbone Create(string preset, int? numClasses = null, double dropPathRate = 0, int? imageSize = null)
    {
        var family = BackboneFamilies.OfPreset(preset)
            ?? throw new ArgumentException($"Unknown backbone preset '{preset}'. Known presets: {string.Join(", ", Names)}.", nameof(preset));
        return ModuleScopes.Unscoped(() => family.Create(preset, new PresetOverrides(numClasses, imageSize, dropPathRate)));
    }
}
