using Microsoft.ML.RepAdapter.Torch;
using Microsoft.ML.RepAdapter.Adapters;
using Microsoft.ML.RepAdapter.Formats;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Backbones;

/// <summary>
/// The contract every backbone offers the trainers: pooled features for classification, a per-location feature
/// map for segmentation, a classification head, and the projections where adapters can go and merge exactly.
/// Parameter names follow the reference implementation (timm / torchvision) so checkpoints map 1:1.
/// </summary>
public abstract class Backbone : nn.Module<Tensor, Tensor>, IAdaptableModel
{
    /// <summary>Creates the backbone as a TorchSharp module called <paramref name="name"/>.</summary>
    protected Backbone(string name) : base(name) { }

    /// <summary>The preset or architecture name, e.g. <c>vit_base_patch16_224</c>.</summary>
    public abstract string Architecture { get; }

    /// <summary>The family this backbone belongs to (its presets, checkpoint layouts and weight fix-ups).</summary>
    public abstract BackboneFamily Family { get; }

    /// <summary>Input size and normalisation the backbone was pretrained with.</summary>
    public abstract ImageInputSpec Input { get; }

    /// <summary>The architecture and config, enough to rebuild this backbone's modules.</summary>
    public abstract BackboneDescriptor Describe();

    /// <summary>Width of <see cref="ForwardFeatures"/>' output.</summary>
    public abstract int FeatureDim { get; }

    /// <summary>Classes of the current head (0: no head, forward returns features).</summary>
    public abstract int NumClasses { get; }

    /// <summary>Pooled image features [B, FeatureDim], the head's input: every step of <see cref="Trunk"/> in turn.</summary>
    public Tensor ForwardFeatures(Tensor images) => ForwardSteps(images, 0, int.MaxValue);

    /// <summary>
    /// The trunk as a chain of steps from images to pooled features: the stem or embedding, every block (and the
    /// downsampling between stages), then the final norm and pooling. <see cref="ForwardFeatures"/> runs them all; cut
    /// after a step, the chain's frozen prefix is what a trainer can compute once and cache (<see cref="ForwardPrefix"/>,
    /// <see cref="ForwardFeaturesFrom"/>).
    /// </summary>
    public abstract IReadOnlyList<TrunkStep> Trunk();

    /// <summary>The output of the first <paramref name="steps"/> steps of <see cref="Trunk"/> (the images themselves for 0).</summary>
    public Tensor ForwardPrefix(Tensor images, int steps) => ForwardSteps(images, 0, steps);

    /// <summary>Pooled features from <paramref name="hidden"/>, the output of <see cref="ForwardPrefix"/> with the same <paramref name="steps"/>.</summary>
    public Tensor ForwardFeaturesFrom(Tensor hidden, int steps) => ForwardSteps(hidden, steps, int.MaxValue);

