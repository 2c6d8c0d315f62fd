using System.Net.Http.Json;
using System.Text.Json;
using Xunit;

namespace ShareGPT4V.Server.Tests;

/// <summary>A client that resends its conversation (as OpenAI clients do) gets the engine's prefix and image caches.</summary>
[Collection(ServerCollection.Name)]
public sealed class CacheTests(ServerFixture server)
{
    [Fact]
    public async Task ASecondTurnReusesTheFirstTurnsPrefixAndImage()
    {
        var png = "data:image/png;base64," + Convert.ToBase64String(await File.ReadAllBytesAsync(ServerFixture.ImagePath(2)));
        var first = new Dictionary<string, object>
        {
            ["role"] = "user",
            ["content"] = new object[] { new { type = "text", text = "Look at this picture carefully." }, new { type = "image_url", image_url = new { url = png } } },
        };
        using var http = server.Http();
        async Task<string> Ask(object[] messages)
        {
            var r = await http.PostAsJsonAsync("/v1/chat/completions", new { model = server.ModelName, messages, max_tokens = 5, temperature = 0 });
            var body = await r.Content.ReadAsStringAsync();
            Assert.True(r.IsSuccessStatusCode, body);
            return JsonDocument.Parse(body).RootElement.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString()!;
        }
        var answer = await Ask(new object[] { first });
        await server.WaitIdleAsync(TimeSpan.FromSeconds(10));
        var before = server.Pipeline.CacheCounters;
        await Ask(new object[] { first, new { role = "assistant", content = answer }, new { role = "user", content = "And the colours?" } });
        var after = server.Pipeline.CacheCounters;
        Assert.Equal(before.ImageCacheMisses, after.ImageCacheMisses); // the image was not encoded again
        Assert.True(after.PrefixCacheHits > before.PrefixCacheHits && after.PrefixTokensReused > before.PrefixTokensReused,
            $"the second turn did not reuse the first turn's prefix: {before} -> {after}");
    }
}
