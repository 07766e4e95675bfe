namespace Microsoft.ML.RepAdapter;
internal static class Probe
{
    internal static string Check() => typeof(Microsoft.ML.ModelSaveContext).FullName + " " + TorchSharp.torch.ones(2).sum().item<float>();
}
