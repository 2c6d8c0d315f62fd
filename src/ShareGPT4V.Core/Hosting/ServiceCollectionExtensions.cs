using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using ShareGPT4V.Devices;

namespace ShareGPT4V.Hosting;

/// <summary>Registers ShareGPT4V in a host's service collection.</summary>
public static class ServiceCollectionExtensions
{
    /// <summary>
    /// Registers a singleton <see cref="MultimodalPipeline"/> (loaded on first use, disposed with the container) and an
    /// <see cref="IChatClient"/> over it. Options are validated when first resolved, with messages naming the option.
    /// </summary>
    public static IServiceCollection AddShareGPT4V(this IServiceCollection services, Action<ShareGPT4VOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configure);
        services.AddOptions<ShareGPT4VOptions>().Configure(configure);
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<ShareGPT4VOptions>, ShareGPT4VOptionsValidator>());
        services.TryAddSingleton(sp =>
        {
            var options = sp.GetRequiredService<IOptions<ShareGPT4VOptions>>().Value;
            var logger = sp.GetService<ILoggerFactory>()?.CreateLogger<MultimodalPipeline>();
            // A device provider registered by a device package (AddShareGPT4VCuda) decides the device; else CPU only.
            var pipelineOptions = options.ToPipelineOptions() with { DeviceProvider = sp.GetService<IDeviceProvider>() };
            return MultimodalPipeline.Load(pipelineOptions, logger: logger);
        });
        services.TryAddSingleton<IChatClient>(sp => new ShareGPT4VChatClient(sp.GetRequiredService<MultimodalPipeline>(), ownsPipeline: false));
        return services;
    }
}
