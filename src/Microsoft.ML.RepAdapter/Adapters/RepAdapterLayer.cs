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

    public RepAdapterLayer(int channels, AdapterConfig config, bool withBias = true) : base(nameof(RepAdapterLayer))
    {
        config.Validate(channels, nameof(RepAdapterLayer));
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

    public int Channels { get; }
    public int Hidden { get; }
    public int Groups { get; }

    /// <summary>The fixed scale s; stored with the adapter so that merging uses the scale it was trained with.</summary>
    public float Scale { get; }

    public override bool HasInputBias => conv_A.bias is not null;

    /// <summary>Applies the adapter to <paramref name="x"/>, whose channels are on axis <paramref name="channelDim"/>.</summary>
    public Tensor Adapt(Tensor x, int channelDim)
    {
        using var scope = NewDisposeScope();
        // Conv1d wants [B, C, L]: tokens [B, N, D] are transposed, feature maps [B, C, H, W] flattened.
        Tensor sequence = channelDim == 1 ? x.flatten(2) : x.transpose(1, 2);
        Tensor branch = conv_B.forward(dropout.forward(conv_A.forward(sequence))).mul(Scale);
        Tensor delta = channelDim == 1 ? branch.view(x.shape) : branch.transpose(1, 2);
        return (x + delta).MoveToOuterDisposeScope();
    }

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
        Tensor m = eye(Channels, dtype: down.dtype, device: down.device) + up.matmul(down).mul(Scale);
        Tensor? c = conv_A.bias is null ? null : (up.matmul(conv_A.bias) + conv_B.bias!).mul(Scale);
        m.MoveToOuterDisposeScope();
        c?.MoveToOuterDisposeScope();
        return (m, c);
    }

    /// <summary>W_B ([D, r/k, 1], grouped) as the dense [D, r] matrix it multiplies by.</summary>
    public Tensor DenseUpProjection()
    {
        Tensor grouped = conv_B.weight.squeeze(-1);
        int rowsPerGroup = Channels / Groups, colsPerGroup = Hidden / Groups;
        Tensor dense = zeros(Channels, Hidden, dtype: grouped.dtype, device: grouped.device);
        for (int g = 0; g < Groups; g++)
        {
            dense[TensorIndex.Slice(g * rowsPerGroup, (g + 1) * rowsPerGroup), TensorIndex.Slice(g * colsPerGroup, (g + 1) * colsPerGroup)] =
                grouped[TensorIndex.Slice(g * rowsPerGroup, (g + 1) * rowsPerGroup)];
        }
        return dense;
    }

    internal override void MergeInto(AdaptableLayer layer)
    {
        var (m, c) = Collapse();
        using (m)
        using (c)
            layer.FoldInputMap(m, c);
    }
}
