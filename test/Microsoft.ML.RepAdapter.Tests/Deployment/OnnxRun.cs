using Microsoft.ML.OnnxRuntime;
using DenseTensor = Microsoft.ML.OnnxRuntime.Tensors.DenseTensor<float>;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Tests.Deployment;

/// <summary>Runs exported models with ONNX Runtime and compares them with TorchSharp.</summary>
internal static class OnnxRun
{
    /// <summary>An ONNX Runtime session on the model <paramref name="export"/> writes (e.g. <c>model.ExportOnnx</c>).</summary>
    public static InferenceSession Session(Action<Stream> export)
    {
        using var stream = new MemoryStream();
        export(stream);
        return new InferenceSession(stream.ToArray());
    }

    /// <summary>
    /// The model's output <paramref name="output"/> (default: its first) for <paramref name="pixels"/> (uint8 or float
    /// [N, 3, S, S]) fed as float input "pixels"; an int64 output comes back as int64.
    /// </summary>
    public static Tensor Run(InferenceSession session, Tensor pixels, string input = "pixels", string? output = null)
    {
        var values = pixels.to(float32).contiguous().data<float>().ToArray();
        var dense = new DenseTensor(values, [.. pixels.shape.Select(d => (int)d)]);
        using var results = session.Run([NamedOnnxValue.CreateFromTensor(input, dense)]);
        var result = output is null ? results.First() : results.Single(r => r.Name == output);
        if (result.ElementType == Microsoft.ML.OnnxRuntime.Tensors.TensorElementType.Int64)
        {
            var indices = result.AsTensor<long>();
            return tensor(indices.ToArray()).reshape([.. indices.Dimensions.ToArray().Select(d => (long)d)]);
        }
        var floats = result.AsTensor<float>();
        return tensor(floats.ToArray()).reshape([.. floats.Dimensions.ToArray().Select(d => (long)d)]);
    }

    /// <summary>Random uint8 pixels [N, 3, S, S].</summary>
    public static Tensor Pixels(int batch, int size, int seed = 3) =>
        randint(0, 256, [batch, 3, size, size], dtype: ScalarType.Byte, generator: new Generator((ulong)seed));

    /// <summary>Max |a - b| must be at most <paramref name="tolerance"/> times max(1, max |a|).</summary>
    public static void AssertClose(Tensor expected, Tensor actual, string what, float tolerance = 1e-4f)
    {
        CollectionAssert.AreEqual(expected.shape, actual.shape, $"{what}: shape");
        float scale = Math.Max(1f, TinyModels.MaxAbs(expected));
        float diff = TinyModels.MaxAbsDiff(expected, actual);
        Assert.IsLessThanOrEqualTo(tolerance * scale, diff, $"{what}: max |ONNX - TorchSharp| {diff} (scale {scale})");
    }
}
