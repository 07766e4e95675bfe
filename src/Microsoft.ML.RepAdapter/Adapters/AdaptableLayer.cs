using TorchSharp;
using TorchSharp.Modules;
using TorchSharp.Utils;
using Microsoft.ML.RepAdapter.Torch;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Adapters;

/// <summary>
/// A projection (linear layer or convolution) of a backbone that can host one adapter. Its own parameters keep the
/// checkpoint names (<c>weight</c>, <c>bias</c>), so a plain checkpoint maps onto it 1:1; an attached adapter lives
/// under <c>adapter.*</c>. <see cref="MergeAdapter"/> folds the adapter into <c>weight</c>/<c>bias</c> and removes it,
/// leaving exactly the original layer. Methods are written against three operations, the same for every kind of layer:
/// <see cref="ProjectWith"/> (the layer's own computation with other parameters), <see cref="MixChannels"/> and
/// <see cref="OverOutputs"/>, and they merge through one hook, <see cref="Rewrite"/>.
/// </summary>
public abstract class AdaptableLayer : nn.Module<Tensor, Tensor>
{
    /// <summary>Creates the layer as a TorchSharp module called <paramref name="name"/>.</summary>
    protected AdaptableLayer(string name) : base(name) { }

    /// <summary>Input channels: the dimension an adapter in front of this layer works on.</summary>
    public abstract long InChannels { get; }

    /// <summary>Output channels.</summary>
    public abstract long OutChannels { get; }

    /// <summary>The axis of the input that holds channels (-1 for tokens, 1 for feature maps).</summary>
    public abstract int ChannelDim { get; }

    /// <summary>
    /// Whether an input map with a bias (z -> M z + c) folds exactly. A zero-padded k x k convolution would see the
    /// constant c at its borders but zeros in its padding, so there only bias-free adapters are exact.
    /// </summary>
    public abstract bool InputBiasFoldsExactly { get; }

    /// <summary>
    /// The projection's weight, under its checkpoint name <c>weight</c> (merged adapters end up here). Settable as
    /// nn.Linear's, because TorchSharp's <c>module.to(device or dtype)</c> replaces parameters through their properties.
    /// </summary>
    public abstract Parameter weight { get; set; }

    /// <summary>The projection's bias, under its checkpoint name <c>bias</c>; null for a bias-free layer. Settable as <see cref="weight"/>.</summary>
    public abstract Parameter? bias { get; set; }

    /// <summary>Registers <paramref name="value"/> as this layer's parameter <paramref name="name"/> and returns it.</summary>
    protected Parameter? Replace(string name, Parameter? value)
    {
        ConditionallyRegisterParameter(name, value);
        return value;
    }

    [ComponentName(Name = "adapter")]
    private ProjectionAdapter? _adapter;

    /// <summary>The attached adapter, or null for the plain layer.</summary>
    public ProjectionAdapter? Adapter => _adapter;

    /// <summary>The plain projection, without any adapter.</summary>
    public Tensor Project(Tensor input) => ProjectWith(input, weight, bias);

    /// <summary>
    /// This layer's computation with <paramref name="weight"/> and <paramref name="bias"/> in place of its own, with its own
    /// geometry (a convolution's stride and padding). <paramref name="weight"/> may have other output channels (a
    /// low-rank method's down projection has r).
    /// </summary>
    public abstract Tensor ProjectWith(Tensor input, Tensor weight, Tensor? bias);

    /// <summary>
    /// <paramref name="x"/>'s channels (on <see cref="ChannelDim"/>) multiplied by <paramref name="matrix"/> [out, in]: a
    /// matrix product for tokens, a 1 x 1 convolution for feature maps. Written as one matrix product on the channel axis
    /// (no grouped or 1 x 1 convolution kernels: see <see cref="RepAdapterLayer.Adapt"/>).
    /// </summary>
    public Tensor MixChannels(Tensor x, Tensor matrix)
    {
        if (ChannelDim == -1) return nn.functional.linear(x, matrix);
        using var scope = NewDisposeScope();
        return nn.functional.linear(x.movedim([ChannelDim], [-1]), matrix).movedim([-1], [ChannelDim]).contiguous().MoveToOuterDisposeScope();
    }

