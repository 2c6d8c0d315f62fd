using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using ShareGPT4V.Devices;

namespace ShareGPT4V.Cuda;

/// <summary>Registers CUDA device support in a host's service collection.</summary>
public static class CudaServiceCollectionExtensions
{
    /// <summary>
    /// Registers <see cref="CudaDeviceProvider"/> as the <see cref="IDeviceProvider"/> that <c>AddShareGPT4V</c> uses, so
    /// <c>Device = "cuda:0"</c> (or <c>"cuda"</c>, <c>"auto"</c>) works. Nothing is probed until a model loads.
    /// </summary>
    public static IServiceCollection AddShareGPT4VCuda(this IServiceCollection services, Action<CudaOptionsBuilder>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        var builder = new CudaOptionsBuilder();
        configure?.Invoke(builder);
        var options = builder.Build();
        services.Replace(ServiceDescriptor.Singleton<IDeviceProvider>(_ => new CudaDeviceProvider(options)));
        return services;
    }
}

/// <summary>Settable form of <see cref="CudaOptions"/> for <see cref="CudaServiceCollectionExtensions.AddShareGPT4VCuda"/>.</summary>
public sealed class CudaOptionsBuilder
{
    /// <inheritdoc cref="CudaOptions.LibTorchDirectory"/>
    public string? LibTorchDirectory { get; set; }
    /// <inheritdoc cref="CudaOptions.ReserveBytes"/>
    public long ReserveBytes { get; set; } = 1L << 30;
    /// <inheritdoc cref="CudaOptions.Probe"/>
    internal ICudaProbe? Probe { get; set; }

    internal CudaOptions Build() => new() { LibTorchDirectory = LibTorchDirectory, ReserveBytes = ReserveBytes, Probe = Probe };
}
