using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Formats;
using Microsoft.ML.RepAdapter.Torch;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Backbones;

/// <summary>How an ONNX file is written.</summary>
public sealed record OnnxExportOptions
{
    /// <summary>
    /// Weights larger than this many bytes in all are written as ONNX external data (a <c>.onnx.data</c> file next to
    /// the model, which ONNX Runtime reads when it loads the model from its path). Null (the default): only when they
    /// would not fit in one protobuf message (2 GB). ViT-L/16, 304 M parameters, is 1.2 GB in float32 and fits.
    /// </summary>
    public long? ExternalDataThresholdBytes { get; init; }

    /// <summary>
    /// How weights are stored and multiplied (default: float32). <see cref="OnnxQuantization.DynamicInt8"/>: the linear
    /// layers in int8 for ONNX Runtime's int8 kernels.
    /// </summary>
    public OnnxQuantization Quantization { get; init; }
}

/// <summary>The number format of an exported model's weights.</summary>
public enum OnnxQuantization
{
    /// <summary>float32 throughout.</summary>
    None,

    /// <summary>
    /// ONNX Runtime's dynamic quantization (its <c>quantize_dynamic</c> with per-channel int8 weights): every linear layer
    /// (attention's qkv and projection, the MLPs, ConvNeXt's pointwise layers, the head) keeps int8 weights in a 7-bit
    /// range (exact on CPUs without VNNI too; see <see cref="OnnxGraphBuilder.QuantizeLinearWeights"/>), one scale per
    /// output channel, and quantizes its input to uint8 at run time, one scale per tensor; ONNX Runtime then runs them on
    /// its int8 matrix kernels (VNNI where the CPU has it). Convolutions stay float32: dynamic quantization is ONNX
    /// Runtime's scheme for transformers, while for convolutions it recommends static quantization with calibration data,
    /// and its dynamic ConvInteger has no fused fast kernel. So the transformers gain most, ResNet almost nothing (only
    /// its head is linear). Accuracy: see docs/deployment.md.
    /// </summary>
    DynamicInt8,
}

/// <summary>
/// What every ONNX export shares: the checks, the <c>pixels</c> input, the stem convolution with the input
/// normalisation folded in, BatchNorm folding, and writing. Families call these from their emitters.
/// </summary>
internal static class OnnxExport
{
    /// <summary>The graph input: raw pixel values as float [batch, 3, S, S].</summary>
    public const string PixelsName = "pixels";

    /// <summary>A graph of <paramref name="backbone"/> and its head, dynamic batch: logits (or features without a head).</summary>
    public static OnnxGraphBuilder Classifier(Backbone backbone) =>
        Build(backbone.Architecture, backbone, backbone.Input, "batch", backbone.EmitForward,
            (graph, output) => graph.Output(output, backbone.NumClasses > 0 ? "logits" : "features", OnnxFields.DataType.Float, "batch",
                backbone.NumClasses > 0 ? backbone.NumClasses : backbone.FeatureDim), declarePixels: graph => backbone.EmitPixelsInput(graph, "batch"));

