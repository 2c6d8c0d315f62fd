using Microsoft.Extensions.Logging;
using ShareGPT4V.Configuration;
using TorchSharp;

namespace ShareGPT4V.Devices;

/// <summary>What a model load asks of a device provider.</summary>
public sealed record DeviceResolutionRequest
{
    /// <summary>The device option as given (<c>cpu</c>, <c>cuda</c>, <c>cuda:N</c>, <c>auto</c>).</summary>
    public required string Device { get; init; }
    /// <summary>The dtype option as given (<c>auto</c> or a float type).</summary>
    public string DType { get; init; } = "auto";
    /// <summary>Whether a CUDA request may run on the CPU when CUDA cannot be used (logged as a warning).</summary>
    public bool AllowCpuFallback { get; init; }
    /// <summary>The model to be placed; with <see cref="Positions"/> and <see cref="Batch"/> it sizes the memory check.</summary>
    internal LlavaConfig? Config { get; init; }
    /// <summary>Positions per row of the KV cache the model will use.</summary>
    public int Positions { get; init; }
    /// <summary>Rows of the KV cache the model will use.</summary>
    public int Batch { get; init; } = 1;
}

/// <summary>Where and in what element type a model runs, as decided by an <see cref="IDeviceProvider"/>.</summary>
public sealed record DevicePlacement
{
    /// <summary>The device the model's weights and caches live on.</summary>
    public required torch.Device Device { get; init; }
    /// <summary>The element type of the model's floating-point weights and activations.</summary>
    public required torch.ScalarType DType { get; init; }
    /// <summary>For logs: the device, its name and memory where known, the dtype and why it was chosen.</summary>
    public required string Description { get; init; }
    /// <summary>The memory estimate the decision was checked against, when a model was given.</summary>
    public MemoryEstimate? Estimate { get; init; }
    /// <summary>Set when a CUDA request was served by the CPU: why CUDA could not be used.</summary>
    public string? FallbackReason { get; init; }
}

/// <summary>
/// Turns the device and dtype options into a <see cref="DevicePlacement"/> before any weight is read, or refuses
/// with a <see cref="DeviceException"/> that says what is wrong and how to fix it. Core ships the CPU-only
/// <see cref="CpuDeviceProvider"/>; the ShareGPT4V.Cuda package adds CUDA discovery and selection.
/// </summary>
public interface IDeviceProvider
{
    /// <summary>Decides where and in what element type the model runs.</summary>
    /// <param name="request">The options as given and the model to be placed.</param>
    /// <param name="logger">Receives warnings, such as a fallback to the CPU.</param>
    /// <exception cref="DeviceException">The request cannot be served; the message says why and what to change.</exception>
    DevicePlacement Resolve(DeviceResolutionRequest request, ILogger logger);
}
