using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using ShareGPT4V.Preprocessing;

namespace ShareGPT4V.Evaluation.Scorers;

/// <summary>
/// SEED-Bench as LLaVA's <c>convert_seed_for_submission.py</c> scores it: an answer is right when its text is exactly
/// the annotation's letter; a missing answer is wrong. Percentages per question type, overall, image and video.
/// </summary>
public sealed class SeedBenchmark : IBenchmark
{
    /// <inheritdoc/>
    public string Name => "seed";
    /// <inheritdoc/>
    public string Title => "SEED-I";
    /// <inheritdoc/>
    public BenchmarkRunSettings RunSettings { get; } = new(PromptStyle.Loader, ImageAspectMode.Pad, 128);
    /// <inheritdoc/>
    public bool CanScoreLocally => true;

    /// <summary>The key the official script looks an annotation id up with: Python's <c>int()</c> when it accepts the text, else the text.</summary>
    internal static QuestionKey AnnotationKey(JsonElement id)
    {
        if (id.ValueKind == JsonValueKind.Number) return QuestionKey.FromJson(id);
        var s = id.GetString()!;
        var t = s.Trim().Replace("_", "", StringComparison.Ordinal);
        bool pythonInt = s.Trim().Length > 0 && !s.Contains("__", StringComparison.Ordinal) && !s.Trim().StartsWith('_') && !s.Trim().EndsWith('_');
        if (pythonInt && long.TryParse(t, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var n) && t.TrimStart('+', '-').All(char.IsAsciiDigit))
            return QuestionKey.Number(n);
        return QuestionKey.String(s);
    }

    /// <inheritdoc/>
    /// <param name="answersPath">LLaVA answer file.</param>
    /// <param name="annotationsPath"><c>SEED-Bench.json</c>.</param>
    public EvaluationReport Score(string answersPath, string annotationsPath)
    {
        var issues = new IssueList();
        var root = JsonLines.ReadDocument(annotationsPath);
        var types = JsonLines.Property(root, "question_type", annotationsPath, null);
        var questions = JsonLines.Property(root, "questions", annotationsPath, null);
        if (types.ValueKind != JsonValueKind.Object || questions.ValueKind != JsonValueKind.Array)
            throw new EvaluationDataException("SEED-Bench.json needs a 'question_type' object and a 'questions' list", annotationsPath);
        var typeName = new Dictionary<int, string>();
        foreach (var t in types.EnumerateObject())
        {
            if (t.Value.ValueKind != JsonValueKind.Number) throw new EvaluationDataException($"question_type '{t.Name}' has no numeric id", annotationsPath);
            typeName[t.Value.GetInt32()] = t.Name;
        }
        var answers = AnswerFile.ByIdLastWins(AnswerFile.Read(answersPath), answersPath, issues);

        var counts = new Dictionary<string, (Dictionary<int, int> Count, Dictionary<int, int> Correct)>
        {
            ["all"] = (new(), new()), ["image"] = (new(), new()), ["video"] = (new(), new()),
        };
        var used = new HashSet<QuestionKey>();
        var missing = new Dictionary<string, int>(StringComparer.Ordinal);
        int record = 0;
        foreach (var q in questions.EnumerateArray())
        {
            record++;
            var idEl = JsonLines.Property(q, "question_id", annotationsPath, null);
            if (idEl.ValueKind is not (JsonValueKind.String or JsonValueKind.Number)) throw new EvaluationDataException($"question {record} has a bad question_id", annotationsPath);
            var key = AnnotationKey(idEl);
            var typeEl = JsonLines.Property(q, "question_type_id", annotationsPath, null);
            if (typeEl.ValueKind != JsonValueKind.Number) throw new EvaluationDataException($"question {record} has no numeric question_type_id", annotationsPath);
            int type = typeEl.GetInt32();
            var dataType = JsonLines.String(q, "data_type", annotationsPath, null);
            var gold = JsonLines.String(q, "answer", annotationsPath, null);
            bool ok = false;
            if (answers.TryGetValue(key, out var a)) { ok = a.Text == gold; used.Add(key); }
            else missing[dataType] = missing.GetValueOrDefault(dataType) + 1;
            foreach (var scope in new[] { "all", dataType })
            {
                if (!counts.TryGetValue(scope, out var c)) continue;
                c.Count[type] = c.Count.GetValueOrDefault(type) + 1;
                c.Correct[type] = c.Correct.GetValueOrDefault(type) + (ok ? 1 : 0);
            }
        }
        foreach (var (dataType, n) in missing)
            issues.Add("missing_answer", $"{n} {dataType} question(s) have no answer (scored as wrong)", answersPath, null, skipped: false);
        foreach (var id in answers.Keys.Where(k => !used.Contains(k)))
            issues.Add("unknown_id", $"question_id {id} is not in SEED-Bench.json (ignored)", answersPath, answers[id].Line, skipped: true);

        JsonNode? Total(string scope)
        {
            var (count, correct) = counts[scope];
            int n = 0, k = 0;
            foreach (var t in count.Keys.Order()) { n += count[t]; k += correct[t]; }
            return Metric.Percent(k, n);
        }
        var perType = new JsonObject();
        foreach (var t in counts["all"].Count.Keys.Order())
        {
            var name = typeName.TryGetValue(t, out var nm) ? nm : t.ToString(CultureInfo.InvariantCulture);
            perType[name] = Metric.Percent(counts["all"].Correct[t], counts["all"].Count[t]);
        }
        var metrics = new JsonObject
        {
            ["accuracy"] = Total("all"),
            ["image_accuracy"] = Total("image"),
            ["video_accuracy"] = Total("video"),
            ["per_type"] = perType,
        };
        return new EvaluationReport(Name, metrics, issues) { Headline = Metric.Value(metrics["image_accuracy"]) };
    }
}
