using Microsoft.Extensions.Logging;
using ShareGPT4V.Devices;
using TorchSharp;

namespace ShareGPT4V.Cuda;

/// <summary>Options of the CUDA device provider.</summary>
public sealed record CudaOptions
{
    /// <summary>Environment variable read when <see cref="LibTorchDirectory"/> is not set.</summary>
    public const string LibTorchDirectoryVariable = "SHAREGPT4V_LIBTORCH_DIR";

    /// <summary>
    /// Folder of a libtorch to load before TorchSharp starts (e.g. the <c>torch/lib</c> folder of a PyTorch install):
    /// the way to use a CUDA libtorch that no runtime package provides. Null = <c>SHAREGPT4V_LIBTORCH_DIR</c>, else
    /// the runtime packages and <c>LD_LIBRARY_PATH</c>.
    /// </summary>
    public string? LibTorchDirectory { get; init; }

    /// <summary>Device memory kept out of the fit check for the CUDA context, cuBLAS workspaces and fragmentation.</summary>
    public long ReserveBytes { get; init; } = 1L << 30;

    /// <summary>Replaces the real probe (tests, or callers with their own discovery).</summary>
    internal ICudaProbe? Probe { get; init; }
}

/// <summary>
/// Places models on CUDA devices: probes the driver and libtorch, selects <c>cuda:N</c> or the device with the most
/// free memory, applies the dtype policy, and refuses before loading when the memory estimate does not fit. When CUDA
/// cannot be used it refuses with the reason, or, only if the caller allows it, falls back to the CPU with a warning.
/// </summary>
public sealed class CudaDeviceProvider : IDeviceProvider
{
    private readonly CudaOptions _options;
    private readonly ICudaProbe _probe;

    private readonly Func<bool> _cpuAvailable;

    /// <summary>A provider that probes CUDA (through TorchSharp) when a request names a GPU.</summary>
    /// <param name="options">Where libtorch is and how much GPU memory to keep free; defaults when null.</param>
    public CudaDeviceProvider(CudaOptions? options = null) : this(options, null) { }

    internal CudaDeviceProvider(CudaOptions? options, Func<bool>? cpuLibTorchAvailable)
    {
        _options = options ?? new CudaOptions();
        // With a fake probe nothing native is consulted; the real probe needs a CPU libtorch to fall back to.
        _cpuAvailable = cpuLibTorchAvailable ?? (_options.Probe is null ? NativeLibTorch.CpuLibTorchAvailable : () => true);
        if (_options.ReserveBytes < 0) throw new ModelConfigurationException("ReserveBytes must not be negative", null, nameof(CudaOptions.ReserveBytes));
        _probe = _options.Probe ?? new TorchSharpCudaProbe(_options.LibTorchDirectory);
    }

    /// <summary>The options the provider was made with.</summary>
    public CudaOptions Options => _options;

    /// <inheritdoc />
    public DevicePlacement Resolve(DeviceResolutionRequest request, ILogger logger)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(logger);
        var wanted = DeviceRequest.Parse(request.Device);
        var dtype = DTypeChoice.Parse(request.DType);
        if (wanted.Kind == DeviceKind.Cpu) return CpuDeviceProvider.Cpu(request, dtype, null);

        var probed = _probe.Probe();
        if (!probed.Available)
        {
            var problem = probed.Problem ?? "CUDA is not available";
            if (wanted.Kind == DeviceKind.Cuda && !request.AllowCpuFallback)
                throw new DeviceException($"Device '{request.Device}' was requested but CUDA cannot be used: {problem}");
            if (!_cpuAvailable())
                throw new DeviceException($"Device '{request.Device}': CUDA cannot be used ({problem}) and no libtorch is available "
                                          + "for the CPU fallback either (no libtorch_cpu.so next to the app or on LD_LIBRARY_PATH)");
            logger.LogWarning("Device {Device}: CUDA cannot be used ({Problem}); running on the CPU{Because}", request.Device, problem,
                wanted.Kind == DeviceKind.Auto ? "" : " because AllowCpuFallback is set");
            return CpuDeviceProvider.Cpu(request, dtype, problem);
        }

        var device = CudaDeviceSelector.Select(wanted, probed.Devices);
        var (chosen, why) = CudaDeviceSelector.ChooseDType(device, dtype);
        MemoryEstimate? estimate = null;
        if (request.Config is { } config && request.Positions > 0)
        {
            estimate = MemoryEstimator.Estimate(config, chosen, request.Positions, Math.Max(1, request.Batch));
            CudaDeviceSelector.CheckFits(device, estimate, _options.ReserveBytes);
        }
        var placement = new DevicePlacement
        {
            Device = new torch.Device(DeviceType.CUDA, device.Index),
            DType = chosen,
            Description = $"{device}, {DTypeChoice.Name(chosen)} ({why})"
                          + (estimate is null ? "" : $", estimated {estimate}"),
            Estimate = estimate,
        };
        logger.LogInformation("Device {Device} resolved to {Placement}; libtorch: {Native}", request.Device, placement.Description,
            probed.Native?.Summary ?? "unknown");
        return placement;
    }
}
