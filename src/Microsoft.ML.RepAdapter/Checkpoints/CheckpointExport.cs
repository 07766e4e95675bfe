using Microsoft.ML.RepAdapter.Formats;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;

namespace Microsoft.ML.RepAdapter.Checkpoints;

/// <summary>Writing backbones back out for other frameworks.</summary>
public static class CheckpointExport
{
    /// <summary>
    /// Writes the merged backbone's state dict as .safetensors. Parameter names are timm's (ViT) or torchvision's
    /// (ResNet), so PyTorch users load the file into the reference model unchanged
    /// (<c>model.load_state_dict(safetensors.torch.load_file(path))</c>). Adapters must be merged first
    /// (<see cref="BackboneAdapters.MergeAdapters"/>): the file then holds the plain architecture. (ML.NET's ResNet-18
    /// also writes its <c>input_offset</c> buffer, which torchvision's ResNet does not have.)
    /// </summary>
    public static void SaveMergedSafeTensors(Backbone backbone, string path)
    {
        int unmerged = backbone.AdaptedLayers().Count();
        if (unmerged > 0)
            throw new InvalidOperationException(
                $"{backbone.Architecture} still has {unmerged} adapters: call MergeAdapters() first, so that the file holds the plain {backbone.Architecture} architecture.");
        var metadata = new Dictionary<string, string>
        {
            // "pt" is what safetensors.torch writes; timm and transformers check for it.
            ["format"] = "pt",
            ["architecture"] = backbone.Architecture,
            ["producer"] = "Microsoft.ML.RepAdapter",
        };
        SafeTensorsWriter.Write(path, backbone.state_dict(), metadata);
    }
}
