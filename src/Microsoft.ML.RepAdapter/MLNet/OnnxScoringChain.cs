using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.Runtime;
using Microsoft.ML.Transforms.Image;

namespace Microsoft.ML.RepAdapter.MLNet;

/// <summary>
/// Builds <see cref="RepAdapterTransformerBase.ToOnnxPipeline"/>'s chain from ML.NET's own transformers only, so that the
/// saved .zip loads where neither TorchSharp nor this library is installed.
/// </summary>
internal static class OnnxScoringChain
{
    /// <summary>The resized image between ResizeImages and ExtractPixels (dropped at the end).</summary>
    public const string ResizedColumn = "RepAdapter.ResizedImage";

    /// <summary>The chain around <paramref name="onnx"/>, whose input is images of <paramref name="size"/>.</summary>
    public static TransformerChain<ITransformer> Create(MLContext mlContext, RepAdapterTransformerBase model, byte[] onnx, (int Width, int Height) size)
    {
        var env = CatalogUtils.GetEnvironment(mlContext.Transforms);
        var input = model.Input;
        // The estimators below learn nothing from data: they are fitted on an empty view with the image column alone.
        var schema = new DataViewSchema.Builder();
        schema.AddColumn(model.ImageColumnName, new ImageDataViewType());
        IDataView empty = new EmptyDataView(env, schema.ToSchema());
        var front = mlContext.Transforms.ResizeImages(ResizedColumn, size.Width, size.Height, model.ImageColumnName,
                ImageResizingEstimator.ResizingKind.Fill)
            // Planar [3, H, W] floats with the raw 0..255 values: the graph folds the normalisation into its stem.
            .Append(mlContext.Transforms.ExtractPixels(OnnxExport.PixelsName, ResizedColumn, ImagePixelExtractingEstimator.ColorBits.Rgb,
                input.Order == ChannelOrder.Rgb ? ImagePixelExtractingEstimator.ColorsOrder.ARGB : ImagePixelExtractingEstimator.ColorsOrder.ABGR,
                interleavePixelColors: false, offsetImage: 0f, scaleImage: 1f, outputAsFloatArray: true))
            // From a stream: the OnnxTransformer keeps the bytes and saves them inside the .zip.
            .Append(mlContext.Transforms.ApplyOnnxModel(model.OnnxScoringOutputs, [OnnxExport.PixelsName], new MemoryStream(onnx)))
            .Fit(empty);
        var chain = new TransformerChain<ITransformer>(front);
        var (tail, intermediate) = model.OnnxScoringTail(env);
        foreach (var transformer in tail) chain = chain.Append(transformer);
        string[] drop = [ResizedColumn, .. intermediate];
        return chain.Append<ITransformer>(mlContext.Transforms.DropColumns(drop).Fit(chain.Transform(empty)));
    }
}
