namespace Microsoft.ML.RepAdapter.Training;

/// <summary>
/// Per-epoch learning rate of the paper's recipe (timm's CosineLRScheduler, stepped per epoch): linear warm-up from
/// <paramref name="WarmupStartRate"/> over <paramref name="WarmupEpochs"/>, then cosine decay from
/// <paramref name="BaseRate"/> towards <paramref name="FinalRate"/> over <paramref name="Epochs"/>.
/// Epoch e trains at <c>RateAt(e)</c>. (The official loop calls <c>scheduler.step(e)</c> after epoch e, so there epoch e
/// trains at the rate for e - 1: a one-epoch lag we do not copy.)
/// </summary>
public sealed record CosineSchedule(double BaseRate, int Epochs, int WarmupEpochs = 0, double WarmupStartRate = 1e-6, double FinalRate = 1e-5)
{
    /// <summary>The learning rate of 0-based epoch <paramref name="epoch"/>.</summary>
    public double RateAt(int epoch)
    {
        if (epoch < WarmupEpochs)
            return WarmupStartRate + (BaseRate - WarmupStartRate) * epoch / WarmupEpochs;
        double progress = Epochs <= 0 ? 0 : (double)epoch / Epochs;
        return FinalRate + 0.5 * (BaseRate - FinalRate) * (1 + Math.Cos(Math.PI * progress));
    }
}