    private Tensor ForwardSteps(Tensor x, int from, int to)
    {
        var trunk = Trunk();
        if (from < 0 || from > trunk.Count) throw new ArgumentOutOfRangeException(nameof(from), from, $"{Architecture} has {trunk.Count} trunk steps.");
        using var scope = NewDisposeScope();
        for (int i = from; i < Math.Min(to, trunk.Count); i++) x = trunk[i].Forward(x);
        return x.alias().MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The first step of <see cref="Trunk"/> that holds one of the parameters <paramref name="parameterNames"/> (module
    /// paths as in <c>named_parameters</c>); the step count when none does (e.g. only the head's parameters).
    /// </summary>
    public int FirstStepHolding(IEnumerable<string> parameterNames)
    {
        var trunk = Trunk();
        var names = parameterNames.ToList();
        for (int i = 0; i < trunk.Count; i++)
        {
            if (names.Any(trunk[i].Holds)) return i;
        }
        return trunk.Count;
    }

    /// <summary>Per-location features [B, C, h, w] for dense prediction.</summary>
    public abstract Tensor ForwardFeatureMap(Tensor images);

    /// <summary>
    /// The levels of <see cref="ForwardIntermediates"/> (timm's feature_info): which block or stage, its channels and its
    /// stride in input pixels. Dense heads (segmentation) are built from these.
    /// </summary>
    public abstract IReadOnlyList<FeatureLevel> FeatureLevels { get; }

    /// <summary>
    /// Multi-level feature maps [B, C_i, H / r_i, W / r_i], one per <see cref="FeatureLevels"/> entry, in order (timm's
    /// <c>forward_intermediates</c>, NCHW).
    /// </summary>
    public abstract IReadOnlyList<Tensor> ForwardIntermediates(Tensor images);

    /// <summary>The classification head applied to pooled features.</summary>
    public abstract Tensor ForwardHead(Tensor features);

    /// <summary>Logits [B, NumClasses] (the pooled features when there is no head): <see cref="ForwardHead"/> of <see cref="ForwardFeatures"/>.</summary>
    /// <param name="images">Normalised images [B, 3, S, S] (see <see cref="ImageInputSpec.Normalize"/>).</param>
    public override Tensor forward(Tensor images)
    {
        using var scope = NewDisposeScope();
        return ForwardHead(ForwardFeatures(images)).MoveToOuterDisposeScope();
    }

    /// <summary>Replaces the head by a freshly initialised one for <paramref name="numClasses"/> classes (0 removes it).</summary>
    public abstract void ResetClassifier(int numClasses);

    /// <summary>
    /// Module path of the classification head in checkpoints: timm's <c>head</c> (ViT) or <c>head.fc</c> (Swin,
    /// ConvNeXt), torchvision's <c>fc</c>.
    /// </summary>
    public abstract string HeadName { get; }

    /// <summary>Whether the named parameter belongs to the task head (trained in every policy).</summary>
    public bool IsHeadParameter(string parameterName) => parameterName.StartsWith(HeadName + ".", StringComparison.Ordinal);

    /// <summary>
    /// Swaps the head module <paramref name="current"/> for a new Linear(FeatureDim, <paramref name="numClasses"/>) with
    /// PyTorch's default init (none for 0), registered on <paramref name="owner"/> (this backbone by default) under the
    /// last part of <see cref="HeadName"/>, built outside any caller's dispose scope and in this backbone's training/eval
    /// mode (TorchSharp starts every new module in training mode).
    /// </summary>
    protected Linear? ReplaceHead(Linear? current, int numClasses, nn.Module? owner = null) => ModuleScopes.Unscoped(() =>
    {
        if (numClasses < 0) throw new ArgumentOutOfRangeException(nameof(numClasses), numClasses, "Class count cannot be negative.");
        owner ??= this;
        string name = HeadName.Split('.')[^1];
        if (current is not null)
        {
            owner.register_module(name, null!);
            current.Dispose();
        }
        if (numClasses == 0) return null;
        var head = nn.Linear(FeatureDim, numClasses);
        head.train(training);
        owner.register_module(name, head);
        return head;
    });

    /// <summary>
    /// The family's placement table (peft's target modules per model type): for each placement it supports, the module
    /// paths inside a block (<see cref="AdaptableBlocks"/>) that take an adapter, e.g. <c>attn.qkv</c> and <c>mlp.fc1</c>.
    /// </summary>
    public abstract IReadOnlyDictionary<AdapterPlacement, IReadOnlyList<string>> Placements { get; }

    /// <summary>The blocks that hold adapter sites, in order, by module path (<c>blocks.3</c>, <c>layer2.1</c>).</summary>
    protected abstract IEnumerable<(string Name, nn.Module Block)> AdaptableBlocks();

    /// <summary>
    /// The mergeable projections for <paramref name="placement"/>, named by their module path: every block's targets in
    /// <see cref="Placements"/>. A placement the family does not have is refused with the ones it has.
    /// </summary>
    public IReadOnlyList<AdapterSite> AdapterSites(AdapterPlacement placement)
    {
        if (!Placements.TryGetValue(placement, out var targets))
            throw new NotSupportedException($"{Architecture} ({Family.Name}) has no adapter placement {placement}; it has "
                + $"{string.Join(", ", Placements.Select(p => $"{p.Key} ({string.Join(", ", p.Value)})"))}.");
        var sites = new List<AdapterSite>();
        int index = 0;
        foreach (var (name, block) in AdaptableBlocks())
        {
            var modules = block.named_modules().ToDictionary(m => m.name, m => m.module);
            foreach (string target in targets)
            {
                var layer = modules.GetValueOrDefault(target) as AdaptableLayer
                    ?? throw new InvalidOperationException($"{Architecture}: the placement table names '{name}.{target}', which is not an adaptable layer.");
                sites.Add(new AdapterSite($"{name}.{target}", layer, index));
            }
            index++;
        }
        return sites;
    }

    /// <summary>
    /// When true, normalisation statistics (BatchNorm running stats) stay frozen in training mode, as they must when
    /// the backbone itself is frozen. Backbones without such statistics ignore it.
    /// </summary>
    public bool FreezeNormStatistics { get; set; }

    /// <summary>
    /// Writes this backbone and its head (a merged model: no adapter left) as a standard ONNX model (opset 17, dynamic
    /// batch): input <c>pixels</c>, float [batch, 3, S, S], the raw pixel values 0..255 in <see cref="ImageInputSpec.Order"/>
    /// (the normalisation is in the graph, folded into the first convolution where that is exact); output <c>logits</c>
    /// [batch, NumClasses], or <c>features</c> [batch, FeatureDim] without a head. BatchNorm is folded into the convolutions.
    /// Throws <see cref="InvalidOperationException"/> for a model with unmerged adapters.
    /// </summary>
    /// <param name="stream">Where the model is written. Weights over protobuf's 2 GB limit need <see cref="ExportOnnx(string, OnnxExportOptions?)"/>.</param>
    public void ExportOnnx(Stream stream) => OnnxExport.Write(OnnxExport.Classifier(this), stream);

    /// <summary>Writes the model as <see cref="ExportOnnx(Stream)"/> does, with <paramref name="options"/> (e.g. int8 weights).</summary>
    public void ExportOnnx(Stream stream, OnnxExportOptions options) => OnnxExport.Write(OnnxExport.Classifier(this), stream, options);

    /// <summary>Writes the model as <see cref="ExportOnnx(Stream)"/> does, to a file (large weights as ONNX external data next to it).</summary>
    /// <param name="path">The .onnx file to write.</param>
    /// <param name="options">External data and quantization settings; null for the defaults.</param>
    public void ExportOnnx(string path, OnnxExportOptions? options = null) => OnnxExport.Write(OnnxExport.Classifier(this), path, options);

    // The ONNX export contract. Every family implements it in its own folder (e.g. Backbones/ResNet/ResNetOnnx.cs):
    // the graph must compute what the TorchSharp module computes in eval mode (to 1e-4 on the tests' tiny models), from
    // raw pixels (0..255, float, in Input.Order; OnnxExport.NormalizedConv folds Input's normalisation into the stem),
    // with BatchNorm folded and a dynamic batch; parameters are read from the module, never copied into other files.

    /// <summary>Emits <see cref="ForwardFeatures"/> (pooled features [batch, FeatureDim]) from raw pixels; returns the value's name.</summary>
    internal abstract string EmitFeatures(OnnxGraphBuilder graph, string pixels);

    /// <summary>Emits <see cref="ForwardIntermediates"/> (one NCHW map per <see cref="FeatureLevels"/> entry) from raw pixels.</summary>
    internal abstract IReadOnlyList<string> EmitIntermediates(OnnxGraphBuilder graph, string pixels);

    /// <summary>Emits <see cref="forward"/> from raw pixels: features, then the head; returns the value's name.</summary>
    internal string EmitForward(OnnxGraphBuilder graph, string pixels) => EmitHead(graph, EmitFeatures(graph, pixels));

    /// <summary>Declares the graph's raw-pixel input (images [batch, 3, S, S]; a video backbone declares clips).</summary>
    internal virtual string EmitPixelsInput(OnnxGraphBuilder graph, OnnxDim batch) => OnnxExport.PixelsInput(graph, Input, batch);

    /// <summary>Emits <see cref="ForwardHead"/>: the linear classifier at <see cref="HeadName"/>, or the features themselves without one.</summary>
    internal string EmitHead(OnnxGraphBuilder graph, string features)
    {
        if (NumClasses == 0) return features;
        var parameters = OnnxExport.Parameters(this);
        return graph.Linear(features, parameters[HeadName + ".weight"], parameters.GetValueOrDefault(HeadName + ".bias"), HeadName);
    }
}

/// <summary>One step of a backbone's <see cref="Backbone.Trunk"/>.</summary>
/// <param name="Name">What the step is, e.g. <c>blocks.3</c>, <c>layer2.1</c> or <c>pool</c>.</param>
/// <param name="Parameters">Module paths (or parameter names) of the parameters the step uses, e.g. <c>blocks.3</c>.</param>
/// <param name="IsBlock">Whether the step is one of the blocks that host adapters.</param>
/// <param name="Forward">The step's computation, on the previous step's output.</param>
public sealed record TrunkStep(string Name, IReadOnlyList<string> Parameters, bool IsBlock, Func<Tensor, Tensor> Forward)
{
    /// <summary>Whether parameter <paramref name="parameterName"/> belongs to this step.</summary>
    public bool Holds(string parameterName) =>
        Parameters.Any(p => parameterName == p || parameterName.StartsWith(p + ".", StringComparison.Ordinal));
}

/// <summary>One level of multi-level features: the block or stage it comes from, its channels and its stride in pixels.</summary>
public sealed record FeatureLevel(string Name, int Channels, int Reduction);

/// <summary>Whether pixels are fed in RGB or BGR order.</summary>
public enum ChannelOrder
{
    /// <summary>Red, green, blue (timm, torchvision, Hugging Face).</summary>
    Rgb,
    /// <summary>Blue, green, red (e.g. ML.NET's ResNet-18 ONNX model).</summary>
    Bgr,
}

/// <summary>
/// How images become input tensors: resized to <paramref name="ImageSize"/> (square), channel value
/// v = (pixel * <paramref name="PixelScale"/> - Mean[c]) / Std[c], pixel in 0..255.
/// </summary>
public sealed record ImageInputSpec(int ImageSize, float[] Mean, float[] Std, float PixelScale = 1f / 255, ChannelOrder Order = ChannelOrder.Rgb)
{
    /// <summary>ImageNet mean/std on 0..1 RGB, used by timm's and torchvision's ImageNet models and by the paper's recipe.</summary>
    public static ImageInputSpec ImageNet(int imageSize) =>
        new(imageSize, [0.485f, 0.456f, 0.406f], [0.229f, 0.224f, 0.225f]);

    /// <summary>The same normalisation at input resolution <paramref name="imageSize"/>.</summary>
    public ImageInputSpec WithImageSize(int imageSize) => this with { ImageSize = imageSize };

    /// <summary>uint8 pixels [B, 3, S, S] (already in <see cref="Order"/>) to the normalised float input.</summary>
    public Tensor Normalize(Tensor pixels)
    {
        using var scope = NewDisposeScope();
        // Channels on axis 1: images [B, 3, H, W], clips [B, 3, T, H, W].
        long[] perChannel = [1, 3, .. Enumerable.Repeat(1L, Math.Max(0, (int)pixels.dim() - 2))];
        var mean = tensor(Mean, device: pixels.device).view(perChannel);
        var std = tensor(Std, device: pixels.device).view(perChannel);
        return pixels.to(float32).Times(PixelScale).sub(mean).div(std).MoveToOuterDisposeScope();
    }

    /// <summary>Value equality, comparing <see cref="Mean"/> and <see cref="Std"/> element by element.</summary>
    public bool Equals(ImageInputSpec? other) =>
        other is not null && ImageSize == other.ImageSize && Mean.SequenceEqual(other.Mean) && Std.SequenceEqual(other.Std)
        && PixelScale == other.PixelScale && Order == other.Order;

    /// <inheritdoc/>
    public override int GetHashCode() => HashCode.Combine(ImageSize, PixelScale, Order, Mean.Sum(), Std.Sum());
}
