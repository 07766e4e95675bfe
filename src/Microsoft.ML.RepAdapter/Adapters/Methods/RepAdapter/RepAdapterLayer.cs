using Microsoft.ML.RepAdapter.Torch;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Adapters;

/// <summary>
/// RepAdapter: f(z) = z + s * (W_B dropout(W_A z + b_A) + b_B), applied in front of a projection.
/// W_A is a dense down-projection (Conv1d D -> r), W_B a grouped up-projection (Conv1d r -> D, k groups), named
/// <c>conv_A</c> / <c>conv_B</c> with the official implementation's shapes. No activation: the map is linear, so
/// after training it folds into the following projection (<see cref="Collapse"/>).
/// </summary>
public sealed class RepAdapterLayer : ProjectionAdapter
{
    private readonly Conv1d conv_A;
    private readonly Conv1d conv_B;
    private readonly Dropout dropout;

    /// <summary>
    /// An adapter over <paramref name="channels"/> channels with <paramref name="config"/>'s hidden size, groups, scale and
    /// dropout, initialised as the identity map (xavier W_A, zero W_B and biases). Throws when <paramref name="config"/>
    /// is invalid for these channels (see <see cref="RepAdapterMethod.Validate"/>).
    /// </summary>
    /// <param name="channels">Input channels D of the projection the adapter sits in front of.</param>
    /// <param name="config">Hidden size r, groups k, scale s and dropout.</param>
    /// <param name="withBias">Whether W_A and W_B have biases; false for sites in front of zero-padded convolutions.</param>
    public RepAdapterLayer(int channels, AdapterConfig config, bool withBias = true) : base(nameof(RepAdapterLayer))
    {
        RepAdapterMethod.CheckGroups(config, channels, nameof(RepAdapterLayer));
        Channels = channels;
        Hidden = config.Hidden;
        Groups = config.Groups;
        Scale = config.Scale;
        conv_A = nn.Conv1d(channels, config.Hidden, 1, groups: 1, bias: withBias);
        conv_B = nn.Conv1d(config.Hidden, channels, 1, groups: config.Groups, bias: withBias);
        dropout = nn.Dropout(config.Dropout);
        // Identity at start: xavier W_A, zero W_B and biases.
        nn.init.xavier_uniform_(conv_A.weight);
        nn.init.zeros_(conv_B.weight);
        if (withBias)
        {
            nn.init.zeros_(conv_A.bias);
            nn.init.zeros_(conv_B.bias);
        }
        RegisterComponents();
    }

    /// <summary>The channels D the adapter maps (input and output).</summary>
    public int Channels { get; }
    /// <summary>The hidden size r of the bottleneck.</summary>
    public int Hidden { get; }
    /// <summary>The groups k of the up-projection W_B.</summary>
    public int Groups { get; }

    /// <summary>The fixed scale s; stored with the adapter so that merging uses the scale it was trained with.</summary>
    public float Scale { get; }

    /// <inheritdoc/>
    public override bool HasInputBias => conv_A.bias is not null;

    /// <summary>Applies the adapter to <paramref name="x"/>, whose channels are on axis <paramref name="channelDim"/>.</summary>
    /// <remarks>
    /// Computed as two matrix products over the channel axis, not by the Conv1d modules that hold the weights: the same
    /// function without convolution kernels. oneDNN picks those by CPU and thread count, and a CI machine (AMD, AVX-512)
    /// reached NaN training a tiny ResNet only with its AVX-512 kernels on two threads, where these grouped 1x1 convs
    /// have fewer channels per group (r / k = 4) than its 16-channel blocks.
    /// </remarks>
    public Tensor Adapt(Tensor x, int channelDim)
    {
        using var scope = NewDisposeScope();
        bool channelsLast = channelDim == -1;
        Tensor z = channelsLast ? x : x.movedim([channelDim], [-1]);
        Tensor hidden = dropout.forward(nn.functional.linear(z, conv_A.weight.squeeze(-1), conv_A.bias));
        Tensor branch = nn.functional.linear(hidden, DenseUpProjection(), conv_B.bias).Times(Scale);
        Tensor delta = channelsLast ? branch : branch.movedim([-1], [channelDim]).contiguous();
        return x.Plus(delta).MoveToOuterDisposeScope();
    }

    /// <inheritdoc/>
    /// <remarks>The layer's projection of <see cref="Adapt"/>'s output, on the layer's channel axis.</remarks>
    public override Tensor Forward(Tensor input, AdaptableLayer layer) => layer.Project(Adapt(input, layer.ChannelDim));

    /// <summary>
    /// The adapter as one affine map z -> M z + c: M = I + s W_B W_A, c = s (W_B b_A + b_B), with W_B as its dense
    /// block-diagonal equivalent (group g reads hidden [g r/k, (g+1) r/k) and writes channels [g D/k, (g+1) D/k)).
    /// c is null for a bias-free adapter.
    /// </summary>
    public (Tensor M, Tensor? c) Collapse()
    {
        using var scope = NewDisposeScope();
        Tensor up = DenseUpProjection();
        Tensor down = conv_A.weight.squeeze(-1);
        Tensor m = eye(Channels, dtype: down.dtype, device: down.device).Plus(up.matmul(down).Times(Scale));
        Tensor? c = conv_A.bias is null ? null : up.matmul(conv_A.bias).Plus(conv_B.bias!).Times(Scale);
        m.MoveToOuterDisposeScope();
        c?.MoveToOuterDisposeScope();
        return (m, c);
    }

    /// <summary>W_B ([D, r/k, 1], grouped) as the dense block-diagonal [D, r] matrix it multiplies by (differentiable).</summary>
    public Tensor DenseUpProjection()
    {
        using var scope = NewDisposeScope();
        Tensor[] blocks = conv_B.weight.squeeze(-1).chunk(Groups, 0);
        return (Groups == 1 ? blocks[0].alias() : block_diag(blocks)).MoveToOuterDisposeScope();
    }

    /// <remarks>
    /// The layer after the map z -> M z + c: W' = W M on the input-channel axis (each kernel tap of a convolution reads
    /// M z), b' = b + (W summed over its kernel taps) c, exact for linear layers and unpadded convolutions (a zero-padded one
    /// would see c at its borders but zeros in its padding, so there the adapter is bias-free).
    /// </remarks>
    internal override void MergeInto(AdaptableLayer layer)
    {
        var (m, c) = Collapse();
        using (m)
        using (c)
        {
            Tensor weight = layer.weight.movedim([1], [-1]).matmul(m).movedim([-1], [1]);
            Tensor? bias = null;
            if (c is not null)
            {
                if (!layer.InputBiasFoldsExactly) throw new InvalidOperationException("An adapter bias cannot fold exactly into a zero-padded convolution.");
                Tensor taps = layer.weight.dim() > 2 ? layer.weight.flatten(2).sum(-1) : layer.weight;
                bias = (layer.bias ?? throw new InvalidOperationException("An adapter bias cannot fold into a layer without bias.")).Plus(taps.matmul(c));
            }
            layer.Rewrite(weight, bias);
        }
    }
}
