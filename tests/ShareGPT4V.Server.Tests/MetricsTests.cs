using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using Xunit;

namespace ShareGPT4V.Server.Tests;

/// <summary>The server's instruments record what a request did (the same ones OpenTelemetry exports).</summary>
[Collection(ServerCollection.Name)]
public sealed class MetricsTests(ServerFixture server)
{
    [Fact]
    public async Task ARequestIsCountedTimedAndItsTokensRecorded()
    {
        var seen = new ConcurrentDictionary<string, List<(double Value, KeyValuePair<string, object?>[] Tags)>>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) => { if (instrument.Meter.Name == ServerMetrics.MeterName) l.EnableMeasurementEvents(instrument); };
        void Record(Instrument i, double v, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            var list = seen.GetOrAdd(i.Name, _ => new());
            lock (list) list.Add((v, tags.ToArray()));
        }
        listener.SetMeasurementEventCallback<long>((i, v, tags, _) => Record(i, v, tags));
        listener.SetMeasurementEventCallback<int>((i, v, tags, _) => Record(i, v, tags));
        listener.SetMeasurementEventCallback<double>((i, v, tags, _) => Record(i, v, tags));
        listener.Start();

        await server.WaitIdleAsync(TimeSpan.FromSeconds(10));
        using var http = server.Http();
        var (text, done, _) = await Sse.StreamAsync(http, Sse.Body(server.ModelName, "Count me.", 7));
        Assert.True(done && text.Length > 0);
        var png = Convert.ToBase64String(await File.ReadAllBytesAsync(ServerFixture.ImagePath(2)));
        var (withImage, imageDone, _) = await Sse.StreamAsync(http, Sse.Body(server.ModelName, "And this?", 3, "data:image/png;base64," + png));
        Assert.True(imageDone && withImage.Length > 0);
        await server.WaitIdleAsync(TimeSpan.FromSeconds(10));
        listener.RecordObservableInstruments();

        Assert.Contains(seen["sharegpt4v.server.requests"], m => m.Tags.Any(t => t.Key == "http.response.status_code" && Equals(t.Value, 200)));
        Assert.Contains(seen["sharegpt4v.server.completion_tokens"], m => m.Value == 7);
        Assert.Contains(seen["sharegpt4v.server.time_to_first_token"], m => m.Value > 0 && m.Value < 60);
        Assert.NotEmpty(seen["sharegpt4v.server.request.duration"]);
        Assert.Equal(0, seen["sharegpt4v.server.queue.length"].Last().Value);
        Assert.Equal(0, seen["sharegpt4v.server.batch.occupancy"].Last().Value);
        // The engine's counters: the image was either encoded or found in the image cache.
        Assert.True(seen["sharegpt4v.engine.image_cache.hits"].Last().Value + seen["sharegpt4v.engine.image_cache.misses"].Last().Value >= 1);
        Assert.Contains(seen["sharegpt4v.engine.cache.bytes"], m => m.Tags.Any(t => Equals(t.Value, "image")));
    }
}