    /// <summary>A per-output-channel vector [out] shaped to broadcast over this layer's outputs (channels on <see cref="ChannelDim"/>).</summary>
    public Tensor OverOutputs(Tensor perChannel) => ChannelDim == -1 ? perChannel.alias() : perChannel.view(-1, 1, 1);

    /// <summary>The layer's output: <see cref="Project"/> alone, or through the attached adapter.</summary>
    public override Tensor forward(Tensor input) => Adapter is null ? Project(input) : Adapter.Forward(input, this);

    /// <summary>
    /// Attaches <paramref name="adapter"/> (registered as the submodule <c>adapter</c>, in this layer's training/eval mode).
    /// Throws <see cref="InvalidOperationException"/> when the layer already has one, and <see cref="ArgumentException"/>
    /// when the adapter has a constant term that this layer cannot absorb exactly (<see cref="InputBiasFoldsExactly"/>).
    /// </summary>
    public void AttachAdapter(ProjectionAdapter adapter)
    {
        if (Adapter is not null) throw new InvalidOperationException($"Layer '{GetName()}' already has an adapter.");
        if (adapter.HasInputBias && !InputBiasFoldsExactly)
            throw new ArgumentException($"Layer '{GetName()}' is a zero-padded convolution: only a bias-free adapter folds into it exactly.");
        // TorchSharp starts every new module in training mode: the adapter follows its host's mode instead.
        adapter.train(training);
        register_module("adapter", adapter);
        _adapter = adapter;
    }

    /// <summary>Folds the adapter into this layer's weights and removes it. Returns false when there was none.</summary>
    public bool MergeAdapter()
    {
        if (Adapter is null) return false;
        using (var scope = NewDisposeScope())
        using (no_grad())
            Adapter.MergeInto(this);
        var adapter = _adapter!;
        register_module("adapter", null!);
        _adapter = null;
        adapter.Dispose();
        return true;
    }

    /// <summary>
    /// The merge hook: replaces the layer's weight (and bias, when <paramref name="newBias"/> is given) by values of the same
    /// shapes, computed by a method from the current ones. A bias for a bias-free layer is refused: the merged model keeps
    /// the plain architecture.
    /// </summary>
    internal void Rewrite(Tensor newWeight, Tensor? newBias)
    {
        if (newBias is not null && bias is null)
            throw new InvalidOperationException($"Layer '{GetName()}' has no bias: a merge that needs one would change the plain architecture.");
        Assign(weight, newWeight);
        if (newBias is not null) Assign(bias!, newBias);
    }

    private static void Assign(Parameter target, Tensor value)
    {
        if (!target.shape.SequenceEqual(value.shape))
            throw new InvalidOperationException($"Merged tensor shape [{string.Join(", ", value.shape)}] differs from [{string.Join(", ", target.shape)}].");
        target.copy_(value);
    }
}

/// <summary>A linear layer y = W z + b (nn.Linear semantics and names) that can host an adapter.</summary>
public sealed class AdaptableLinear : AdaptableLayer
{
    [ComponentName(Name = "weight")]
    private Parameter _weight;
    [ComponentName(Name = "bias")]
    private Parameter? _bias;

    /// <summary>
    /// A [<paramref name="outFeatures"/>, <paramref name="inFeatures"/>] linear layer with nn.Linear's default
    /// initialisation (kaiming-uniform weight, uniform bias); <paramref name="hasBias"/> false makes it bias-free.
    /// </summary>
    public AdaptableLinear(long inFeatures, long outFeatures, bool hasBias = true) : base(nameof(AdaptableLinear))
    {
        // Same default init as nn.Linear; backbones re-initialise as their reference implementation does.
        _weight = new Parameter(empty(outFeatures, inFeatures));
        nn.init.kaiming_uniform_(_weight, Math.Sqrt(5));
        if (hasBias)
        {
            double bound = 1 / Math.Sqrt(inFeatures);
            _bias = new Parameter(empty(outFeatures));
            nn.init.uniform_(_bias, -bound, bound);
        }
        RegisterComponents();
    }

