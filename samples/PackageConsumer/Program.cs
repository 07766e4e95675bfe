// Proves that an application consuming the NuGet package runs TorchSharp through the library:
// builds a small ViT, attaches RepAdapters, perturbs them, merges, and checks the logits agree.
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Backbones;
using static TorchSharp.torch;

manual_seed(0);
var vit = new VisionTransformer(new VisionTransformerConfig(ImageSize: 32, PatchSize: 8, EmbedDim: 64, Depth: 2, NumHeads: 4, NumClasses: 3));
vit.AttachAdapters(new AdapterConfig(Scale: 0.5f));
using (no_grad())
{
    foreach (var (name, p) in vit.named_parameters().Where(p => BackboneAdapters.IsAdapterParameter(p.name))) p.normal_(0, 0.05);
}
vit.eval();
var images = randn(2, 3, 32, 32);
using var _ = no_grad();
var adapted = vit.forward(images);
int merged = vit.MergeAdapters();
var plain = vit.forward(images);
float diff = (adapted - plain).abs().max().item<float>();
Console.WriteLine($"TorchSharp loaded; merged {merged} adapters; max |logit diff| = {diff:E2}");
return diff <= 1e-4f ? 0 : 1;
