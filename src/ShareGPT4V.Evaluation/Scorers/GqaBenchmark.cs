using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using ShareGPT4V.Preprocessing;

namespace ShareGPT4V.Evaluation.Scorers;

/// <summary>
/// GQA testdev-balanced as LLaVA's <c>convert_gqa_for_eval.py</c> and GQA's <c>eval.py</c> score it: prediction =
/// answer text without trailing periods, lower-cased (not trimmed); balanced questions only; accuracy, binary/open,
/// the chi-square distribution score and accuracies per structural type, semantic type, steps and length.
/// </summary>
public sealed class GqaBenchmark : IBenchmark
{
    private static readonly string[] NonSteps = { "exist", "query: name", "choose name" };

    /// <inheritdoc/>
    public string Name => "gqa";
    /// <inheritdoc/>
    public string Title => "GQA";
    /// <inheritdoc/>
    public BenchmarkRunSettings RunSettings { get; } = new(PromptStyle.Loader, ImageAspectMode.Pad, 128);
    /// <inheritdoc/>
    public bool CanScoreLocally => true;

    /// <summary>The prediction the converter writes: trailing periods removed, lower-cased.</summary>
    public static string Prediction(string text) => text.TrimEnd('.').ToLowerInvariant();

    /// <inheritdoc/>
    /// <param name="answersPath">LLaVA answer file.</param>
    /// <param name="annotationsPath"><c>testdev_balanced_questions.json</c>.</param>
    public EvaluationReport Score(string answersPath, string annotationsPath)
    {
        var issues = new IssueList();
        var questions = JsonLines.ReadDocument(annotationsPath);
        if (questions.ValueKind != JsonValueKind.Object) throw new EvaluationDataException("The GQA question file must be an object qid → question", annotationsPath);
        var answers = AnswerFile.ByIdLastWins(AnswerFile.Read(answersPath), answersPath, issues);

        var all = new List<double>();
        var binary = new List<double>();
        var open = new List<double>();
        var perStructural = new Dictionary<string, List<double>>(StringComparer.Ordinal);
        var perSemantic = new Dictionary<string, List<double>>(StringComparer.Ordinal);
        var perSteps = new Dictionary<int, List<double>>();
        var perLength = new Dictionary<int, List<double>>();
        var gold = new Dictionary<string, Dictionary<string, int>>(StringComparer.Ordinal);
        var predicted = new Dictionary<string, Dictionary<string, int>>(StringComparer.Ordinal);
        var used = new HashSet<QuestionKey>();

        foreach (var qp in questions.EnumerateObject())
        {
            var q = qp.Value;
            used.Add(QuestionKey.String(qp.Name)); // answers to unbalanced questions are legitimately ignored
            var balanced = JsonLines.Property(q, "isBalanced", annotationsPath, null);
            if (balanced.ValueKind != JsonValueKind.True) continue;
            var key = QuestionKey.String(qp.Name);
            if (!answers.TryGetValue(key, out var answer))
                throw new EvaluationDataException($"balanced question '{qp.Name}' has no answer (the official script needs one for every balanced question)", answersPath);
            var goldAnswer = JsonLines.String(q, "answer", annotationsPath, null);
            var prediction = Prediction(answer.Text);
            double score = prediction == goldAnswer ? 1.0 : 0.0;
            var typesEl = JsonLines.Property(q, "types", annotationsPath, null);
            var structural = JsonLines.String(typesEl, "structural", annotationsPath, null);
            var semantic = JsonLines.String(typesEl, "semantic", annotationsPath, null);
            int words = PythonText.SplitWhitespace(JsonLines.String(q, "question", annotationsPath, null)).Length;
            int steps = 0;
            foreach (var op in JsonLines.Property(q, "semantic", annotationsPath, null).EnumerateArray())
            {
                var s = $"{PyStr(JsonLines.Property(op, "operation", annotationsPath, null))}: {PyStr(JsonLines.Property(op, "argument", annotationsPath, null))}";
                if (!NonSteps.Any(o => s.Contains(o, StringComparison.Ordinal))) steps++;
            }
            all.Add(score);
            Bucket(perLength, words).Add(score);
            Bucket(perSteps, steps).Add(score);
            Bucket(perStructural, structural).Add(score);
            Bucket(perSemantic, semantic).Add(score);
            (structural == "query" ? open : binary).Add(score);

            var groups = JsonLines.Property(q, "groups", annotationsPath, null);
            if (groups.TryGetProperty("global", out var g) && g.ValueKind != JsonValueKind.Null)
            {
                var group = PyStr(g);
                var gd = Bucket(gold, group);
                gd[goldAnswer] = gd.GetValueOrDefault(goldAnswer) + 1;
                var pd = Bucket(predicted, group);
                pd[prediction] = pd.GetValueOrDefault(prediction) + 1;
            }
        }
        foreach (var id in answers.Keys.Where(k => !used.Contains(k)))
            issues.Add("unknown_id", $"question_id {id} is not a question of the file (ignored, as the official script does)", answersPath, answers[id].Line, skipped: true);

        double sumScore = 0, sumOverall = 0;
        foreach (var (group, dist) in gold)
        {
            double score = 0, overall = 0;
            foreach (var (ans, e) in dist)
            {
                int o = predicted[group].GetValueOrDefault(ans);
                score += Math.Pow(o - e, 2) / e;
                overall += e;
            }
            sumScore += score * overall;
            sumOverall += overall;
        }

        static JsonObject Detail<TKey>(Dictionary<TKey, List<double>> d) where TKey : notnull
        {
            var o = new JsonObject();
            foreach (var (k, v) in d)
                o[Convert.ToString(k, CultureInfo.InvariantCulture)!] = new JsonObject { ["accuracy"] = Avg(v) * 100, ["count"] = v.Count };
            return o;
        }
        var metrics = new JsonObject
        {
            ["accuracy"] = Avg(all) * 100,
            ["binary"] = Avg(binary) * 100,
            ["open"] = Avg(open) * 100,
            ["distribution"] = sumOverall == 0 ? null : JsonValue.Create(sumScore / sumOverall / 100),
            ["per_structural_type"] = Detail(perStructural),
            ["per_semantic_type"] = Detail(perSemantic),
            ["per_steps"] = Detail(perSteps),
            ["per_length"] = Detail(perLength),
        };
        return new EvaluationReport(Name, metrics, issues) { Headline = Metric.Value(metrics["accuracy"]) };
    }

    private static double Avg(List<double> l)
    {
        if (l.Count == 0) return 0;
        double s = 0;
        foreach (var x in l) s += x;
        return s / l.Count;
    }

    private static TValue Bucket<TKey, TValue>(Dictionary<TKey, TValue> d, TKey key) where TKey : notnull where TValue : new()
    {
        if (!d.TryGetValue(key, out var v)) d[key] = v = new TValue();
        return v;
    }

    // "{}".format(x) of a JSON value: strings as they are, numbers and others as Python prints them (close enough for ids).
    private static string PyStr(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.String => e.GetString()!,
        JsonValueKind.Null => "None",
        JsonValueKind.True => "True",
        JsonValueKind.False => "False",
        _ => e.GetRawText(),
    };
}
