using System.Text.Json;
using System.Text.Json.Nodes;
using ShareGPT4V.Preprocessing;

namespace ShareGPT4V.Evaluation.Scorers;

/// <summary>
/// TextVQA as <c>eval_textvqa.py</c> scores it: each answer line is matched to its annotation by (image id, question
/// recovered from the prompt, lower-cased) and given the m4c VQA soft score; accuracy in percent.
/// </summary>
public sealed class TextVqaBenchmark : IBenchmark
{
    /// <inheritdoc/>
    public string Name => "textvqa";
    /// <inheritdoc/>
    public string Title => "TextVQA";
    /// <inheritdoc/>
    public BenchmarkRunSettings RunSettings { get; } = new(PromptStyle.Loader, ImageAspectMode.Pad, 128);
    /// <inheritdoc/>
    public bool CanScoreLocally => true;

    /// <summary>The question the official script recovers from an answer's prompt (lower-cased), or null when it cannot.</summary>
    public static string? QuestionFromPrompt(string prompt)
    {
        string question;
        var lines = prompt.Split('\n');
        if (prompt.StartsWith("OCR tokens: ", StringComparison.Ordinal))
        {
            int q = prompt.IndexOf("Question: ", StringComparison.Ordinal);
            if (q < 0) return null;
            int end = prompt.IndexOf(" Short answer:", q + 10, StringComparison.Ordinal);
            if (end < 0) return null;
            question = prompt[(q + 10)..end];
        }
        else if (prompt.Contains("Reference OCR token: ", StringComparison.Ordinal) && lines.Length == 3)
            question = prompt.StartsWith("Reference OCR token:", StringComparison.Ordinal) ? lines[1] : lines[0];
        else if (lines.Length == 2)
            question = lines[0];
        else
            return null;
        return question.ToLowerInvariant();
    }

    /// <inheritdoc/>
    /// <param name="answersPath">LLaVA answer file.</param>
    /// <param name="annotationsPath"><c>TextVQA_0.5.1_val.json</c>.</param>
    public EvaluationReport Score(string answersPath, string annotationsPath)
    {
        var issues = new IssueList();
        var root = JsonLines.ReadDocument(annotationsPath);
        if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("data", out var data) || data.ValueKind != JsonValueKind.Array)
            throw new EvaluationDataException("The TextVQA annotation file has no 'data' list", annotationsPath);
        var index = new Dictionary<(string, string), string[]>();
        int record = 0;
        foreach (var a in data.EnumerateArray())
        {
            record++;
            var imageId = JsonLines.String(a, "image_id", annotationsPath, null);
            var question = JsonLines.String(a, "question", annotationsPath, null);
            var answers = JsonLines.Property(a, "answers", annotationsPath, null);
            if (answers.ValueKind != JsonValueKind.Array || answers.GetArrayLength() != 10 || answers.EnumerateArray().Any(x => x.ValueKind != JsonValueKind.String))
                throw new EvaluationDataException($"data record {record} ('{question}') must have 10 string answers", annotationsPath);
            index[(imageId, question.ToLowerInvariant())] = answers.EnumerateArray().Select(x => x.GetString()!).ToArray();
        }

        double sum = 0;
        int samples = 0;
        var seen = new Dictionary<(string, string), int>();
        foreach (var line in AnswerFile.Read(answersPath))
        {
            var q = QuestionFromPrompt(line.Prompt ?? "");
            if (q is null)
                throw new EvaluationDataException("Cannot recover the question from the prompt (expected '<question>\\nReference OCR token: ...\\n<suffix>', '<question>\\n<suffix>' or 'OCR tokens: ... Question: ... Short answer:')", answersPath, line.Line);
            var key = (line.QuestionId.Value, q);
            if (!index.TryGetValue(key, out var gts))
            {
                issues.Add("unknown_id", $"no annotation for image {line.QuestionId} and question '{q}'", answersPath, line.Line, skipped: true);
                continue;
            }
            // Scored line by line like the official script (the real data repeats some image/question pairs), but shown.
            if (seen.TryGetValue(key, out var first))
                issues.Add("duplicate_id", $"image {line.QuestionId} and question '{q}' answered again (first at line {first}); both are scored", answersPath, line.Line, skipped: false);
            else
                seen[key] = line.Line;
            sum += VqaAnswerNormalizer.SoftScore(line.Text, gts);
            samples++;
        }
        var metrics = new JsonObject
        {
            ["samples"] = samples,
            ["accuracy"] = samples == 0 ? null : JsonValue.Create(100.0 * (sum / samples)),
        };
        return new EvaluationReport(Name, metrics, issues) { Headline = Metric.Value(metrics["accuracy"]) };
    }
}
