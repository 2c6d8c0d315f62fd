using System.Reflection;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;

namespace ShareGPT4V.Server;

/// <summary>Builds the web application: services, limits, authentication and routes.</summary>
public static class ServerApp
{
    /// <summary>Builds (does not start) the server for validated <paramref name="options"/>.</summary>
    public static WebApplication Build(ServerOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { ContentRootPath = AppContext.BaseDirectory });
        if (options.Urls is { } urls) builder.WebHost.UseUrls(urls.Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
        builder.WebHost.ConfigureKestrel(k => k.Limits.MaxRequestBodySize = options.MaxBodyBytes);
        builder.Logging.ClearProviders();
        if (options.JsonLogs) builder.Logging.AddJsonConsole();
        else builder.Logging.AddSimpleConsole(o => o.SingleLine = true);
        builder.Logging.AddFilter("Microsoft.AspNetCore", LogLevel.Warning); // one line per request comes from the endpoint

        var services = builder.Services;
        services.AddSingleton(options);
        services.AddSingleton<ModelHost>();
        services.AddHostedService(sp => sp.GetRequiredService<ModelHost>());
        services.AddSingleton(sp => new ServerMetrics(options.MaxBatchSize, sp.GetService<System.Diagnostics.Metrics.IMeterFactory>(),
            () => sp.GetRequiredService<ModelHost>().Pipeline));
        services.AddHttpClient();
        services.AddSingleton<ImageUrlResolver>();
        services.AddSingleton<ChatCompletionsEndpoint>();
        if (options.OtlpEndpoint is { } otlp)
        {
            services.AddOpenTelemetry()
                .ConfigureResource(r => r.AddService("sharegpt4v-server"))
                .WithMetrics(m => m.AddMeter(ServerMetrics.MeterName).AddOtlpExporter(o =>
                {
                    o.Endpoint = new Uri(otlp);
                    if (otlp.TrimEnd('/').EndsWith("/v1/metrics", StringComparison.Ordinal)) o.Protocol = OpenTelemetry.Exporter.OtlpExportProtocol.HttpProtobuf;
                }));
        }

        var app = builder.Build();
        app.Use(async (http, next) =>
        {
            if (options.ApiKey is { } key && http.Request.Path.StartsWithSegments("/v1") && !Authorized(http, key))
            {
                await new OpenAIErrorException(401, "Missing or incorrect API key: send 'Authorization: Bearer KEY'", "authentication_error", code: "invalid_api_key")
                    .WriteAsync(http.Response);
                return;
            }
            await next(http);
        });

        app.MapPost("/v1/chat/completions", (HttpContext http, ChatCompletionsEndpoint endpoint) => endpoint.HandleAsync(http));
        app.MapGet("/v1/models", (ModelHost host) => Results.Json(new
        {
            @object = "list",
            data = new[] { ModelEntry(options) },
        }, Json.Options));
        app.MapGet("/v1/models/{id}", (string id) => id == options.EffectiveModelName
            ? Results.Json(ModelEntry(options), Json.Options)
            : Results.Json(new OpenAIErrorException(404, $"The model '{id}' does not exist", param: "model", code: "model_not_found").Body, Json.Options, statusCode: 404));
        app.Map("/v1/{**rest}", (HttpContext http) => new OpenAIErrorException(404, $"Unknown endpoint {http.Request.Method} {http.Request.Path}", code: "unknown_url").WriteAsync(http.Response));
        app.MapGet("/health", (ModelHost host, ServerMetrics metrics) => host.Pipeline is null
            ? Results.Json(new { status = "loading" }, Json.Options, statusCode: 503)
            : Results.Json(new
            {
                status = "ready", model = options.EffectiveModelName, active_requests = metrics.Admitted,
                active_sequences = host.Pipeline.ActiveSequences, caches = host.Pipeline.CacheCounters,
            }, Json.Options));
        DemoAssets.Map(app);
        return app;
    }

    private static object ModelEntry(ServerOptions options) => new
    {
        id = options.EffectiveModelName,
        @object = "model",
        created = new DateTimeOffset(Directory.GetLastWriteTimeUtc(options.ModelPath)).ToUnixTimeSeconds(),
        owned_by = "sharegpt4v",
    };

    private static bool Authorized(HttpContext http, string key)
    {
        var header = http.Request.Headers.Authorization.ToString();
        const string bearer = "Bearer ";
        if (!header.StartsWith(bearer, StringComparison.OrdinalIgnoreCase)) return false;
        var given = System.Text.Encoding.UTF8.GetBytes(header[bearer.Length..].Trim());
        return System.Security.Cryptography.CryptographicOperations.FixedTimeEquals(given, System.Text.Encoding.UTF8.GetBytes(key));
    }

    /// <summary>The addresses the started server listens on (with the ports the system chose for port 0).</summary>
    public static IReadOnlyList<string> Addresses(WebApplication app) =>
        app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()?.Addresses.ToList() ?? new List<string>();
}

/// <summary>The web demo's files, embedded in the assembly and served at / (no CDN, nothing fetched elsewhere).</summary>
internal static class DemoAssets
{
    private static readonly (string Path, string Resource, string Type)[] Files =
    {
        ("/", "wwwroot/index.html", "text/html; charset=utf-8"),
        ("/index.html", "wwwroot/index.html", "text/html; charset=utf-8"),
        ("/app.js", "wwwroot/app.js", "text/javascript; charset=utf-8"),
        ("/app.css", "wwwroot/app.css", "text/css; charset=utf-8"),
    };

    public static void Map(WebApplication app)
    {
        var assembly = Assembly.GetExecutingAssembly();
        foreach (var (path, resource, type) in Files)
        {
            using var s = assembly.GetManifestResourceStream(resource) ?? throw new InvalidOperationException($"The demo file {resource} is not embedded");
            using var ms = new MemoryStream();
            s.CopyTo(ms);
            var bytes = ms.ToArray();
            app.MapGet(path, (HttpContext http) =>
            {
                http.Response.Headers.CacheControl = "no-cache";
                return Results.Bytes(bytes, type);
            });
        }
    }
}
