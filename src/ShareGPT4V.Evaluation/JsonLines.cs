using System.Text;
using System.Text.Json;

namespace ShareGPT4V.Evaluation;

/// <summary>Reading annotation files (jsonl and json) with errors that name the file and line.</summary>
internal static class JsonLines
{
    public static IEnumerable<(int Line, JsonElement Value)> Read(string path)
    {
        if (!File.Exists(path)) throw new EvaluationDataException("The file does not exist", path);
        int n = 0;
        foreach (var raw in File.ReadLines(path, Encoding.UTF8))
        {
            n++;
            if (string.IsNullOrWhiteSpace(raw)) continue;
            JsonElement e;
            try
            {
                using var doc = JsonDocument.Parse(raw);
                e = doc.RootElement.Clone();
            }
            catch (JsonException ex) { throw new EvaluationDataException($"Malformed JSON line: {ex.Message}", path, n, ex); }
            if (e.ValueKind != JsonValueKind.Object) throw new EvaluationDataException("The line must be a JSON object", path, n);
            yield return (n, e);
        }
    }

    public static JsonElement ReadDocument(string path)
    {
        if (!File.Exists(path)) throw new EvaluationDataException("The file does not exist", path);
        try
        {
            using var stream = File.OpenRead(path);
            using var doc = JsonDocument.Parse(stream, new JsonDocumentOptions { MaxDepth = 256 });
            return doc.RootElement.Clone();
        }
        catch (JsonException ex)
        {
            throw new EvaluationDataException($"Malformed JSON: {ex.Message}", path, ex.LineNumber is { } l ? (int)l + 1 : null, ex);
        }
    }

    public static string String(JsonElement e, string name, string path, int? line)
    {
        if (e.ValueKind == JsonValueKind.Object && e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String) return v.GetString()!;
        throw new EvaluationDataException($"Missing or non-string field '{name}'", path, line);
    }

    public static JsonElement Property(JsonElement e, string name, string path, int? line)
    {
        if (e.ValueKind == JsonValueKind.Object && e.TryGetProperty(name, out var v)) return v;
        throw new EvaluationDataException($"Missing field '{name}'", path, line);
    }

    public static QuestionKey Key(JsonElement e, string name, string path, int? line)
    {
        var v = Property(e, name, path, line);
        try { return QuestionKey.FromJson(v); }
        catch (FormatException ex) { throw new EvaluationDataException($"Bad '{name}': {ex.Message}", path, line, ex); }
    }
}
