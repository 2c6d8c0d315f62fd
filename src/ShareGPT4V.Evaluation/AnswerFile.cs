using System.Text;
using System.Text.Json;

namespace ShareGPT4V.Evaluation;

/// <summary>One line of a LLaVA answer file (<c>question_id, prompt, text, answer_id, model_id, metadata</c>).</summary>
/// <param name="Line">1-based line number in the file.</param>
/// <param name="QuestionId">The id as written (number or string).</param>
/// <param name="Prompt">The <c>prompt</c> field (null when absent).</param>
/// <param name="Text">The model's answer.</param>
/// <param name="Json">The whole line, for fields a benchmark reads beyond these (MMBench's <c>round_id</c>).</param>
public sealed record AnswerRecord(int Line, QuestionKey QuestionId, string? Prompt, string Text, JsonElement Json);

/// <summary>Reads and writes LLaVA answer files (jsonl).</summary>
public static class AnswerFile
{
    /// <summary>
    /// Reads every answer line. Blank lines are skipped; a line that is not a JSON object with a <c>question_id</c>
    /// and a string <c>text</c> is an error naming the file and line.
    /// </summary>
    public static IReadOnlyList<AnswerRecord> Read(string path)
    {
        if (!File.Exists(path)) throw new EvaluationDataException("The answer file does not exist", path);
        var list = new List<AnswerRecord>();
        int n = 0;
        foreach (var raw in File.ReadLines(path, Encoding.UTF8))
        {
            n++;
            if (string.IsNullOrWhiteSpace(raw)) continue;
            list.Add(Parse(raw, path, n));
        }
        return list;
    }

    internal static AnswerRecord Parse(string raw, string path, int line)
    {
        JsonElement e;
        try
        {
            using var doc = JsonDocument.Parse(raw);
            e = doc.RootElement.Clone();
        }
        catch (JsonException ex)
        {
            throw new EvaluationDataException($"Malformed answer line: {ex.Message}", path, line, ex);
        }
        if (e.ValueKind != JsonValueKind.Object) throw new EvaluationDataException("An answer line must be a JSON object", path, line);
        if (!e.TryGetProperty("question_id", out var id)) throw new EvaluationDataException("The answer line has no question_id", path, line);
        QuestionKey key;
        try { key = QuestionKey.FromJson(id); }
        catch (FormatException ex) { throw new EvaluationDataException($"Bad question_id: {ex.Message}", path, line, ex); }
        if (!e.TryGetProperty("text", out var text) || text.ValueKind != JsonValueKind.String)
            throw new EvaluationDataException("The answer line has no string 'text'", path, line);
        string? prompt = e.TryGetProperty("prompt", out var p) && p.ValueKind == JsonValueKind.String ? p.GetString() : null;
        return new AnswerRecord(line, key, prompt, text.GetString()!, e);
    }

    /// <summary>Index by question id; a later line with the same id replaces an earlier one (as the official scripts' dicts do) and is reported.</summary>
    internal static Dictionary<QuestionKey, AnswerRecord> ByIdLastWins(IReadOnlyList<AnswerRecord> answers, string path, IssueList issues)
    {
        var d = new Dictionary<QuestionKey, AnswerRecord>();
        foreach (var a in answers)
        {
            if (d.TryGetValue(a.QuestionId, out var earlier))
                issues.Add("duplicate_id", $"question_id {a.QuestionId} answered again (line {earlier.Line} replaced, as the official scorer does)", path, a.Line, skipped: true);
            d[a.QuestionId] = a;
        }
        return d;
    }
}
