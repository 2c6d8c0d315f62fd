using ShareGPT4V.Devices;
using TorchSharp;

namespace ShareGPT4V.Cuda;

/// <summary>The decisions of the CUDA provider, as pure functions of what was probed (tested without a GPU).</summary>
internal static class CudaDeviceSelector
{
    /// <summary>
    /// The device for a request: <c>cuda:N</c> must exist; <c>cuda</c> and <c>auto</c> take the device with the most
    /// free memory (the lowest index among equals).
    /// </summary>
    public static CudaDeviceInfo Select(DeviceRequest request, IReadOnlyList<CudaDeviceInfo> devices)
    {
        if (request.Kind == DeviceKind.Cpu) throw new ArgumentException("A CPU request selects no CUDA device", nameof(request));
        if (devices.Count == 0) throw new DeviceException($"Device '{request}' was requested but no CUDA device is visible");
        if (request.Index is int i)
        {
            var d = devices.FirstOrDefault(x => x.Index == i);
            return d ?? throw new DeviceException(
                $"Device 'cuda:{i}' does not exist: {devices.Count} CUDA device(s) are visible ({string.Join("; ", devices)})");
        }
        return devices.OrderByDescending(d => d.FreeBytes).ThenBy(d => d.Index).First();
    }

    /// <summary>
    /// The element type on a CUDA device: <c>auto</c> is bfloat16 where the device supports it (compute capability
    /// 8.0 and up) and float16 otherwise; an explicit float32 or float16 is honoured; bfloat16 is refused where unsupported.
    /// </summary>
    public static (torch.ScalarType DType, string Why) ChooseDType(CudaDeviceInfo device, torch.ScalarType? requested)
    {
        if (requested is null)
            return device.SupportsBFloat16
                ? (torch.ScalarType.BFloat16, $"auto: bfloat16 on compute {device.ComputeCapability}")
                : (torch.ScalarType.Float16, $"auto: float16, compute {device.ComputeCapability} has no bfloat16");
        if (requested == torch.ScalarType.BFloat16 && !device.SupportsBFloat16)
            throw new DeviceException(
                $"DType bfloat16 needs compute capability 8.0 or newer but cuda:{device.Index} ({device.Name}) has {device.ComputeCapability}: use float16 or auto");
        return (requested.Value, "as requested");
    }

    /// <summary>Refuses, naming every figure, when the estimate plus the reserve exceeds the device's free memory.</summary>
    public static void CheckFits(CudaDeviceInfo device, MemoryEstimate estimate, long reserveBytes)
    {
        long needed = estimate.TotalBytes + reserveBytes;
        if (needed <= device.FreeBytes) return;
        throw new DeviceException(
            $"The model will not fit on cuda:{device.Index} ({device.Name}): it needs about {MemoryEstimate.Gib(needed)} "
            + $"({estimate} + {MemoryEstimate.Gib(reserveBytes)} reserved for the CUDA context and libraries) "
            + $"but only {MemoryEstimate.Gib(device.FreeBytes)} of {MemoryEstimate.Gib(device.TotalBytes)} is free. "
            + "Lower ContextLength or MaxBatchSize, use float16/bfloat16, or choose another device.");
    }
}