    /// <inheritdoc/>
    public override Parameter weight { get => _weight; set => _weight = Replace(nameof(weight), value ?? throw new ArgumentNullException(nameof(value)))!; }
    /// <inheritdoc/>
    public override Parameter? bias { get => _bias; set => _bias = Replace(nameof(bias), value); }
    /// <inheritdoc/>
    public override long InChannels => _weight.shape[1];
    /// <inheritdoc/>
    public override long OutChannels => _weight.shape[0];
    /// <inheritdoc/>
    public override int ChannelDim => -1;
    /// <inheritdoc/>
    public override bool InputBiasFoldsExactly => true;

    /// <inheritdoc/>
    public override Tensor ProjectWith(Tensor input, Tensor weight, Tensor? bias) => nn.functional.linear(input, weight, bias);
}

/// <summary>A 2-D convolution (nn.Conv2d semantics and names) that can host an adapter in front of it.</summary>
public sealed class AdaptableConv2d : AdaptableLayer
{
    [ComponentName(Name = "weight")]
    private Parameter _weight;
    [ComponentName(Name = "bias")]
    private Parameter? _bias;
    private readonly long _stride;
    private readonly long _padding;

    /// <summary>
    /// A square <paramref name="kernelSize"/> x <paramref name="kernelSize"/> convolution from <paramref name="inChannels"/>
    /// to <paramref name="outChannels"/> channels with symmetric zero <paramref name="padding"/> and nn.Conv2d's default
    /// initialisation (kaiming-uniform weight, uniform bias); bias-free unless <paramref name="hasBias"/>. Backbones
    /// re-initialise as their reference implementation does.
    /// </summary>
    /// <param name="inChannels">Input channels.</param>
    /// <param name="outChannels">Output channels.</param>
    /// <param name="kernelSize">Kernel height and width.</param>
    /// <param name="stride">Stride in both directions.</param>
    /// <param name="padding">Zero padding on every side.</param>
    /// <param name="hasBias">Whether the convolution has a bias.</param>
    public AdaptableConv2d(long inChannels, long outChannels, long kernelSize, long stride = 1, long padding = 0, bool hasBias = false)
        : base(nameof(AdaptableConv2d))
    {
        _stride = stride;
        _padding = padding;
        _weight = new Parameter(empty(outChannels, inChannels, kernelSize, kernelSize));
        nn.init.kaiming_uniform_(_weight, Math.Sqrt(5));
        if (hasBias)
        {
            double bound = 1 / Math.Sqrt(inChannels * kernelSize * kernelSize);
            _bias = new Parameter(empty(outChannels));
            nn.init.uniform_(_bias, -bound, bound);
        }
        RegisterComponents();
    }

    /// <inheritdoc/>
    public override Parameter weight { get => _weight; set => _weight = Replace(nameof(weight), value ?? throw new ArgumentNullException(nameof(value)))!; }
    /// <inheritdoc/>
    public override Parameter? bias { get => _bias; set => _bias = Replace(nameof(bias), value); }
    /// <inheritdoc/>
    public override long InChannels => _weight.shape[1];
    /// <inheritdoc/>
    public override long OutChannels => _weight.shape[0];
    /// <inheritdoc/>
    public override int ChannelDim => 1;
    /// <inheritdoc/>
    /// <remarks>True only for an unpadded convolution.</remarks>
    public override bool InputBiasFoldsExactly => _padding == 0;

    /// <summary>Kernel height and width.</summary>
    public long KernelSize => _weight.shape[2];

    /// <inheritdoc/>
    public override Tensor ProjectWith(Tensor input, Tensor weight, Tensor? bias) =>
        nn.functional.conv2d(input, weight, bias, strides: [_stride, _stride], padding: [_padding, _padding]);

    /// <summary>Gives a bias-free conv the bias <paramref name="values"/> (e.g. a folded BatchNorm's shift).</summary>
    internal void AddBias(Tensor values)
    {
        if (_bias is not null) throw new InvalidOperationException($"Layer '{GetName()}' already has a bias.");
        _bias = ModuleScopes.Unscoped(() => new Parameter(values.detach().clone(), _weight.requires_grad));
        ConditionallyRegisterParameter("bias", _bias);
    }
}
