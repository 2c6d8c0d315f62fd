using System.Net.Http.Headers;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using ShareGPT4V.Server;
using Xunit;

namespace ShareGPT4V.Server.Tests;

/// <summary>
/// One server on 127.0.0.1 (a port the system picks) over the tiny hf_llama2vocab oracle model, shared by the tests
/// of the collection. The tests compare its answers with the same pipeline called in-process.
/// </summary>
public sealed class ServerFixture : IAsyncLifetime
{
    public const string ApiKey = "test-key-7f3a";
    public static string ModelDir => Path.Combine(AppContext.BaseDirectory, "Fixtures", "hf_llama2vocab");
    public static string ImagePath(int i) => Path.Combine(ModelDir, $"image{i}.png");

    public WebApplication App { get; private set; } = null!;
    public string BaseUrl { get; private set; } = "";
    public ServerOptions Options { get; } = new()
    {
        ModelPath = ModelDir,
        Urls = "http://127.0.0.1:0",
        ApiKey = ApiKey,
        MaxQueue = 96,
        MaxTokens = 1500,
        MaxBodyBytes = 4 * 1024 * 1024,
        MaxImageBytes = 2 * 1024 * 1024,
        MaxImagePixels = 20_000_000,
        RequestTimeout = TimeSpan.FromMinutes(2),
        AllowedImageUrlPrefixes = new[] { new Uri(Path.Combine(ModelDir, "allowed") + "/").AbsoluteUri },
    };

    public MultimodalPipeline Pipeline => App.Services.GetRequiredService<ModelHost>().Pipeline!;
    public ServerMetrics Metrics => App.Services.GetRequiredService<ServerMetrics>();
    public string ModelName => Options.EffectiveModelName;

    public async Task InitializeAsync()
    {
        App = ServerApp.Build(Options);
        await App.StartAsync();
        BaseUrl = ServerApp.Addresses(App).Single().TrimEnd('/');
        await App.Services.GetRequiredService<ModelHost>().Loaded.WaitAsync(TimeSpan.FromMinutes(2));
    }

    public async Task DisposeAsync()
    {
        await App.StopAsync();
        await App.DisposeAsync();
    }

    public HttpClient Http(bool authorized = true)
    {
        // No draining of abandoned responses: a client that stops reading must close its connection at once,
        // as a browser does, rather than read on for seconds to keep the connection.
        var http = new HttpClient(new SocketsHttpHandler { MaxResponseDrainSize = 0 }) { BaseAddress = new Uri(BaseUrl), Timeout = TimeSpan.FromMinutes(2) };
        if (authorized) http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", ApiKey);
        return http;
    }

    /// <summary>Waits until no request is admitted, generating, queued for the engine or holding an engine sequence slot.</summary>
    public async Task WaitIdleAsync(TimeSpan timeout)
    {
        var until = DateTime.UtcNow + timeout;
        while (Metrics.Admitted != 0 || Metrics.Generating != 0 || Pipeline.QueuedRequests != 0 || Pipeline.ActiveSequences != 0)
        {
            if (DateTime.UtcNow > until)
                Assert.Fail($"The server did not become idle: {Metrics.Admitted} admitted, {Metrics.Generating} generating, {Pipeline.QueuedRequests} queued, {Pipeline.ActiveSequences} engine sequences");
            await Task.Delay(20);
        }
    }
}

[CollectionDefinition(Name)]
public sealed class ServerCollection : ICollectionFixture<ServerFixture>
{
    public const string Name = "server";
}
