using Microsoft.ML.RepAdapter.Torch;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Training;

/// <summary>
/// TorchSharp's AdamW (decoupled weight decay, bias-corrected moments; no AMSGrad, minimising), whose step keeps the
/// numbers it hands libtorch alive (see <see cref="Scalars"/>): TorchSharp 0.107's own step passes temporary Scalars, and a
/// garbage collection during the step freed one in about a third of long training runs ("Unknown scalar type" from
/// <c>div</c>). Same state, so <see cref="OptimizerHelper.save_state_dict(string)"/> files are TorchSharp's.
/// </summary>
internal sealed class KeepAliveAdamW(IEnumerable<Parameter> parameters, double lr, double weightDecay)
    : AdamW(parameters, lr: lr, weight_decay: weightDecay)
{
    public override Tensor step(Func<Tensor>? closure = null) => _step<ParamGroup>(group =>
    {
        var options = (Options)group.Options;
        double beta1 = options.beta1!.Value, beta2 = options.beta2!.Value, eps = options.eps!.Value;
        double lr = options.LearningRate!.Value, decay = options.weight_decay!.Value;
        foreach (var param in group.Parameters)
        {
            if (param.grad is not Tensor grad) continue;
            var state = (State)_state[param.Handle];
            state.step += 1;
            Scalars.With(1 - lr * decay, s => param.mul_(s));
            double correction1 = 1 - Math.Pow(beta1, state.step), correction2 = 1 - Math.Pow(beta2, state.step);
            Scalars.With(beta1, s => state.exp_avg.mul_(s));
            Scalars.With(1 - beta1, s => state.exp_avg.add_(grad, alpha: s));
            Scalars.With(beta2, s => state.exp_avg_sq.mul_(s));
            Scalars.With(1 - beta2, s => state.exp_avg_sq.addcmul_(grad, grad, value: s));
            var denominator = Scalars.With(Math.Sqrt(correction2), s => state.exp_avg_sq.sqrt().div_(s));
            denominator.PlusInPlace(eps);
            Scalars.With(-lr / correction1, s => param.addcdiv_(state.exp_avg, denominator, value: s));
        }
    }, closure);
}
