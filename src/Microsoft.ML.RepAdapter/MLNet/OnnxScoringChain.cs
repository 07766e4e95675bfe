using Microsoft.ML.Data;
using Microsoft.ML.RepAdapter.Backbones;
using Microsoft.ML.Runtime;
using Microsoft.ML.Transforms.Image;
using Microsoft.ML.Transforms.Onnx;

namespace Microsoft.ML.RepAdapter.MLNet;

/// <summary>
/// Builds <see cref="RepAdapterTransformerBase.ToOnnxPipeline"/>'s chain from ML.NET's own transformers only, so that the
/// saved .zip loads where neither TorchSharp nor this library is installed.
/// </summary>
internal static class OnnxScoringChain
{
    /// <summary>
    /// Names for the chain's own columns (the resized image, the pixels, the graph's outputs) that no user column has:
    /// fixed names would collide with the user's (a column called "pixels" would be overwritten, and dropping it would
    /// drop the user's). The graph's inputs and outputs are renamed the same way, since ApplyOnnxModel maps columns by name.
    /// </summary>
    public static Func<string, string> UniqueColumns()
    {
        string prefix = $"RepAdapter.{Guid.NewGuid():N}"[..19];
        return name => $"{prefix}.{name}";
    }

    /// <summary>
    /// The chain around <paramref name="onnx"/> (whose inputs and outputs <paramref name="column"/> has renamed), whose
    /// input is images of <paramref name="size"/>; it ends with the task's columns and drops its own.
    /// </summary>
    public static TransformerChain<ITransformer> Create(MLContext mlContext, RepAdapterTransformerBase model, byte[] onnx, Func<string, string> column,
        (int Width, int Height) size)
    {
        var env = CatalogUtils.GetEnvironment(mlContext.Transforms);
        var input = model.Input;
        string resized = column("resized"), pixels = column(OnnxExport.PixelsName);
        string[] outputs = [.. model.OnnxScoringOutputs.Select(column)];
        // The estimators below learn nothing from data: they are fitted on an empty view with the image column alone.
        var schema = new DataViewSchema.Builder();
        schema.AddColumn(model.ImageColumnName, new ImageDataViewType());
        IDataView empty = new EmptyDataView(env, schema.ToSchema());
        var front = mlContext.Transforms.ResizeImages(resized, size.Width, size.Height, model.ImageColumnName, ImageResizingEstimator.ResizingKind.Fill)
            // Planar [3, H, W] floats with the raw 0..255 values: the graph folds the normalisation into its stem.
            .Append(mlContext.Transforms.ExtractPixels(pixels, resized, ImagePixelExtractingEstimator.ColorBits.Rgb,
                input.Order == ChannelOrder.Rgb ? ImagePixelExtractingEstimator.ColorsOrder.ARGB : ImagePixelExtractingEstimator.ColorsOrder.ABGR,
                interleavePixelColors: false, offsetImage: 0f, scaleImage: 1f, outputAsFloatArray: true))
            .Append(ApplyOnnx(mlContext, env, outputs, pixels, onnx))
            .Fit(empty);
        var chain = new TransformerChain<ITransformer>(front);
        foreach (var transformer in model.OnnxScoringTail(mlContext, chain.Transform(empty), column)) chain = chain.Append(transformer);
        return chain.Append<ITransformer>(mlContext.Transforms.DropColumns([resized, pixels, .. outputs]).Fit(chain.Transform(empty)));
    }

    /// <summary>
    /// ApplyOnnxModel from the bytes (kept, and saved inside the .zip) on the context's device: ONNX Runtime's CUDA provider
    /// when <c>GpuDeviceId</c> is set (Microsoft.ML.OnnxRuntime.Gpu.Linux in the application), else the CPU. ML.NET's own
    /// fallback misses the CPU package's lack of the CUDA entry point, so <c>FallbackToCpu</c> is applied here too.
    /// </summary>
    private static OnnxScoringEstimator ApplyOnnx(MLContext mlContext, IHostEnvironment env, string[] outputs, string pixels, byte[] onnx)
    {
        try
        {
            return mlContext.Transforms.ApplyOnnxModel(outputs, [pixels], new MemoryStream(onnx), mlContext.GpuDeviceId, mlContext.FallbackToCpu);
        }
        catch (EntryPointNotFoundException e) when (mlContext.GpuDeviceId is int gpu)
        {
            string why = $"GpuDeviceId {gpu} asks ONNX Runtime for its CUDA provider, which the application's ONNX Runtime package lacks "
                + "(reference Microsoft.ML.OnnxRuntime.Gpu.Linux instead of Microsoft.ML.OnnxRuntime)";
            if (!mlContext.FallbackToCpu) throw new InvalidOperationException($"{why}, and FallbackToCpu is false.", e);
            using (var ch = env.Start("ToOnnxPipeline")) ch.Warning($"{why}: scoring on the CPU.");
            // A context without a GPU: ML.NET would otherwise take the GPU from the context again.
            return new MLContext().Transforms.ApplyOnnxModel(outputs, [pixels], new MemoryStream(onnx));
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException or TypeInitializationException
                                  || e.InnerException is DllNotFoundException or EntryPointNotFoundException or TypeInitializationException)
        {
            throw new InvalidOperationException(
                "ToOnnxPipeline needs ONNX Runtime's native library, which the application does not reference: add the package "
                + "Microsoft.ML.OnnxRuntime (CPU) or Microsoft.ML.OnnxRuntime.Gpu.Linux (CUDA; set MLContext.GpuDeviceId) at a "
                + $"version of Microsoft.ML.OnnxRuntime.Managed's (1.30 or later). ONNX Runtime said: {e.Message}", e);
        }
    }
}
