using System.Text.Json;

namespace ShareGPT4V.Server;

/// <summary>
/// A request the server refuses, answered as OpenAI does: <c>{"error": {"message", "type", "param", "code"}}</c> with
/// the HTTP status clients expect (400 bad request, 401 key, 404 unknown model, 413 too large, 429 full, 503 loading).
/// </summary>
public sealed class OpenAIErrorException(int status, string message, string type = "invalid_request_error",
    string? param = null, string? code = null, Exception? inner = null) : Exception(message, inner)
{
    /// <summary>HTTP status code.</summary>
    public int Status { get; } = status;
    /// <summary>OpenAI error type (<c>invalid_request_error</c>, <c>authentication_error</c>, ...).</summary>
    public string Type { get; } = type;
    /// <summary>The request field at fault, if any.</summary>
    public string? Param { get; } = param;
    /// <summary>A machine-readable code, if any.</summary>
    public string? Code { get; } = code;
    /// <summary>Seconds a client should wait before retrying (429 and 503).</summary>
    public int? RetryAfterSeconds { get; init; }

    /// <summary>Builds a 400 for a request field.</summary>
    public static OpenAIErrorException BadParam(string param, string message, string? code = null) => new(400, message, param: param, code: code);

    /// <summary>The error body as OpenAI writes it.</summary>
    public object Body => new { error = new { message = Message, type = Type, param = Param, code = Code } };

    /// <summary>Writes the error as the response (status, Retry-After, JSON body).</summary>
    public Task WriteAsync(HttpResponse response)
    {
        response.StatusCode = Status;
        if (RetryAfterSeconds is int s) response.Headers.RetryAfter = s.ToString(System.Globalization.CultureInfo.InvariantCulture);
        return response.WriteAsJsonAsync(Body, Json.Options);
    }
}

/// <summary>The JSON settings of every response.</summary>
internal static class Json
{
    public static readonly JsonSerializerOptions Options = new(JsonSerializerDefaults.Web)
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.Never,
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping, // JSON, not HTML: keep quotes and non-ASCII readable
    };
}
