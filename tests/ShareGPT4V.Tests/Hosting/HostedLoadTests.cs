using System.Diagnostics;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Caching.Distributed;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using ShareGPT4V.Devices;
using ShareGPT4V.Hosting;
using Xunit;

namespace ShareGPT4V.Tests.Hosting;

public class HostedLoadTests
{
    private static string Model => Fixtures.Path("oracle/hf_llama2vocab");

    /// <summary>Holds the load inside device resolution until released, so the "loading" state can be observed.</summary>
    private sealed class GatedProvider : IDeviceProvider
    {
        public readonly ManualResetEventSlim Entered = new(), Release = new();
        public DevicePlacement Resolve(DeviceResolutionRequest request, ILogger logger)
        {
            Entered.Set();
            Release.Wait(TimeSpan.FromSeconds(30));
            return CpuDeviceProvider.Cpu(request, null, null);
        }
    }

    private static async Task<HealthCheckResult> Health(IServiceProvider sp) =>
        await ActivatorUtilities.CreateInstance<ShareGPT4VHealthCheck>(sp).CheckHealthAsync(new HealthCheckContext());

    [Fact]
    public async Task HostStartLoadsInTheBackgroundAndReadinessFollowsTheLoad()
    {
        var gate = new GatedProvider();
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.Services.AddSingleton<IDeviceProvider>(gate);
        builder.Services.AddShareGPT4V(o => { o.ModelPath = Model; o.Template = "llava_v1"; o.MaxNewTokens = 2; });
        using var host = builder.Build();
        var loader = host.Services.GetRequiredService<ShareGPT4VModelLoader>();
        Assert.Equal(ShareGPT4VModelStatus.NotStarted, loader.Status);

        await host.StartAsync();                                  // returns while the model is still loading
        Assert.True(gate.Entered.Wait(TimeSpan.FromSeconds(30)));  // nothing was resolved: the hosted service started the load
        Assert.Equal(ShareGPT4VModelStatus.Loading, loader.Status);
        var loading = await Health(host.Services);
        Assert.Equal(HealthStatus.Unhealthy, loading.Status);
        Assert.Contains("loading", loading.Description);

        var client = host.Services.GetRequiredService<IChatClient>();
        var answer = client.GetResponseAsync("Hi");             // waits for the load without blocking a thread
        Assert.False(answer.IsCompleted);
        gate.Release.Set();
        Assert.Equal(2, (await answer).Usage!.OutputTokenCount);
        Assert.Equal(ShareGPT4VModelStatus.Ready, loader.Status);
        Assert.Equal(HealthStatus.Healthy, (await Health(host.Services)).Status);
        Assert.Same(loader.TryGetPipeline(), host.Services.GetRequiredService<MultimodalPipeline>());
        await host.StopAsync();
    }

    [Fact]
    public async Task FailedLoadIsReportedByTheHealthCheckAndTheRequests()
    {
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        var broken = Directory.CreateTempSubdirectory("sharegpt4v-broken-").FullName;
        File.WriteAllText(Path.Combine(broken, "config.json"), "{ not json");
        builder.Services.AddShareGPT4V(o => o.ModelPath = broken);
        using var host = builder.Build();
        await host.StartAsync();
        var loader = host.Services.GetRequiredService<ShareGPT4VModelLoader>();
        var e = await Assert.ThrowsAsync<ModelConfigurationException>(() => host.Services.GetRequiredService<IChatClient>().GetResponseAsync("Hi"));
        Assert.Contains("config.json", e.Message);
        Assert.Equal(ShareGPT4VModelStatus.Failed, loader.Status);
        var health = await Health(host.Services);
        Assert.Equal(HealthStatus.Unhealthy, health.Status);
        Assert.Contains("config.json", health.Description);
        await host.StopAsync();
        Directory.Delete(broken, true);
    }

