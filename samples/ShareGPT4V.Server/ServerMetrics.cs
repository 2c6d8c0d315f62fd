using System.Diagnostics.Metrics;

namespace ShareGPT4V.Server;

/// <summary>
/// The server's instruments (meter <c>ShareGPT4V.Server</c>): requests, tokens, time to first token, decode speed,
/// and gauges for the queue (admitted requests that have no token yet: the autoscaling signal), requests in flight
/// and batch occupancy (the engine's sequences in use / its batch size), plus the engine's image and prefix cache
/// counters. Export them with OpenTelemetry (<c>--otlp-endpoint</c>)
/// or read them in-process with a <see cref="MeterListener"/>.
/// </summary>
public sealed class ServerMetrics : IDisposable
{
    /// <summary>The meter's name, to subscribe to.</summary>
    public const string MeterName = "ShareGPT4V.Server";

    private readonly Meter _meter;
    private readonly Counter<long> _requests;
    private readonly Counter<long> _promptTokens;
    private readonly Counter<long> _completionTokens;
    private readonly Histogram<double> _ttft;
    private readonly Histogram<double> _tokensPerSecond;
    private readonly Histogram<double> _duration;
    private int _admitted;
    private int _generating;
    private readonly int _batchSize;
    private readonly Func<MultimodalPipeline?> _pipeline;

    /// <summary>Creates the instruments; the gauges read the counts this object keeps and the pipeline's, once loaded.</summary>
    public ServerMetrics(int batchSize, IMeterFactory? factory = null, Func<MultimodalPipeline?>? pipeline = null)
    {
        _batchSize = batchSize;
        _pipeline = pipeline ?? (() => null);
        _meter = factory?.Create(MeterName) ?? new Meter(MeterName);
        _requests = _meter.CreateCounter<long>("sharegpt4v.server.requests", "{request}", "Chat completion requests by outcome (HTTP status)");
        _promptTokens = _meter.CreateCounter<long>("sharegpt4v.server.prompt_tokens", "{token}", "Prompt tokens processed (image tokens included)");
        _completionTokens = _meter.CreateCounter<long>("sharegpt4v.server.completion_tokens", "{token}", "Tokens generated");
        _ttft = _meter.CreateHistogram<double>("sharegpt4v.server.time_to_first_token", "s", "From the request's arrival to its first generated token");
        _tokensPerSecond = _meter.CreateHistogram<double>("sharegpt4v.server.tokens_per_second", "{token}/s", "Decode speed of each finished choice");
        _duration = _meter.CreateHistogram<double>("sharegpt4v.server.request.duration", "s", "Wall-clock time of each request");
        _meter.CreateObservableGauge("sharegpt4v.server.queue.length", () => Math.Max(0, Volatile.Read(ref _admitted) - Volatile.Read(ref _generating)),
            "{request}", "Admitted requests waiting for their first token (scale out on this)");
        _meter.CreateObservableUpDownCounter("sharegpt4v.server.requests.active", () => Volatile.Read(ref _admitted), "{request}", "Requests admitted and not finished");
        _meter.CreateObservableGauge("sharegpt4v.server.batch.occupancy", () => Math.Min(1.0, (_pipeline()?.ActiveSequences ?? 0) / (double)_batchSize),
            "1", "Engine sequence slots in use over the batch size");
        _meter.CreateObservableCounter("sharegpt4v.engine.image_cache.hits", () => Counters()?.ImageCacheHits ?? 0, "{image}", "Images whose embedding came from the cache");
        _meter.CreateObservableCounter("sharegpt4v.engine.image_cache.misses", () => Counters()?.ImageCacheMisses ?? 0, "{image}", "Images encoded by the vision tower");
        _meter.CreateObservableCounter("sharegpt4v.engine.prefix_cache.hits", () => Counters()?.PrefixCacheHits ?? 0, "{request}", "Prefills that reused a cached KV prefix");
        _meter.CreateObservableCounter("sharegpt4v.engine.prefix_cache.tokens_reused", () => Counters()?.PrefixTokensReused ?? 0, "{token}", "Prompt positions copied from the prefix cache");
        _meter.CreateObservableGauge("sharegpt4v.engine.cache.bytes", () => Counters() is { } c
            ? new[] { new Measurement<long>(c.ImageCacheBytes, new KeyValuePair<string, object?>("cache", "image")), new Measurement<long>(c.PrefixCacheBytes, new KeyValuePair<string, object?>("cache", "prefix")) }
            : Array.Empty<Measurement<long>>(), "By", "Bytes held by the engine's caches");
    }

    private Generation.EngineCounters? Counters() => _pipeline()?.CacheCounters;

    /// <summary>Requests admitted and not finished.</summary>
    public int Admitted => Volatile.Read(ref _admitted);
    /// <summary>Choices that have produced a token and not finished.</summary>
    public int Generating => Volatile.Read(ref _generating);

    internal bool TryAdmit(int limit)
    {
        if (Interlocked.Increment(ref _admitted) <= limit) return true;
        Interlocked.Decrement(ref _admitted);
        return false;
    }

    internal void Release() => Interlocked.Decrement(ref _admitted);
    internal void StartGenerating() => Interlocked.Increment(ref _generating);
    internal void StopGenerating() => Interlocked.Decrement(ref _generating);

    internal void RecordRequest(int status, bool stream, TimeSpan duration)
    {
        _requests.Add(1, new KeyValuePair<string, object?>("http.response.status_code", status), new KeyValuePair<string, object?>("stream", stream));
        _duration.Record(duration.TotalSeconds, new KeyValuePair<string, object?>("http.response.status_code", status));
    }

    internal void RecordFirstToken(TimeSpan ttft) => _ttft.Record(ttft.TotalSeconds);

    internal void RecordChoice(int promptTokens, int completionTokens, double tokensPerSecond)
    {
        _promptTokens.Add(promptTokens);
        _completionTokens.Add(completionTokens);
        if (tokensPerSecond > 0) _tokensPerSecond.Record(tokensPerSecond);
    }

    /// <summary>Disposes the meter.</summary>
    public void Dispose() => _meter.Dispose();
}
