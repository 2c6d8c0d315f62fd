using System.Text.Json;
using ShareGPT4V.Conversation;

namespace ShareGPT4V.Server;

/// <summary>An image part of a message before it is resolved: its URL (data:, http(s) or file) and where it was.</summary>
internal sealed record ImageReference(string Url, string Param);

/// <summary>One message of the conversation: its role, text and image parts.</summary>
internal sealed record RequestMessage(string Role, string Text, IReadOnlyList<ImageReference> Images);

/// <summary>
/// A parsed <c>POST /v1/chat/completions</c> body. Parsing checks every field the server uses, and names the field
/// (<c>messages[1].content[0].image_url</c>) in the 400 it raises; fields the server does not use are ignored unless
/// asking for them would change the answer (tools, logprobs), which are refused.
/// </summary>
internal sealed record ChatCompletionRequest
{
    public string? Model { get; init; }
    public required IReadOnlyList<RequestMessage> Messages { get; init; }
    public int? MaxTokens { get; init; }
    public double? Temperature { get; init; }
    public double? TopP { get; init; }
    public long? Seed { get; init; }
    public IReadOnlyList<string> Stop { get; init; } = Array.Empty<string>();
    public int N { get; init; } = 1;
    public bool Stream { get; init; }
    public bool IncludeUsage { get; init; }

    public static ChatCompletionRequest Parse(JsonElement root)
    {
        if (root.ValueKind != JsonValueKind.Object) throw new OpenAIErrorException(400, "The request body must be a JSON object");
        string? model = null;
        if (root.TryGetProperty("model", out var m) && m.ValueKind != JsonValueKind.Null)
            model = m.ValueKind == JsonValueKind.String ? m.GetString() : throw OpenAIErrorException.BadParam("model", "'model' must be a string");
        if (!root.TryGetProperty("messages", out var msgs)) throw OpenAIErrorException.BadParam("messages", "'messages' is required");
        if (msgs.ValueKind != JsonValueKind.Array || msgs.GetArrayLength() == 0)
            throw OpenAIErrorException.BadParam("messages", "'messages' must be a non-empty array");
        var messages = new List<RequestMessage>();
        int i = 0;
        foreach (var msg in msgs.EnumerateArray()) messages.Add(ParseMessage(msg, $"messages[{i++}]"));

        int? maxTokens = OptionalInt(root, "max_completion_tokens") ?? OptionalInt(root, "max_tokens");
        if (maxTokens is < 1) throw OpenAIErrorException.BadParam("max_tokens", $"'max_tokens' must be at least 1, got {maxTokens}");
        double? temperature = OptionalNumber(root, "temperature");
        if (temperature is < 0 or > 2) throw OpenAIErrorException.BadParam("temperature", $"'temperature' must be between 0 and 2, got {temperature}");
        double? topP = OptionalNumber(root, "top_p");
        if (topP is < 0 or > 1) throw OpenAIErrorException.BadParam("top_p", $"'top_p' must be between 0 and 1, got {topP}");
        long? seed = null;
        if (root.TryGetProperty("seed", out var s) && s.ValueKind != JsonValueKind.Null)
            seed = s.ValueKind == JsonValueKind.Number && s.TryGetInt64(out var sv) ? sv : throw OpenAIErrorException.BadParam("seed", "'seed' must be an integer");
        int n = OptionalInt(root, "n") ?? 1;
        if (n < 1) throw OpenAIErrorException.BadParam("n", $"'n' must be at least 1, got {n}");
        bool stream = OptionalBool(root, "stream") ?? false;
        bool includeUsage = false;
        if (root.TryGetProperty("stream_options", out var so) && so.ValueKind != JsonValueKind.Null)
        {
            if (so.ValueKind != JsonValueKind.Object) throw OpenAIErrorException.BadParam("stream_options", "'stream_options' must be an object");
            if (!stream) throw OpenAIErrorException.BadParam("stream_options", "'stream_options' is only allowed when 'stream' is true");
            includeUsage = OptionalBool(so, "include_usage", "stream_options.include_usage") ?? false;
        }
        var stop = new List<string>();
        if (root.TryGetProperty("stop", out var st))
        {
            switch (st.ValueKind)
            {
                case JsonValueKind.Null: break;
                case JsonValueKind.String: stop.Add(st.GetString()!); break;
                case JsonValueKind.Array:
                    foreach (var e in st.EnumerateArray())
                        stop.Add(e.ValueKind == JsonValueKind.String ? e.GetString()! : throw OpenAIErrorException.BadParam("stop", "'stop' must be a string or an array of strings"));
                    if (stop.Count > 4) throw OpenAIErrorException.BadParam("stop", "'stop' takes at most 4 sequences");
                    break;
                default: throw OpenAIErrorException.BadParam("stop", "'stop' must be a string or an array of strings");
            }
            if (stop.Any(x => x.Length == 0)) throw OpenAIErrorException.BadParam("stop", "'stop' sequences must not be empty");
        }
        if (OptionalBool(root, "logprobs") == true) throw OpenAIErrorException.BadParam("logprobs", "'logprobs' is not supported by this server");
        if (root.TryGetProperty("tools", out var tools) && tools.ValueKind == JsonValueKind.Array && tools.GetArrayLength() > 0)
            throw OpenAIErrorException.BadParam("tools", "Tool calls are not supported by this server");
        if (root.TryGetProperty("response_format", out var rf) && rf.ValueKind == JsonValueKind.Object
            && rf.TryGetProperty("type", out var rft) && rft.ValueKind == JsonValueKind.String && rft.GetString() != "text")
            throw OpenAIErrorException.BadParam("response_format", $"response_format '{rft.GetString()}' is not supported by this server (only 'text')");

        return new ChatCompletionRequest
        {
            Model = model, Messages = messages, MaxTokens = maxTokens, Temperature = temperature, TopP = topP, Seed = seed,
            Stop = stop, N = n, Stream = stream, IncludeUsage = includeUsage,
        };
    }

