using System.Net.Http.Json;
using System.Text;
using System.Text.Json;

namespace ShareGPT4V.Server.Tests;

/// <summary>A raw client of the server's event stream, for tests that disconnect mid-answer.</summary>
internal static class Sse
{
    public static HttpRequestMessage Post(object body) =>
        new(HttpMethod.Post, "/v1/chat/completions") { Content = JsonContent.Create(body) };

    /// <summary>
    /// Streams a completion, calling <paramref name="onPiece"/> with each content piece (return false to disconnect).
    /// Returns the text and whether [DONE] arrived.
    /// </summary>
    public static async Task<(string Text, bool Done, string? Finish)> StreamAsync(HttpClient http, object body, Func<int, bool>? onPiece = null)
    {
        using var cts = new CancellationTokenSource();
        using var response = await http.SendAsync(Post(body), HttpCompletionOption.ResponseHeadersRead, cts.Token);
        if (!response.IsSuccessStatusCode) throw new HttpRequestException($"HTTP {(int)response.StatusCode}: {await response.Content.ReadAsStringAsync()}");
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(cts.Token), Encoding.UTF8);
        var text = new StringBuilder();
        string? finish = null;
        int pieces = 0;
        while (await reader.ReadLineAsync(cts.Token) is { } line)
        {
            if (!line.StartsWith("data: ", StringComparison.Ordinal)) continue;
            var data = line[6..];
            if (data == "[DONE]") return (text.ToString(), true, finish);
            using var doc = JsonDocument.Parse(data);
            if (doc.RootElement.TryGetProperty("error", out var error)) throw new HttpRequestException("stream error: " + error);
            foreach (var c in doc.RootElement.GetProperty("choices").EnumerateArray())
            {
                if (c.GetProperty("finish_reason").ValueKind == JsonValueKind.String) finish = c.GetProperty("finish_reason").GetString();
                if (c.GetProperty("delta").TryGetProperty("content", out var content) && content.GetString() is { Length: > 0 } s)
                {
                    text.Append(s);
                    if (onPiece is not null && !onPiece(++pieces))
                    {
                        cts.Cancel(); // drop the connection mid-answer
                        return (text.ToString(), false, null);
                    }
                }
            }
        }
        return (text.ToString(), false, finish);
    }

    public static object Body(string model, string text, int maxTokens, string? imageDataUrl = null, bool stream = true)
    {
        object content = imageDataUrl is null ? text : new object[]
        {
            new { type = "text", text },
            new { type = "image_url", image_url = new { url = imageDataUrl } },
        };
        return new { model, messages = new[] { new { role = "user", content } }, max_tokens = maxTokens, temperature = 0, stream };
    }
}