    /// <summary>
    /// A graph of <paramref name="model"/> (checked to be merged): the <c>pixels</c> input for <paramref name="input"/>
    /// with <paramref name="batch"/> as its first dimension, <paramref name="network"/>'s nodes on it, then
    /// <paramref name="outputs"/> declaring the graph's outputs from the network's value. Runs without gradients; the
    /// builder is disposed if anything fails. With <paramref name="source"/>, the input is images of that size, which the
    /// graph resamples to the model's size first (<see cref="ResizeAsPreprocessor"/>); else <paramref name="declarePixels"/>
    /// declares it (a backbone's own input), or images of the model's size.
    /// </summary>
    public static OnnxGraphBuilder Build(string name, nn.Module model, ImageInputSpec input, OnnxDim batch,
        Func<OnnxGraphBuilder, string, string> network, Action<OnnxGraphBuilder, string> outputs, (int Width, int Height)? source = null,
        Func<OnnxGraphBuilder, string>? declarePixels = null)
    {
        CheckExportable(model, name);
        var graph = new OnnxGraphBuilder(name);
        try
        {
            using var scope = NewDisposeScope();
            using var _ = no_grad();
            string pixels = source is var (width, height) && (width, height) != (input.ImageSize, input.ImageSize)
                ? ResizeAsPreprocessor(graph, PixelsInput(graph, input, batch, height, width), input)
                : declarePixels?.Invoke(graph) ?? PixelsInput(graph, input, batch);
            outputs(graph, network(graph, pixels));
            graph.Metadata["model"] = name;
            return graph;
        }
        catch
        {
            graph.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Declares the <c>pixels</c> input for <paramref name="input"/> (images of <paramref name="height"/> x
    /// <paramref name="width"/>, by default the model's size) and records how it is fed in the model's metadata.
    /// </summary>
    public static string PixelsInput(OnnxGraphBuilder graph, ImageInputSpec input, OnnxDim batch, int? height = null, int? width = null)
    {
        int h = height ?? input.ImageSize, w = width ?? input.ImageSize;
        graph.Metadata["input"] = $"{PixelsName}: float [batch, 3, {h}, {w}], raw pixel values 0..255, channels {input.Order.ToString().ToUpperInvariant()}, NCHW"
            + (h == input.ImageSize && w == input.ImageSize ? "" : $"; resampled to {input.ImageSize} x {input.ImageSize} in the graph");
        graph.Metadata["normalization"] = $"(pixel * {input.PixelScale:R} - mean) / std, mean [{string.Join(", ", input.Mean)}], std [{string.Join(", ", input.Std)}], in the graph";
        return graph.Input(PixelsName, OnnxFields.DataType.Float, batch, 3, h, w);
    }

    /// <summary>
    /// Resamples raw pixels to the model's size as <c>ImagePreprocessor</c> does: PyTorch's antialiased bicubic, which
    /// uses PIL's kernel (a = -0.5, taps outside the image dropped and the weights renormalised: ONNX's
    /// <c>exclude_outside</c>), half-pixel centres, then rounded and clamped to 0..255 as the uint8 pixels are. Opset 17's
    /// Resize has no antialiasing, so this is the same filter when enlarging (or keeping the size) only; when shrinking,
    /// antialiasing widens the kernel and the two differ.
    /// </summary>
    public static string ResizeAsPreprocessor(OnnxGraphBuilder graph, string pixels, ImageInputSpec input)
    {
        string sizes = graph.Concat(0, graph.Slice(graph.Shape(pixels), 0, 0, 2), graph.Ints(input.ImageSize, input.ImageSize));
        string resized = graph.Node("Resize", [pixels, "", "", sizes], ("mode", "cubic"), ("cubic_coeff_a", -0.5f), ("exclude_outside", 1L),
            ("coordinate_transformation_mode", "half_pixel"));
        return graph.Node("Clip", [graph.Node("Round", [resized]), graph.Scalar(0f), graph.Scalar(255f)]);
    }

    /// <summary>Throws unless <paramref name="model"/> is a merged model (no adapter modules left).</summary>
    public static void CheckExportable(nn.Module model, string what)
    {
        var unmerged = model.AdaptedLayers().Count();
        if (unmerged > 0)
            throw new InvalidOperationException(
                $"{what} has {unmerged} unmerged adapters: ONNX export writes the plain architecture, so merge them first (MergeAdapters(); a trained transformer's model is already merged).");
    }

    public static void Write(OnnxGraphBuilder graph, Stream stream, OnnxExportOptions? options = null)
    {
        using (graph) OnnxWriter.Write(Quantized(graph, options), stream);
    }

    public static void Write(OnnxGraphBuilder graph, string path, OnnxExportOptions? options)
    {
        using (graph) OnnxWriter.Write(Quantized(graph, options), path, options?.ExternalDataThresholdBytes);
    }

    private static OnnxGraphBuilder Quantized(OnnxGraphBuilder graph, OnnxExportOptions? options)
    {
        switch (options?.Quantization ?? OnnxQuantization.None)
        {
            case OnnxQuantization.None:
                break;
            case OnnxQuantization.DynamicInt8:
                graph.Metadata["quantization"] = $"dynamic int8: {graph.QuantizeLinearWeights()} linear layers with int8 weights (per output channel) and uint8 activations (per tensor, at run time); convolutions float32";
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(options), options!.Quantization, "Unknown ONNX quantization.");
        }
        return graph;
    }

    /// <summary>
    /// The stem's first convolution applied to the normalised input, from raw pixels. Normalisation is x * a_c + b_c
    /// (a = PixelScale / Std, b = -Mean / Std), plus an optional fixed per-pixel <paramref name="inputOffset"/>.
    /// An unpadded convolution sees only real pixels, so the whole map folds into it exactly: W' = W a,
    /// bias' = bias + sum W b. A zero-padded one does not: its padding is zero in the normalised input, which no raw
    /// pixel value produces once b is folded away. There the scale still folds (zero times a is zero) and the shift
    /// stays an Add in front of the conv: a (x + (b + offset) / a).
    /// </summary>
    public static string NormalizedConv(OnnxGraphBuilder graph, string pixels, ImageInputSpec input, Tensor weight, Tensor? bias,
        long kernel, long stride, long padding, string hint, Tensor? inputOffset = null)
    {
        using var scope = NewDisposeScope();
        var scale = tensor(input.Std.Select(s => input.PixelScale / s).ToArray());
        var shift = tensor(input.Mean.Zip(input.Std, (m, s) => -m / s).ToArray());
        var original = weight.detach().to(float32);
        var w = original * scale.view(1, 3, 1, 1);
        if (padding == 0 && inputOffset is null)
        {
            var b = (bias?.detach().to(float32) ?? zeros(weight.shape[0])).Plus((original * shift.view(1, 3, 1, 1)).sum([1, 2, 3]));
            return graph.Conv(pixels, graph.Initializer(hint + ".weight", w), graph.Initializer(hint + ".bias", b), kernel, stride, padding);
        }
        var offset = shift.view(1, 3, 1, 1);
        if (inputOffset is not null) offset = offset.Plus(inputOffset.detach().to(float32));
        string shifted = graph.Add(pixels, graph.Initializer("input_shift", offset / scale.view(1, 3, 1, 1)));
        return graph.Conv(shifted, graph.Initializer(hint + ".weight", w), bias is null ? null : graph.Initializer(hint + ".bias", bias), kernel, stride, padding);
    }

    /// <summary>
    /// A convolution (a PyTorch conv's <paramref name="weight"/> and <paramref name="bias"/>) followed by <paramref name="norm"/>: a
    /// BatchNorm2d is folded into it, an Identity (already folded) is nothing.
    /// </summary>
    public static string ConvNorm(OnnxGraphBuilder graph, string x, Tensor weight, Tensor? bias, nn.Module? norm, long stride, long padding, string hint, long groups = 1)
    {
        using var scope = NewDisposeScope();
        (Tensor w, Tensor? b) = norm switch
        {
            BatchNorm2d bn => BatchNormFolding.Fold(weight, bias, bn),
            null or Identity => (weight, bias),
            _ => throw new NotSupportedException($"ONNX export of '{hint}': a {norm.GetType().Name} after a convolution is not supported (BatchNorm2d is)."),
        };
        return graph.Conv(x, graph.Initializer(hint + ".weight", w), b is null ? null : graph.Initializer(hint + ".bias", b),
            weight.shape[2], stride, padding, groups);
    }

    /// <summary>timm's Mlp: fc1, GELU or QuickGELU, fc2, on the last axis.</summary>
    public static string Mlp(OnnxGraphBuilder graph, string x, Mlp mlp, string hint)
    {
        string h = graph.Linear(x, mlp.Fc1.weight, mlp.Fc1.bias, hint + ".fc1");
        h = mlp.Activation == MlpActivation.QuickGelu ? graph.QuickGelu(h) : graph.Gelu(h);
        return graph.Linear(h, mlp.Fc2.weight, mlp.Fc2.bias, hint + ".fc2");
    }

    /// <summary>LayerNorm over the last axis with the module's affine parameters.</summary>
    public static string LayerNorm(OnnxGraphBuilder graph, string x, LayerNorm norm, string hint) =>
        graph.LayerNorm(x, norm.weight!, norm.bias!, norm.eps, hint);

    /// <summary>LayerNorm over the last axis with the affine parameters <paramref name="name"/>.weight and .bias of <paramref name="p"/>.</summary>
    public static string LayerNorm(OnnxGraphBuilder graph, string x, Dictionary<string, Tensor> p, string name, double eps) =>
        graph.LayerNorm(x, p[name + ".weight"], p[name + ".bias"], eps, name);

    /// <summary>The parameters of <paramref name="module"/> by their names relative to it.</summary>
    public static Dictionary<string, Tensor> Parameters(nn.Module module) =>
        module.named_parameters().ToDictionary(p => p.name, p => (Tensor)p.parameter);
}
