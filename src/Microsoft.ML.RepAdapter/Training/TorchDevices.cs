using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Training;

/// <summary>Device selection with ML.NET's TorchSharp conventions (GpuDeviceId, FallbackToCpu).</summary>
public static class TorchDevices
{
    /// <summary>
    /// CUDA device <paramref name="gpuDeviceId"/> when requested and available; otherwise the CPU if
    /// <paramref name="fallbackToCpu"/>, else an error that says why.
    /// </summary>
    public static Device Select(int? gpuDeviceId, bool fallbackToCpu)
    {
        if (gpuDeviceId is null) return CPU;
        if (cuda.is_available() && gpuDeviceId.Value < cuda.device_count()) return new Device(TorchSharp.DeviceType.CUDA, gpuDeviceId.Value);
        if (fallbackToCpu) return CPU;
        throw new InvalidOperationException(
            $"GPU {gpuDeviceId} was requested but CUDA is not available to TorchSharp (build with -p:TorchSharpBackend=cuda on a CUDA machine), "
            + "and FallbackToCpu is false.");
    }
}
