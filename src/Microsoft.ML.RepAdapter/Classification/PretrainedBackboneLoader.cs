using Microsoft.ML.RepAdapter.Backbones;

namespace Microsoft.ML.RepAdapter.Classification;

// Temporary: replaced by the checkpoint readers (Checkpoints/).
internal static class PretrainedBackboneLoader
{
    public static Backbone Load(string path, string architecture, int classes, int? imageSize, bool keepPreLogits) =>
        throw new NotSupportedException($"Loading {path} is not available yet.");
}
