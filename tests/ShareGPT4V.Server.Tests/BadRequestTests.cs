using System.IO.Compression;
using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using ShareGPT4V.Server;
using Xunit;

namespace ShareGPT4V.Server.Tests;

/// <summary>Hostile and broken requests get OpenAI error JSON with a 4xx status, and the server keeps serving.</summary>
[Collection(ServerCollection.Name)]
public sealed class BadRequestTests(ServerFixture server)
{
    private async Task<(HttpStatusCode Status, JsonElement Error, HttpResponseMessage Response)> Send(HttpContent content, bool authorized = true)
    {
        using var http = server.Http(authorized);
        var response = await http.PostAsync("/v1/chat/completions", content);
        var body = await response.Content.ReadAsStringAsync();
        var error = JsonDocument.Parse(body).RootElement.GetProperty("error");
        Assert.False(string.IsNullOrEmpty(error.GetProperty("message").GetString()));
        Assert.True(error.TryGetProperty("type", out _) && error.TryGetProperty("param", out _) && error.TryGetProperty("code", out _), body);
        return (response.StatusCode, error, response);
    }

    private static HttpContent Json(object body) => JsonContent.Create(body);
    private object ImageBody(string url, string? model = null) => Sse.Body(model ?? server.ModelName, "What is this?", 4, url, stream: false);

    private async Task StillServes()
    {
        using var http = server.Http();
        var (text, done, _) = await Sse.StreamAsync(http, Sse.Body(server.ModelName, "Still there?", 3));
        Assert.True(done && text.Length > 0);
    }

    [Fact]
    public async Task BadImagesAreRefusedWith400()
    {
        var (s1, e1, _) = await Send(Json(ImageBody("data:image/png;base64,@@not-base64@@")));
        Assert.Equal(HttpStatusCode.BadRequest, s1);
        Assert.Equal("invalid_base64", e1.GetProperty("code").GetString());
        Assert.Equal("messages[0].content[1].image_url", e1.GetProperty("param").GetString());

        var (s2, e2, _) = await Send(Json(ImageBody("data:text/plain;base64," + Convert.ToBase64String("hello"u8.ToArray()))));
        Assert.Equal(HttpStatusCode.BadRequest, s2);
        Assert.Equal("invalid_image_format", e2.GetProperty("code").GetString());

        // A valid PNG header claiming 10000 x 10000 pixels: refused from the header, before any pixel is decoded.
        var (s3, e3, _) = await Send(Json(ImageBody("data:image/png;base64," + Convert.ToBase64String(HugePng(10_000, 10_000)))));
        Assert.Equal(HttpStatusCode.BadRequest, s3);
        Assert.Contains("pixel", e3.GetProperty("message").GetString(), StringComparison.OrdinalIgnoreCase);

        // Image bytes, not an image.
        var (s4, _, _) = await Send(Json(ImageBody("data:image/png;base64," + Convert.ToBase64String(new byte[300]))));
        Assert.Equal(HttpStatusCode.BadRequest, s4);

        // Remote and file URLs are not fetched unless the operator allowed them.
        var (s5, e5, _) = await Send(Json(ImageBody("file:///etc/passwd")));
        Assert.Equal(HttpStatusCode.BadRequest, s5);
        Assert.Equal("image_url_not_allowed", e5.GetProperty("code").GetString());
        await StillServes();
    }

