using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Torch;

/// <summary>Device selection with ML.NET's TorchSharp conventions (GpuDeviceId, FallbackToCpu).</summary>
internal static class TorchDevices
{
    /// <summary>
    /// CUDA device <paramref name="gpuDeviceId"/> when requested and available; otherwise the CPU if
    /// <paramref name="fallbackToCpu"/> (saying so through <paramref name="warn"/>), else an error that says why.
    /// </summary>
    public static Device Select(int? gpuDeviceId, bool fallbackToCpu, Action<string>? warn = null)
    {
        if (gpuDeviceId is null) return CPU;
        if (cuda.is_available() && gpuDeviceId.Value < cuda.device_count()) return new Device(TorchSharp.DeviceType.CUDA, gpuDeviceId.Value);
        string why = $"GPU {gpuDeviceId} was requested but CUDA is not available to TorchSharp (build with -p:TorchSharpBackend=cuda on a CUDA machine)";
        if (!fallbackToCpu) throw new InvalidOperationException($"{why}, and FallbackToCpu is false.");
        warn?.Invoke($"{why}: falling back to the CPU.");
        return CPU;
    }

    /// <summary>
    /// Seeds torch's CPU generator and, when CUDA is present, every CUDA device's: TorchSharp's <c>manual_seed</c> seeds
    /// only the CPU, which would leave dropout and drop-path masks on a GPU unseeded.
    /// </summary>
    public static void Seed(int seed)
    {
        manual_seed(seed);
        if (cuda.is_available()) cuda.manual_seed_all(seed);
    }
}
