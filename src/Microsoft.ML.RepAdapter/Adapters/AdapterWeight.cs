using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Adapters;

/// <summary>
/// A module holding one trainable tensor as <c>weight</c>, so that a method's parameters keep their reference code's
/// state-dict names (peft's <c>lora_A.weight</c>) whatever shape the host needs (a linear layer's or a convolution's).
/// The method computes with it through its host (<see cref="AdaptableLayer.ProjectWith"/>); it has no forward of its own.
/// </summary>
public sealed class AdapterWeight : nn.Module
{
    private readonly Parameter _weight;

    /// <summary>An uninitialised tensor of <paramref name="shape"/>, called <paramref name="name"/>; the method initialises it.</summary>
    public AdapterWeight(string name, params long[] shape) : base(name)
    {
        _weight = new Parameter(empty(shape));
        register_parameter(nameof(weight), _weight);
    }

    /// <summary>The tensor.</summary>
    public Parameter weight => _weight;
}
