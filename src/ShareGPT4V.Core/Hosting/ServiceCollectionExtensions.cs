using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using ShareGPT4V.Devices;

namespace ShareGPT4V.Hosting;

/// <summary>Registers ShareGPT4V in a host's service collection.</summary>
public static class ServiceCollectionExtensions
{
    /// <summary>
    /// Registers a model: a <see cref="ShareGPT4VModelLoader"/> that a hosted service starts loading when the host starts
    /// (progress logged, readiness through <see cref="ShareGPT4VHealthCheck"/>), the <see cref="MultimodalPipeline"/>
    /// (resolving it waits for the load) and an <see cref="IChatClient"/> whose requests wait asynchronously for the load.
    /// Options are validated when the host starts (or at the first resolve without a host), with messages naming the option.
    /// </summary>
    public static IServiceCollection AddShareGPT4V(this IServiceCollection services, Action<ShareGPT4VOptions> configure)
    {
        AddModel(services, null, configure);
        services.TryAddSingleton<IChatClient>(sp => new ShareGPT4VChatClient(sp.GetRequiredService<ShareGPT4VModelLoader>()));
        return services;
    }

    /// <summary>
    /// As <see cref="AddShareGPT4V"/>, under <paramref name="serviceKey"/>, so several models run side by side: inject
    /// them with <c>[FromKeyedServices("name")] IChatClient</c> (or <see cref="MultimodalPipeline"/>, <see cref="ShareGPT4VModelLoader"/>).
    /// </summary>
    public static IServiceCollection AddKeyedShareGPT4V(this IServiceCollection services, object serviceKey, Action<ShareGPT4VOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(serviceKey);
        AddModel(services, serviceKey, configure);
        services.TryAddKeyedSingleton<IChatClient>(serviceKey, (sp, key) => new ShareGPT4VChatClient(sp.GetRequiredKeyedService<ShareGPT4VModelLoader>(key)));
        return services;
    }

    /// <summary>
    /// Registers a model (as <see cref="AddShareGPT4V"/>) and its <see cref="IChatClient"/> through Microsoft.Extensions.AI's
    /// <see cref="ChatClientBuilder"/>, returned so middleware can be added:
    /// <c>services.AddShareGPT4VChatClient(o => ...).UseLogging().UseOpenTelemetry().UseDistributedCache()</c>.
    /// </summary>
    public static ChatClientBuilder AddShareGPT4VChatClient(this IServiceCollection services, Action<ShareGPT4VOptions> configure)
    {
        AddModel(services, null, configure);
        return services.AddChatClient(sp => new ShareGPT4VChatClient(sp.GetRequiredService<ShareGPT4VModelLoader>()));
    }

    /// <summary>As <see cref="AddShareGPT4VChatClient"/>, under <paramref name="serviceKey"/>.</summary>
    public static ChatClientBuilder AddKeyedShareGPT4VChatClient(this IServiceCollection services, object serviceKey, Action<ShareGPT4VOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(serviceKey);
        AddModel(services, serviceKey, configure);
        return services.AddKeyedChatClient(serviceKey, sp => new ShareGPT4VChatClient(sp.GetRequiredKeyedService<ShareGPT4VModelLoader>(serviceKey)));
    }

    private static void AddModel(IServiceCollection services, object? key, Action<ShareGPT4VOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configure);
        var name = key?.ToString() ?? Options.DefaultName;
        services.AddOptions<ShareGPT4VOptions>(name).Configure(configure);
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<ShareGPT4VOptions>, ShareGPT4VOptionsValidator>());
        services.AddSingleton(new ShareGPT4VRegistration(key));
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IHostedService, ShareGPT4VLoaderService>());
        ShareGPT4VModelLoader Create(IServiceProvider sp) => new(key, sp.GetRequiredService<IOptionsMonitor<ShareGPT4VOptions>>().Get(name),
            sp.GetService<IDeviceProvider>(), sp.GetService<ILoggerFactory>());
        if (key is null)
        {
            services.TryAddSingleton(Create);
            services.TryAddSingleton(sp => sp.GetRequiredService<ShareGPT4VModelLoader>().GetPipelineAsync().GetAwaiter().GetResult());
        }
        else
        {
            services.TryAddKeyedSingleton(key, (sp, _) => Create(sp));
            services.TryAddKeyedSingleton(key, (sp, k) => sp.GetRequiredKeyedService<ShareGPT4VModelLoader>(k).GetPipelineAsync().GetAwaiter().GetResult());
        }
    }
}
