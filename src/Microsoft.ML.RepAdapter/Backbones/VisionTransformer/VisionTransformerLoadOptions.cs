namespace Microsoft.ML.RepAdapter.Backbones;

/// <summary>
/// What a ViT checkpoint (and a CLIP image encoder, which is one) can be told beyond its shapes. Give them through the
/// loader's <c>loadOptions</c> or the trainer's <c>BackboneLoadOptions</c>.
/// </summary>
/// <param name="NumHeads">
/// Attention heads, which the shapes do not tell: null takes the preset's, else width / 64 (the rule of ViT-Ti/S/B/L;
/// 16 for ViT-H/g/bigG).
/// </param>
/// <param name="KeepPreLogits">
/// Keep the pre-logits layer (fc + tanh) of Google's ImageNet-21k checkpoints. Off by default, as in current timm: the
/// head trained on it is then left out too.
/// </param>
public sealed record VisionTransformerLoadOptions(int? NumHeads = null, bool KeepPreLogits = false) : FamilyLoadOptions
{
    /// <inheritdoc/>
    public override void Validate()
    {
        if (NumHeads is <= 0) throw new ArgumentOutOfRangeException(nameof(NumHeads), NumHeads, "must be positive (or null)");
    }
}
