using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using ShareGPT4V.Preprocessing;

namespace ShareGPT4V.Evaluation.Scorers;

/// <summary>
/// Q-Bench (LLVisionQA dev), answered as ShareGPT4V's <c>model_vqa_qbench</c> prompts it. Neither LLaVA nor
/// ShareGPT4V ships a local scorer, so the rule is the project's (docs/evaluation.md): the answer's option is its
/// leading letter (<c>B</c>, <c>B.</c>, <c>B)</c>, <c>B. text</c>) or, failing that, the candidate its text equals
/// (case-insensitive, trailing period ignored); right when that is the correct candidate. Percentages.
/// </summary>
public sealed class QBenchBenchmark : IBenchmark
{
    private static readonly string[] TypeNames = { "yes-or-no", "what", "how" };
    private static readonly string[] ConcernNames = { "distortion", "other", "in-context distortion", "in-context other" };

    /// <summary>Creates the English or Chinese (<c>qbench-zh</c>) variant.</summary>
    public QBenchBenchmark(bool chinese = false)
    {
        Chinese = chinese;
        RunSettings = new(PromptStyle.QBench, ImageAspectMode.Resize, 1024, chinese ? "zh" : "en");
    }

    /// <summary>True for the Chinese prompt.</summary>
    public bool Chinese { get; }
    /// <inheritdoc/>
    public string Name => Chinese ? "qbench-zh" : "qbench";
    /// <inheritdoc/>
    public string Title => "QBench";
    /// <inheritdoc/>
    public BenchmarkRunSettings RunSettings { get; }
    /// <inheritdoc/>
    public bool CanScoreLocally => true;

    /// <summary>The option index an answer chooses among the candidates, or -1.</summary>
    public static int ChosenOption(string text, IReadOnlyList<string> candidates)
    {
        var t = text.Trim();
        if (t.Length > 0 && t[0] >= 'A' && t[0] < 'A' + Math.Min(4, candidates.Count) && (t.Length == 1 || t[1] is '.' or ')' or ':' or ' ' or ','))
            return t[0] - 'A';
        var plain = t.TrimEnd('.').Trim();
        for (int i = 0; i < candidates.Count; i++)
            if (string.Equals(plain, candidates[i].Trim().TrimEnd('.'), StringComparison.OrdinalIgnoreCase)) return i;
        return -1;
    }

    /// <inheritdoc/>
    /// <param name="answersPath">LLaVA answer file (question_id = the question's position in the file, or its <c>id</c>).</param>
    /// <param name="annotationsPath"><c>llvisionqa_dev.json</c>.</param>
    public EvaluationReport Score(string answersPath, string annotationsPath)
    {
        var issues = new IssueList();
        var root = JsonLines.ReadDocument(annotationsPath);
        if (root.ValueKind != JsonValueKind.Array) throw new EvaluationDataException("The Q-Bench file must be a JSON list", annotationsPath);
        var answers = AnswerFile.ByIdLastWins(AnswerFile.Read(answersPath), answersPath, issues);
        int n = 0, k = 0, record = 0, missing = 0;
        var perType = new SortedDictionary<string, (int N, int K)>(StringComparer.Ordinal);
        var perConcern = new SortedDictionary<string, (int N, int K)>(StringComparer.Ordinal);
        var used = new HashSet<QuestionKey>();
        foreach (var q in root.EnumerateArray())
        {
            record++;
            var id = q.TryGetProperty("id", out var idEl) && idEl.ValueKind is JsonValueKind.String or JsonValueKind.Number ? QuestionKey.FromJson(idEl) : QuestionKey.Number(record - 1);
            var candidates = JsonLines.Property(q, "candidates", annotationsPath, record).EnumerateArray().Select(c => c.ValueKind == JsonValueKind.String ? c.GetString()! : c.GetRawText()).ToList();
            var correct = JsonLines.Property(q, "correct_ans", annotationsPath, record);
            var correctText = correct.ValueKind == JsonValueKind.String ? correct.GetString()! : correct.GetRawText();
            int gold = candidates.IndexOf(correctText);
            if (gold < 0) throw new EvaluationDataException($"record {record}: correct_ans is not one of the candidates", annotationsPath);
            bool ok = false;
            if (answers.TryGetValue(id, out var a)) { ok = ChosenOption(a.Text, candidates) == gold; used.Add(id); }
            else missing++;
            n++;
            if (ok) k++;
            void Count(SortedDictionary<string, (int N, int K)> d, string field, string[] names)
            {
                if (!q.TryGetProperty(field, out var v) || v.ValueKind != JsonValueKind.Number) return;
                int i = v.GetInt32();
                var key = i >= 0 && i < names.Length ? names[i] : i.ToString(CultureInfo.InvariantCulture);
                var c = d.GetValueOrDefault(key);
                d[key] = (c.N + 1, c.K + (ok ? 1 : 0));
            }
            Count(perType, "type", TypeNames);
            Count(perConcern, "concern", ConcernNames);
        }
        if (missing > 0) issues.Add("missing_answer", $"{missing} question(s) have no answer (scored as wrong)", answersPath, null, skipped: false);
        foreach (var id in answers.Keys.Where(x => !used.Contains(x)))
            issues.Add("unknown_id", $"question_id {id} is not a question of the file (ignored)", answersPath, answers[id].Line, skipped: true);
        var typeObj = new JsonObject();
        foreach (var (key, v) in perType) typeObj[key] = Metric.Percent(v.K, v.N);
        var concernObj = new JsonObject();
        foreach (var (key, v) in perConcern) concernObj[key] = Metric.Percent(v.K, v.N);
        var metrics = new JsonObject { ["questions"] = n, ["accuracy"] = Metric.Percent(k, n), ["per_type"] = typeObj, ["per_concern"] = concernObj };
        return new EvaluationReport(Name, metrics, issues) { Headline = Metric.Value(metrics["accuracy"]) };
    }
}