    private static RequestMessage ParseMessage(JsonElement msg, string where)
    {
        if (msg.ValueKind != JsonValueKind.Object) throw OpenAIErrorException.BadParam(where, $"'{where}' must be an object");
        if (!msg.TryGetProperty("role", out var r) || r.ValueKind != JsonValueKind.String)
            throw OpenAIErrorException.BadParam(where + ".role", $"'{where}.role' is required");
        var role = r.GetString()!;
        if (role is not ("system" or "developer" or "user" or "assistant"))
            throw OpenAIErrorException.BadParam(where + ".role", $"'{where}.role' '{role}' is not supported (system, developer, user, assistant)");
        var text = new List<string>();
        var images = new List<ImageReference>();
        msg.TryGetProperty("content", out var content);
        switch (content.ValueKind)
        {
            case JsonValueKind.String: text.Add(content.GetString()!); break;
            case JsonValueKind.Undefined or JsonValueKind.Null when role == "assistant": break;
            case JsonValueKind.Array:
                int j = 0;
                foreach (var part in content.EnumerateArray())
                {
                    string p = $"{where}.content[{j++}]";
                    if (part.ValueKind != JsonValueKind.Object || !part.TryGetProperty("type", out var t) || t.ValueKind != JsonValueKind.String)
                        throw OpenAIErrorException.BadParam(p, $"'{p}' must be an object with a 'type'");
                    switch (t.GetString())
                    {
                        case "text":
                            if (!part.TryGetProperty("text", out var tx) || tx.ValueKind != JsonValueKind.String)
                                throw OpenAIErrorException.BadParam(p + ".text", $"'{p}.text' must be a string");
                            text.Add(tx.GetString()!);
                            break;
                        case "image_url":
                            if (role is not "user") throw OpenAIErrorException.BadParam(p, $"Only user messages may carry images ('{p}' is in a {role} message)");
                            if (!part.TryGetProperty("image_url", out var iu)) throw OpenAIErrorException.BadParam(p + ".image_url", $"'{p}.image_url' is required");
                            var url = iu.ValueKind switch
                            {
                                JsonValueKind.String => iu.GetString(),
                                JsonValueKind.Object when iu.TryGetProperty("url", out var u) && u.ValueKind == JsonValueKind.String => u.GetString(),
                                _ => null,
                            };
                            if (string.IsNullOrEmpty(url)) throw OpenAIErrorException.BadParam(p + ".image_url", $"'{p}.image_url.url' must be a non-empty string");
                            images.Add(new ImageReference(url, p + ".image_url"));
                            break;
                        case "refusal" when role == "assistant":
                            break;
                        case var other:
                            throw OpenAIErrorException.BadParam(p + ".type", $"Content part type '{other}' is not supported (text, image_url)");
                    }
                }
                break;
            default:
                throw OpenAIErrorException.BadParam(where + ".content", $"'{where}.content' must be a string or an array of content parts");
        }
        return new RequestMessage(role, string.Join("\n", text), images);
    }

    private static int? OptionalInt(JsonElement o, string name)
    {
        if (!o.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out var i) ? i : throw OpenAIErrorException.BadParam(name, $"'{name}' must be an integer");
    }

    private static double? OptionalNumber(JsonElement o, string name)
    {
        if (!o.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v.ValueKind == JsonValueKind.Number ? v.GetDouble() : throw OpenAIErrorException.BadParam(name, $"'{name}' must be a number");
    }

    private static bool? OptionalBool(JsonElement o, string name, string? param = null)
    {
        if (!o.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : throw OpenAIErrorException.BadParam(param ?? name, $"'{param ?? name}' must be true or false");
    }

    /// <summary>The conversation as the pipeline takes it: system text apart, then user/assistant turns with image counts.</summary>
    public (string? System, List<ConversationMessage> Turns, List<ImageReference> Images) ToConversation()
    {
        var system = Messages.Where(m => m.Role is "system" or "developer").Select(m => m.Text).ToList();
        var turns = new List<ConversationMessage>();
        var images = new List<ImageReference>();
        foreach (var m in Messages.Where(m => m.Role is "user" or "assistant"))
        {
            turns.Add(new ConversationMessage(m.Role == "user" ? ConversationRole.User : ConversationRole.Assistant, m.Text, m.Images.Count));
            images.AddRange(m.Images);
        }
        if (turns.Count == 0) throw OpenAIErrorException.BadParam("messages", "'messages' holds no user message");
        if (turns[^1].Role != ConversationRole.User) throw OpenAIErrorException.BadParam("messages", "The last message must be a user message");
        return (system.Count > 0 ? string.Join("\n", system) : null, turns, images);
    }
}