    [Fact]
    public async Task KeyedModelsRunSideBySide()
    {
        using var sp = new ServiceCollection()
            .AddKeyedShareGPT4V("llava", o => { o.ModelPath = Model; o.Template = "llava_v1"; })
            .AddKeyedShareGPT4V("raw", o => { o.ModelPath = Model; o.Template = "raw"; })
            .BuildServiceProvider();
        var a = sp.GetRequiredKeyedService<MultimodalPipeline>("llava");
        var b = sp.GetRequiredKeyedService<MultimodalPipeline>("raw");
        Assert.NotSame(a, b);
        Assert.Equal("llava_v1", a.Template.Name);
        Assert.Equal("raw", b.Template.Name);
        var r = await sp.GetRequiredKeyedService<IChatClient>("raw").GetResponseAsync("USER: Hi ASSISTANT:", new ChatOptions { MaxOutputTokens = 2 });
        Assert.Equal(2, r.Usage!.OutputTokenCount);
        Assert.Null(sp.GetService<IChatClient>()); // nothing unkeyed was registered
        Assert.Equal(HealthStatus.Healthy, (await Health(sp)).Status);
    }

    [Fact]
    public async Task ChatClientBuilderMiddlewareWrapsTheModel()
    {
        var activities = new List<Activity>();
        using var listener = new ActivityListener
        {
            ShouldListenTo = s => s.Name == "sharegpt4v-test",
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
            ActivityStopped = a => { lock (activities) activities.Add(a); },
        };
        ActivitySource.AddActivityListener(listener);
        var logs = new ListLoggerProvider();
        using var loggerFactory = LoggerFactory.Create(b => b.AddProvider(logs).SetMinimumLevel(LogLevel.Trace));
        int modelCalls = 0;
        var services = new ServiceCollection();
        services.AddShareGPT4VChatClient(o => { o.ModelPath = Model; o.Template = "llava_v1"; o.MaxNewTokens = 3; })
            .UseLogging(loggerFactory)
            .UseOpenTelemetry(sourceName: "sharegpt4v-test")
            .UseDistributedCache(new DictionaryCache())
            .Use(async (messages, options, next, ct) => { Interlocked.Increment(ref modelCalls); await next(messages, options, ct); });
        using var sp = services.BuildServiceProvider();
        var client = sp.GetRequiredService<IChatClient>();
        var first = await client.GetResponseAsync("Describe a cat.");
        var second = await client.GetResponseAsync("Describe a cat.");
        Assert.Equal(first.Text, second.Text);
        Assert.Equal(1, modelCalls);                               // the second answer came from the cache
        Assert.Contains(activities, a => a.GetTagItem("gen_ai.request.model") is not null || a.DisplayName.StartsWith("chat"));
        Assert.Contains(logs.Messages, m => m.Contains("GetResponseAsync"));
        Assert.NotNull(client.GetService<ShareGPT4VModelLoader>());
    }

    private sealed class DictionaryCache : IDistributedCache
    {
        private readonly Dictionary<string, byte[]> _d = new();
        public byte[]? Get(string key) { lock (_d) return _d.GetValueOrDefault(key); }
        public Task<byte[]?> GetAsync(string key, CancellationToken token = default) => Task.FromResult(Get(key));
        public void Set(string key, byte[] value, DistributedCacheEntryOptions options) { lock (_d) _d[key] = value; }
        public Task SetAsync(string key, byte[] value, DistributedCacheEntryOptions options, CancellationToken token = default) { Set(key, value, options); return Task.CompletedTask; }
        public void Refresh(string key) { }
        public Task RefreshAsync(string key, CancellationToken token = default) => Task.CompletedTask;
        public void Remove(string key) { lock (_d) _d.Remove(key); }
        public Task RemoveAsync(string key, CancellationToken token = default) { Remove(key); return Task.CompletedTask; }
    }

    private sealed class ListLoggerProvider : ILoggerProvider
    {
        public readonly List<string> Messages = new();
        public ILogger CreateLogger(string categoryName) => new L(this);
        public void Dispose() { }
        private sealed class L(ListLoggerProvider p) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
            public bool IsEnabled(LogLevel logLevel) => true;
            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
            { lock (p.Messages) p.Messages.Add(formatter(state, exception)); }
        }
    }
}