    [Fact]
    public async Task FileUrlsAreReadOnlyUnderTheAllowedPrefix()
    {
        var allowed = Path.Combine(ServerFixture.ModelDir, "allowed");
        Directory.CreateDirectory(allowed);
        File.Copy(ServerFixture.ImagePath(2), Path.Combine(allowed, "cat.png"), overwrite: true);
        using var http = server.Http();
        var dataUrl = "data:image/png;base64," + Convert.ToBase64String(await File.ReadAllBytesAsync(ServerFixture.ImagePath(2)));
        async Task<string> Answer(string url)
        {
            var r = await http.PostAsync("/v1/chat/completions", Json(ImageBody(url)));
            var body = await r.Content.ReadAsStringAsync();
            Assert.True(r.IsSuccessStatusCode, body);
            return JsonDocument.Parse(body).RootElement.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString()!;
        }
        Assert.Equal(await Answer(dataUrl), await Answer(new Uri(Path.Combine(allowed, "cat.png")).AbsoluteUri));

        // Outside the prefix, also by climbing out of it, is refused.
        var (s1, e1, _) = await Send(Json(ImageBody(new Uri(ServerFixture.ImagePath(2)).AbsoluteUri)));
        Assert.Equal(HttpStatusCode.BadRequest, s1);
        Assert.Equal("image_url_not_allowed", e1.GetProperty("code").GetString());
        var (s2, e2, _) = await Send(Json(ImageBody("file://" + allowed + "/../image2.png")));
        Assert.Equal(HttpStatusCode.BadRequest, s2);
        Assert.Equal("image_url_not_allowed", e2.GetProperty("code").GetString());
        var (s3, e3, _) = await Send(Json(ImageBody("http://127.0.0.1:1/image.png")));
        Assert.Equal(HttpStatusCode.BadRequest, s3);
        Assert.Equal("image_url_not_allowed", e3.GetProperty("code").GetString());
    }

    [Fact]
    public async Task BrokenRequestsGetTheirStatus()
    {
        var (unknown, e1, _) = await Send(Json(Sse.Body("gpt-9", "hi", 4, stream: false)));
        Assert.Equal(HttpStatusCode.NotFound, unknown);
        Assert.Equal("model_not_found", e1.GetProperty("code").GetString());

        var (malformed, e2, _) = await Send(new StringContent("{\"messages\": [", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.BadRequest, malformed);
        Assert.Equal("invalid_json", e2.GetProperty("code").GetString());

        var big = new string('a', 5 * 1024 * 1024); // over the fixture's 4 MiB body limit
        var (oversize, _, _) = await Send(Json(Sse.Body(server.ModelName, big, 4, stream: false)));
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, oversize);

        var (noKey, e4, _) = await Send(Json(Sse.Body(server.ModelName, "hi", 4, stream: false)), authorized: false);
        Assert.Equal(HttpStatusCode.Unauthorized, noKey);
        Assert.Equal("invalid_api_key", e4.GetProperty("code").GetString());

        var (badTemp, e5, _) = await Send(Json(new { model = server.ModelName, messages = new[] { new { role = "user", content = "hi" } }, temperature = 7 }));
        Assert.Equal(HttpStatusCode.BadRequest, badTemp);
        Assert.Equal("temperature", e5.GetProperty("param").GetString());

        var (noUser, _, _) = await Send(Json(new { model = server.ModelName, messages = new[] { new { role = "assistant", content = "hi" } } }));
        Assert.Equal(HttpStatusCode.BadRequest, noUser);

        var (tooLong, e7, _) = await Send(Json(Sse.Body(server.ModelName, string.Join(' ', Enumerable.Repeat("word", 3000)), 4, stream: false)));
        Assert.Equal(HttpStatusCode.BadRequest, tooLong);
        Assert.Equal("context_length_exceeded", e7.GetProperty("code").GetString());

        // Streaming requests refused before their first token keep the status too.
        var (streamUnknown, _, _) = await Send(Json(Sse.Body("gpt-9", "hi", 4, stream: true)));
        Assert.Equal(HttpStatusCode.NotFound, streamUnknown);
        await StillServes();
    }

