namespace ShareGPT4V.Cuda;

/// <summary>One CUDA device as the driver reports it. <see cref="Index"/> is the CUDA ordinal (<c>cuda:N</c>).</summary>
internal sealed record CudaDeviceInfo
{
    public required int Index { get; init; }
    public required string Name { get; init; }
    public required int ComputeCapabilityMajor { get; init; }
    public required int ComputeCapabilityMinor { get; init; }
    public required long TotalBytes { get; init; }
    /// <summary>Free memory when probed (the whole device's, whoever holds the rest).</summary>
    public required long FreeBytes { get; init; }
    public string? PciBusId { get; init; }

    public string ComputeCapability => $"{ComputeCapabilityMajor}.{ComputeCapabilityMinor}";

    /// <summary>bfloat16 arithmetic runs natively from compute capability 8.0 (Ampere) on.</summary>
    public bool SupportsBFloat16 => ComputeCapabilityMajor >= 8;

    public override string ToString() =>
        $"cuda:{Index} {Name} (compute {ComputeCapability}, {Gib(FreeBytes)} free of {Gib(TotalBytes)})";

    internal static string Gib(long bytes) => $"{bytes / (1024.0 * 1024 * 1024):F1} GiB";
}

/// <summary>What <see cref="ICudaProbe.Probe"/> found: whether CUDA can be used, why not, and the devices.</summary>
internal sealed record CudaProbeResult
{
    /// <summary>True when the CUDA build of libtorch is loaded, libtorch reports CUDA available and a device exists.</summary>
    public required bool Available { get; init; }
    /// <summary>Why CUDA cannot be used, with what to do about it (null when available).</summary>
    public string? Problem { get; init; }
    /// <summary>The devices the driver lists (empty when there is no driver).</summary>
    public IReadOnlyList<CudaDeviceInfo> Devices { get; init; } = Array.Empty<CudaDeviceInfo>();
    /// <summary>The CUDA driver's version as an integer (e.g. 13000), when a driver was found.</summary>
    public int? DriverVersion { get; init; }
    /// <summary>Which native libtorch libraries the process has loaded.</summary>
    public NativeLibTorchReport? Native { get; init; }
}

/// <summary>
/// Finds CUDA devices and checks that the CUDA build of libtorch is usable. The real implementation is
/// <see cref="TorchSharpCudaProbe"/>; the selection logic takes this interface so it can be tested without a GPU.
/// </summary>
internal interface ICudaProbe
{
    CudaProbeResult Probe();
}
