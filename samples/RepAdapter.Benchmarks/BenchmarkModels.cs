using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.RepAdapter.Checkpoints;
using static TorchSharp.torch;

namespace RepAdapter.Benchmarks;

/// <summary>The models the suites measure, built the same way in each.</summary>
internal static class BenchmarkModels
{
    /// <summary>
    /// ML.NET's pretrained ResNet-18 by its name (<see cref="PretrainedBackbones.MLNetResNet18"/>), else the preset from
    /// random weights; <paramref name="numClasses"/> null keeps the preset's head (the built-in weights have none).
    /// </summary>
    public static Backbone Create(string name, int? numClasses = null) =>
        name == PretrainedBackbones.MLNetResNet18
            ? PretrainedBackbones.LoadMLNetResNet18(numClasses ?? 0).Backbone
            : BackbonePresets.Create(name, numClasses);

    /// <summary>A preset's name as a reader knows the model (CLIP's "ViT-B/32" is not timm's ViT-B/32).</summary>
    public static string DisplayName(string name) => name switch
    {
        "ViT-B/32" => "CLIP ViT-B/32",
        "vit_base_patch16_224" => "ViT-B/16",
        "resnet18" => "ResNet-18",
        PretrainedBackbones.MLNetResNet18 => "ML.NET ResNet-18",
        "swin_tiny_patch4_window7_224" => "Swin-T",
        "convnext_tiny" => "ConvNeXt-T",
        _ => name,
    };

    /// <summary>Gives <paramref name="model"/>'s attached adapters random non-zero weights (std 0.02), as trained ones have.</summary>
    public static void RandomizeAdapters(Backbone model)
    {
        using var _ = no_grad();
        foreach (var (_, p) in model.named_parameters().Where(p => BackboneAdapters.IsAdapterParameter(p.name))) p.normal_(0, 0.02);
    }
}
