using Microsoft.ML.RepAdapter.Torch;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Adapters;

/// <summary>
/// The low-rank update s B A that LoRA adds to a projection and DoRA adds to its direction, in peft's shapes and names:
/// on a linear layer A [r, in] and B [out, r]; on a convolution A is a k x k convolution with the host's stride and
/// padding [r, in, k, k] and B a 1 x 1 one [out, r, 1, 1] (peft's <c>tuners/lora/layer.py</c> Conv2d). A starts
/// kaiming-uniform (a = sqrt 5), B at zero, so the update is zero at first.
/// </summary>
public abstract class LowRankUpdate : ProjectionAdapter
{
    private readonly AdapterWeight lora_A;
    private readonly AdapterWeight lora_B;
    private readonly Dropout dropout;

    /// <summary>A rank-<see cref="AdapterConfig.Hidden"/> update for <paramref name="layer"/>, with <paramref name="config"/>'s scale and dropout.</summary>
    protected LowRankUpdate(string name, AdaptableLayer layer, AdapterConfig config) : base(name)
    {
        long[] kernel = layer.weight.shape[2..];
        Scale = config.Scale;
        lora_A = new AdapterWeight(nameof(lora_A), [config.Hidden, layer.InChannels, .. kernel]);
        lora_B = new AdapterWeight(nameof(lora_B), [layer.OutChannels, config.Hidden, .. kernel.Select(_ => 1L)]);
        dropout = nn.Dropout(config.Dropout);
        nn.init.kaiming_uniform_(lora_A.weight, Math.Sqrt(5));
        nn.init.zeros_(lora_B.weight);
        // Registered by name: RegisterComponents in a subclass would not see these private fields.
        register_module(nameof(lora_A), lora_A);
        register_module(nameof(lora_B), lora_B);
        register_module(nameof(dropout), dropout);
    }

    /// <summary>The fixed scale s of the update; merging uses the same value.</summary>
    public float Scale { get; }

    /// <inheritdoc/>
    /// <remarks>Always false: the update has no constant term.</remarks>
    public override bool HasInputBias => false;

    /// <summary>The input as the update sees it: with dropout in training, as it is in evaluation.</summary>
    protected Tensor Dropped(Tensor input) => dropout.forward(input);

    /// <summary>s B A of <paramref name="dropped"/> (<see cref="Dropped"/>), through the host's geometry: [.., out] tokens or [N, out, H', W'] maps.</summary>
    protected Tensor Update(Tensor dropped, AdaptableLayer layer)
    {
        using var scope = NewDisposeScope();
        Tensor down = layer.ProjectWith(dropped, lora_A.weight, null);
        return layer.MixChannels(down, lora_B.weight.flatten(1)).Times(Scale).MoveToOuterDisposeScope();
    }

    /// <summary>s B A as a weight of the host's shape (B's 1 x 1 taps times A's k x k ones).</summary>
    protected Tensor WeightUpdate(AdaptableLayer layer)
    {
        using var scope = NewDisposeScope();
        return lora_B.weight.flatten(1).matmul(lora_A.weight.flatten(1)).view(layer.weight.shape).Times(Scale).MoveToOuterDisposeScope();
    }
}
