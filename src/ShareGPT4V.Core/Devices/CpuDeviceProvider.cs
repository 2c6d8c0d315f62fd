using Microsoft.Extensions.Logging;
using TorchSharp;

namespace ShareGPT4V.Devices;

/// <summary>
/// The default provider: runs on the CPU. A CUDA request is refused (the CUDA support lives in the ShareGPT4V.Cuda
/// package) unless the caller allows the CPU fallback, in which case the fallback is logged as a warning.
/// </summary>
public sealed class CpuDeviceProvider : IDeviceProvider
{
    /// <summary>The shared instance (the provider has no state).</summary>
    public static CpuDeviceProvider Instance { get; } = new();

    /// <inheritdoc />
    public DevicePlacement Resolve(DeviceResolutionRequest request, ILogger logger)
    {
        ArgumentNullException.ThrowIfNull(request);
        var wanted = DeviceRequest.Parse(request.Device);
        var dtype = DTypeChoice.Parse(request.DType);
        if (wanted.Kind == DeviceKind.Cpu) return Cpu(request, dtype, null);

        const string reason = "no CUDA device provider is registered: reference the ShareGPT4V.Cuda package and pass "
            + "CudaDeviceProvider to PipelineOptions.DeviceProvider (or call services.AddShareGPT4VCuda() in a host)";
        if (wanted.Kind == DeviceKind.Cuda && !request.AllowCpuFallback)
            throw new DeviceException($"Device '{request.Device}' was requested but {reason}. Set AllowCpuFallback to run on the CPU instead.");
        if (wanted.Kind == DeviceKind.Auto)
            logger.LogInformation("Device auto: {Reason}; running on the CPU", reason);
        else
            logger.LogWarning("Device {Device} requested but {Reason}; running on the CPU because AllowCpuFallback is set", request.Device, reason);
        return Cpu(request, dtype, reason);
    }

    /// <summary>The CPU placement: float32 unless the caller named a dtype (CPU half-precision matmul is very slow).</summary>
    public static DevicePlacement Cpu(DeviceResolutionRequest request, torch.ScalarType? dtype, string? fallbackReason)
    {
        var t = dtype ?? torch.ScalarType.Float32;
        var estimate = request.Config is { } c && request.Positions > 0
            ? MemoryEstimator.Estimate(c, t, request.Positions, Math.Max(1, request.Batch)) : null;
        return new DevicePlacement
        {
            Device = torch.CPU,
            DType = t,
            Description = $"cpu, {DTypeChoice.Name(t)}" + (dtype is null ? " (auto: float32 on the CPU)" : "")
                          + (fallbackReason is null ? "" : " (CPU fallback)"),
            Estimate = estimate,
            FallbackReason = fallbackReason,
        };
    }
}