    [Fact]
    public async Task AFullQueueAnswers429WithRetryAfterAndATimeoutAnswers504()
    {
        var options = server.Options with { MaxQueue = 1, ApiKey = null, RequestTimeout = TimeSpan.FromSeconds(2) };
        await using var app = ServerApp.Build(options);
        await app.StartAsync();
        await ((ModelHost)app.Services.GetService(typeof(ModelHost))!).Loaded;
        using var http = new HttpClient(new SocketsHttpHandler { MaxResponseDrainSize = 0 }) { BaseAddress = new Uri(ServerApp.Addresses(app).Single()) };
        using var cts = new CancellationTokenSource();
        var firstPiece = new TaskCompletionSource();
        var busy = Task.Run(() => Sse.StreamAsync(http, Sse.Body(options.EffectiveModelName, "Talk a lot.", 1500), n => { firstPiece.TrySetResult(); return !cts.IsCancellationRequested; }));
        await firstPiece.Task.WaitAsync(TimeSpan.FromSeconds(30));
        var response = await http.PostAsync("/v1/chat/completions", Json(Sse.Body(options.EffectiveModelName, "hi", 4, stream: false)));
        Assert.Equal(HttpStatusCode.TooManyRequests, response.StatusCode);
        Assert.True(response.Headers.RetryAfter?.Delta > TimeSpan.Zero, "no Retry-After");
        Assert.Equal("queue_full", JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement.GetProperty("error").GetProperty("code").GetString());
        cts.Cancel();
        await busy;
        var metrics = (ServerMetrics)app.Services.GetService(typeof(ServerMetrics))!;
        for (int i = 0; i < 200 && metrics.Admitted > 0; i++) await Task.Delay(10); // the dropped stream's slot frees
        Assert.Equal(0, metrics.Admitted);

        await app.StopAsync();

        // The per-request timeout, on a server whose limit no 1500-token answer can meet on any machine (a quiet one
        // generates this tiny model's 1500 tokens in well under the 2 s above).
        await using var strict = ServerApp.Build(options with { RequestTimeout = TimeSpan.FromMilliseconds(20) });
        await strict.StartAsync();
        await ((ModelHost)strict.Services.GetService(typeof(ModelHost))!).Loaded;
        using var http2 = new HttpClient { BaseAddress = new Uri(ServerApp.Addresses(strict).Single()) };
        var slow = await http2.PostAsync("/v1/chat/completions", Json(Sse.Body(options.EffectiveModelName, "Talk a lot.", 1500, stream: false)));
        Assert.Equal(HttpStatusCode.GatewayTimeout, slow.StatusCode);
        Assert.Equal("request_timeout", JsonDocument.Parse(await slow.Content.ReadAsStringAsync()).RootElement.GetProperty("error").GetProperty("code").GetString());
        await strict.StopAsync();
    }

    /// <summary>A PNG whose header says <paramref name="width"/> x <paramref name="height"/> (RGB), with one small IDAT.</summary>
    internal static byte[] HugePng(int width, int height)
    {
        var ms = new MemoryStream();
        ms.Write(new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A });
        var ihdr = new byte[13];
        System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(ihdr, width);
        System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(ihdr.AsSpan(4), height);
        ihdr[8] = 8; ihdr[9] = 2;
        Chunk(ms, "IHDR", ihdr);
        var z = new MemoryStream();
        using (var deflate = new ZLibStream(z, CompressionLevel.Fastest, leaveOpen: true)) deflate.Write(new byte[1 + 3 * Math.Min(width, 1000)]);
        Chunk(ms, "IDAT", z.ToArray());
        Chunk(ms, "IEND", Array.Empty<byte>());
        return ms.ToArray();
    }

    private static void Chunk(Stream s, string type, byte[] data)
    {
        var len = new byte[4];
        System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(len, data.Length);
        s.Write(len);
        var body = Encoding.ASCII.GetBytes(type).Concat(data).ToArray();
        s.Write(body);
        var crc = new byte[4];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(crc, Crc32(body));
        s.Write(crc);
    }

    private static uint Crc32(byte[] bytes)
    {
        uint c = 0xFFFFFFFF;
        foreach (var b in bytes)
        {
            c ^= b;
            for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xEDB88320 ^ (c >> 1) : c >> 1;
        }
        return c ^ 0xFFFFFFFF;
    }
}
