using Microsoft.ML.RepAdapter.Torch;

namespace Microsoft.ML.RepAdapter.Backbones;

/// <summary>Builds backbones by their timm / torchvision preset name (randomly initialised; load weights separately).</summary>
public static class BackbonePresets
{
    public static IEnumerable<string> Names =>
        VisionTransformerConfig.Presets.Keys.Concat(ResNetConfig.Presets.Keys).Order(StringComparer.Ordinal);

    /// <summary>
    /// Creates <paramref name="preset"/>; <paramref name="numClasses"/> overrides the preset's head (0: none),
    /// <paramref name="imageSize"/> its input resolution.
    /// </summary>
    public static Backbone Create(string preset, int? numClasses = null, double dropPathRate = 0, int? imageSize = null) =>
        ModuleScopes.Unscoped(() => CreateInScope(preset, numClasses, dropPathRate, imageSize));

    private static Backbone CreateInScope(string preset, int? numClasses, double dropPathRate, int? imageSize)
    {
        if (VisionTransformerConfig.Presets.TryGetValue(preset, out var vit))
        {
            vit = vit with { DropPathRate = dropPathRate, NumClasses = numClasses ?? vit.NumClasses, ImageSize = imageSize ?? vit.ImageSize };
            return new VisionTransformer(vit, preset);
        }
        if (ResNetConfig.Presets.TryGetValue(preset, out var resnet))
            return new ResNet(resnet with { NumClasses = numClasses ?? resnet.NumClasses, ImageSize = imageSize ?? resnet.ImageSize }, preset);
        throw new ArgumentException($"Unknown backbone preset '{preset}'. Known presets: {string.Join(", ", Names)}.", nameof(preset));
    }
}
