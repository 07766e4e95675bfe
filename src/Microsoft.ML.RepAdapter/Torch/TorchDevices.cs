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
        EnsureLibTorch();
        if (gpuDeviceId is null) return CPU;
        if (cuda.is_available() && gpuDeviceId.Value < cuda.device_count()) return new Device(TorchSharp.DeviceType.CUDA, gpuDeviceId.Value);
        string why = $"GPU {gpuDeviceId} was requested but CUDA is not available to TorchSharp (the application references a CPU libtorch; "
            + "reference libtorch-cuda-12.8-linux-x64 instead, on a machine with CUDA)";
        if (!fallbackToCpu) throw new InvalidOperationException($"{why}, and FallbackToCpu is false.");
        warn?.Invoke($"{why}: falling back to the CPU.");
        return CPU;
    }

    /// <summary>
    /// Loads libtorch, or says which package the application lacks: this library depends on the managed TorchSharp only, so
    /// that each application chooses its native libtorch (CPU or CUDA), as Microsoft.ML.TorchSharp's users do.
    /// </summary>
    /// <exception cref="InvalidOperationException">No libtorch could be loaded.</exception>
    public static void EnsureLibTorch()
    {
        try
        {
            InitializeDeviceType(TorchSharp.DeviceType.CPU);
        }
        catch (Exception e) when (e is NotSupportedException or DllNotFoundException or TypeInitializationException or EntryPointNotFoundException)
        {
            throw new InvalidOperationException(
                "TorchSharp found no libtorch. Add a libtorch package to the application: libtorch-cpu (or libtorch-cpu-linux-x64, "
                + "libtorch-cpu-win-x64) for the CPU, libtorch-cuda-12.8-linux-x64 (or -win-x64) for CUDA, at the version TorchSharp "
                + $"{typeof(TorchSharp.torch).Assembly.GetName().Version} was built for (libtorch 2.10.0). TorchSharp said: {e.Message}", e);
        }
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
