using System.Diagnostics;
using ShareGPT4V.Generation;
using Xunit;
using LibMessage = ShareGPT4V.Conversation.ConversationMessage;
using LibRole = ShareGPT4V.Conversation.ConversationRole;

namespace ShareGPT4V.Server.Tests;

/// <summary>Many streams at once, some dropped by their clients: the rest answer as they would alone, nothing is left running.</summary>
[Collection(ServerCollection.Name)]
public sealed class ConcurrencyTests(ServerFixture server)
{
    [Fact]
    public async Task SixtyFourStreamsWithRandomDisconnectsEachEqualTheirSoloRun()
    {
        var png = Convert.ToBase64String(await File.ReadAllBytesAsync(ServerFixture.ImagePath(1)));
        var random = new Random(1234);
        var plans = Enumerable.Range(0, 64).Select(i => (
            Prompt: $"Request number {i}: tell me a story about {(i % 7) switch { 0 => "a cat", 1 => "the sea", 2 => "mountains", 3 => "a robot", 4 => "bread", 5 => "winter", _ => "a city" }}.",
            Image: i % 4 == 0,
            MaxTokens: 6 + i % 7,
            DropAfter: random.NextDouble() < 0.35 ? 1 + random.Next(4) : (int?)null)).ToList();
        using var http = server.Http();
        var tasks = plans.Select(p => Task.Run(() => Sse.StreamAsync(http,
            Sse.Body(server.ModelName, p.Prompt, p.MaxTokens, p.Image ? "data:image/png;base64," + png : null),
            pieces => p.DropAfter is not int n || pieces < n))).ToList();
        var outcomes = await Task.WhenAll(tasks);
        await server.WaitIdleAsync(TimeSpan.FromSeconds(10));

        int completed = 0;
        for (int i = 0; i < plans.Count; i++)
        {
            var p = plans[i];
            var (text, done, finish) = outcomes[i];
            if (p.DropAfter is not null && !done) continue; // dropped before the answer ended
            Assert.True(done, $"request {i} ended without [DONE]");
            var solo = await server.Pipeline.ChatAsync(new[] { new LibMessage(LibRole.User, p.Prompt, p.Image ? 1 : 0) },
                p.Image ? new[] { ImageInput.FromFile(ServerFixture.ImagePath(1)) } : null,
                new GenerationOptions { MaxNewTokens = p.MaxTokens, Temperature = 0 });
            Assert.Equal(solo.Text, text);
            Assert.Equal(solo.FinishReason == FinishReason.Length ? "length" : "stop", finish);
            completed++;
        }
        Assert.True(completed >= 32, $"only {completed} of 64 requests completed");
        Assert.True(plans.Count(p => p.DropAfter is not null) >= 10, "the plan drops too few clients to test disconnects");
    }

    [Fact]
    public async Task ADisconnectStopsTheGenerationAtOnce()
    {
        using var http = server.Http();
        await server.WaitIdleAsync(TimeSpan.FromSeconds(10));
        // 1500 tokens take seconds on the tiny model; the disconnect must free the server long before that.
        var sw = Stopwatch.StartNew();
        var (_, done, _) = await Sse.StreamAsync(http, Sse.Body(server.ModelName, "Talk for a long time.", 1500), pieces => pieces < 3);
        Assert.False(done);
        await server.WaitIdleAsync(TimeSpan.FromSeconds(1.5));
        var idleAfter = sw.Elapsed;
        // The engine is free: a short request is answered at once.
        var (text, ok, _) = await Sse.StreamAsync(http, Sse.Body(server.ModelName, "Hi", 4));
        Assert.True(ok && text.Length > 0);
        Assert.True(idleAfter < TimeSpan.FromSeconds(3), $"the server was busy for {idleAfter.TotalSeconds:F1} s after the client left");
    }
}
