using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Hosting;

namespace ShareGPT4V.Hosting;

/// <summary>The key of one model registered with <c>AddShareGPT4V</c> / <c>AddKeyedShareGPT4V</c> (null = unkeyed).</summary>
internal sealed record ShareGPT4VRegistration(object? ServiceKey);

internal static class Registrations
{
    public static IEnumerable<ShareGPT4VModelLoader> Loaders(IServiceProvider services) =>
        services.GetServices<ShareGPT4VRegistration>().DistinctBy(r => r.ServiceKey).Select(r => r.ServiceKey is null
            ? services.GetRequiredService<ShareGPT4VModelLoader>()
            : services.GetRequiredKeyedService<ShareGPT4VModelLoader>(r.ServiceKey));
}

/// <summary>
/// Starts loading every registered model when the host starts, in the background: the host comes up at once, requests
/// wait for their model, and <see cref="ShareGPT4VHealthCheck"/> reports not ready until it is loaded. Options are
/// validated here, so a bad configuration stops the host at start rather than at the first request.
/// </summary>
public sealed class ShareGPT4VLoaderService(IServiceProvider services) : IHostedService
{
    /// <summary>Validates each registered model's options and starts its load.</summary>
    public Task StartAsync(CancellationToken cancellationToken)
    {
        foreach (var loader in Registrations.Loaders(services)) loader.StartLoading();
        return Task.CompletedTask;
    }

    /// <summary>Nothing to stop: the container disposes the loaders, which dispose their pipelines.</summary>
    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}

/// <summary>
/// Readiness of the registered ShareGPT4V models: healthy when every model is loaded, unhealthy while one loads
/// (with its progress) or after one failed (with the error). Register with
/// <c>services.AddHealthChecks().AddCheck&lt;ShareGPT4VHealthCheck&gt;("sharegpt4v")</c>.
/// </summary>
public sealed class ShareGPT4VHealthCheck(IServiceProvider services) : IHealthCheck
{
    /// <summary>Reports the state of every registered model.</summary>
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        var loaders = Registrations.Loaders(services).ToList();
        var data = loaders.ToDictionary(l => l.ServiceKey?.ToString() ?? "(default)", l => (object)l.Status.ToString());
        if (loaders.FirstOrDefault(l => l.Status == ShareGPT4VModelStatus.Failed) is { } failed)
            return Task.FromResult(HealthCheckResult.Unhealthy($"Model {failed.ServiceKey ?? "(default)"} failed to load: {failed.Error?.Message}", failed.Error, data));
        if (loaders.FirstOrDefault(l => l.Status != ShareGPT4VModelStatus.Ready) is { } pending)
            return Task.FromResult(HealthCheckResult.Unhealthy(
                $"Model {pending.ServiceKey ?? "(default)"} is {pending.Status.ToString().ToLowerInvariant()} ({pending.Progress:P0} of the weights read)", data: data));
        return Task.FromResult(HealthCheckResult.Healthy($"{loaders.Count} model(s) loaded", data));
    }
}
