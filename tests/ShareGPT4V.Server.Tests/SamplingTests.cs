using System.Net.Http.Json;
using System.Text.Json;
using ShareGPT4V.Generation;
using Xunit;
using LibMessage = ShareGPT4V.Conversation.ConversationMessage;
using LibRole = ShareGPT4V.Conversation.ConversationRole;

namespace ShareGPT4V.Server.Tests;

/// <summary><c>n</c>, <c>seed</c>, sampling options and system messages map onto the library's request, streaming and not.</summary>
[Collection(ServerCollection.Name)]
public sealed class SamplingTests(ServerFixture server)
{
    [Fact]
    public async Task NChoicesWithASeedEqualTheLibrarySampledWithSeedPlusIndex()
    {
        var body = new
        {
            model = server.ModelName,
            messages = new object[]
            {
                new { role = "system", content = "You are terse." },
                new { role = "user", content = "Name three colours." },
                new { role = "assistant", content = "Red." },
                new { role = "user", content = "More?" },
            },
            n = 3, seed = 7, temperature = 0.9, top_p = 0.8, max_tokens = 6,
        };
        var conversation = new[] { new LibMessage(LibRole.User, "Name three colours."), new LibMessage(LibRole.Assistant, "Red."), new LibMessage(LibRole.User, "More?") };
        var prompt = server.Pipeline.BuildPrompt(conversation, "You are terse.");
        var expected = new List<string>();
        for (int i = 0; i < 3; i++)
            expected.Add((await server.Pipeline.GenerateAsync(prompt, null, new GenerationOptions { MaxNewTokens = 6, Temperature = 0.9, TopP = 0.8, Seed = 7 + i })).Text);
        Assert.True(expected.Distinct().Count() > 1, "the seeds gave identical samples; the test could not tell choices apart");

        using var http = server.Http();
        var response = await http.PostAsJsonAsync("/v1/chat/completions", body);
        response.EnsureSuccessStatusCode();
        var json = JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement;
        var choices = json.GetProperty("choices").EnumerateArray().OrderBy(c => c.GetProperty("index").GetInt32()).ToList();
        Assert.Equal(expected, choices.Select(c => c.GetProperty("message").GetProperty("content").GetString()));
        Assert.Equal(18, json.GetProperty("usage").GetProperty("completion_tokens").GetInt32());

        // The same request streamed: pieces of the three choices interleave, each adds up to its answer.
        var streamed = new System.Text.StringBuilder[3].Select(_ => new System.Text.StringBuilder()).ToArray();
        var request = new HttpRequestMessage(HttpMethod.Post, "/v1/chat/completions")
        {
            Content = JsonContent.Create(new { body.model, body.messages, body.n, body.seed, body.temperature, body.top_p, body.max_tokens, stream = true }),
        };
        using var sse = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        sse.EnsureSuccessStatusCode();
        var finishes = 0;
        foreach (var line in (await sse.Content.ReadAsStringAsync()).Split('\n'))
        {
            if (!line.StartsWith("data: {", StringComparison.Ordinal)) continue;
            foreach (var c in JsonDocument.Parse(line[6..]).RootElement.GetProperty("choices").EnumerateArray())
            {
                if (c.GetProperty("delta").TryGetProperty("content", out var t)) streamed[c.GetProperty("index").GetInt32()].Append(t.GetString());
                if (c.GetProperty("finish_reason").ValueKind == JsonValueKind.String) finishes++;
            }
        }
        Assert.Equal(expected, streamed.Select(s => s.ToString()));
        Assert.Equal(3, finishes);
    }
}
