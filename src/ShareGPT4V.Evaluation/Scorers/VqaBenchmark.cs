using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using ShareGPT4V.Preprocessing;

namespace ShareGPT4V.Evaluation.Scorers;

/// <summary>
/// VQAv2 and VizWiz: the official scores come from the EvalAI server, so locally this writes the submission file
/// LLaVA's converters write (<see cref="WriteSubmission"/>), and, where annotations with human answers are at hand
/// (e.g. VQAv2 val), computes the VQA accuracy with EvalAI's normalisation on both sides (<see cref="Score"/>).
/// </summary>
public sealed class VqaBenchmark : IBenchmark
{
    /// <summary>Creates <c>vqav2</c> or <c>vizwiz</c>.</summary>
    public VqaBenchmark(bool vizWiz = false) => VizWiz = vizWiz;

    /// <summary>True for VizWiz (submission keyed by image), false for VQAv2 (keyed by question id).</summary>
    public bool VizWiz { get; }
    /// <inheritdoc/>
    public string Name => VizWiz ? "vizwiz" : "vqav2";
    /// <inheritdoc/>
    public string Title => VizWiz ? "VizWiz" : "VQAv2";
    /// <inheritdoc/>
    public BenchmarkRunSettings RunSettings { get; } = new(PromptStyle.Loader, ImageAspectMode.Pad, 128);
    /// <inheritdoc/>
    public bool CanScoreLocally => true;

    /// <summary>
    /// Writes the EvalAI upload: for every question of the split file in order, <c>{"question_id", "answer"}</c>
    /// (VQAv2; an unanswered question gets "") or <c>{"image", "answer"}</c> (VizWiz; every question must be answered),
    /// the answer normalised by EvalAI's processor. Unreadable answer lines are counted and skipped, as the converters do.
    /// </summary>
    /// <returns>(answers written, unanswered questions, unreadable answer lines).</returns>
    public (int Written, int Unanswered, int BadLines) WriteSubmission(string answersPath, string splitQuestionsPath, string outputPath)
    {
        var results = new Dictionary<QuestionKey, string>();
        int bad = 0, n = 0;
        foreach (var raw in File.ReadLines(answersPath, Encoding.UTF8))
        {
            n++;
            if (string.IsNullOrWhiteSpace(raw)) continue;
            try { var a = AnswerFile.Parse(raw, answersPath, n); results[a.QuestionId] = a.Text; }
            catch (EvaluationDataException) { bad++; }
        }
        var all = new JsonArray();
        int unanswered = 0;
        foreach (var (line, q) in JsonLines.Read(splitQuestionsPath))
        {
            var id = JsonLines.Key(q, "question_id", splitQuestionsPath, line);
            var found = results.TryGetValue(id, out var text);
            if (VizWiz)
            {
                if (!found) throw new EvaluationDataException($"question {id} has no answer (VizWiz needs every answer)", answersPath);
                all.Add(new JsonObject { ["image"] = JsonLines.String(q, "image", splitQuestionsPath, line), ["answer"] = VqaAnswerNormalizer.Normalize(text!) });
            }
            else
            {
                if (!found) unanswered++;
                all.Add(new JsonObject { ["question_id"] = JsonNode.Parse(JsonLines.Property(q, "question_id", splitQuestionsPath, line).GetRawText()), ["answer"] = found ? VqaAnswerNormalizer.Normalize(text!) : "" });
            }
        }
        var tmp = outputPath + ".tmp";
        File.WriteAllText(tmp, PythonJson.Serialize(all), new UTF8Encoding(false));
        File.Move(tmp, outputPath, overwrite: true);
        return (all.Count, unanswered, bad);
    }

    /// <inheritdoc/>
    /// <param name="answersPath">LLaVA answer file.</param>
    /// <param name="annotationsPath">
    /// VQA-format annotations: <c>{"annotations": [{"question_id", "answers": [{"answer"}...], "answer_type"}]}</c>
    /// (VQAv2), or a list of such records (VizWiz val with question ids added).
    /// </param>
    public EvaluationReport Score(string answersPath, string annotationsPath)
    {
        var issues = new IssueList();
        var root = JsonLines.ReadDocument(annotationsPath);
        var records = root.ValueKind == JsonValueKind.Object && root.TryGetProperty("annotations", out var anns) ? anns : root;
        if (records.ValueKind != JsonValueKind.Array) throw new EvaluationDataException("Expected VQA annotations: {\"annotations\": [...]} or a list", annotationsPath);
        var gts = new Dictionary<QuestionKey, (string[] Answers, string? Type)>();
        int record = 0;
        foreach (var r in records.EnumerateArray())
        {
            record++;
            if (!r.TryGetProperty("question_id", out var idEl))
                throw new EvaluationDataException($"annotation {record} has no question_id (VizWiz val annotations are keyed by image: add the question ids of the question file)", annotationsPath);
            var answers = JsonLines.Property(r, "answers", annotationsPath, record).EnumerateArray()
                .Select(x => x.ValueKind == JsonValueKind.Object ? JsonLines.String(x, "answer", annotationsPath, record) : x.GetString() ?? "").ToArray();
            string? type = r.TryGetProperty("answer_type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString() : null;
            gts[QuestionKey.FromJson(idEl)] = (answers, type);
        }
        double sum = 0;
        int n = 0;
        var perType = new SortedDictionary<string, (double Sum, int N)>(StringComparer.Ordinal);
        foreach (var a in AnswerFile.ByIdLastWins(AnswerFile.Read(answersPath), answersPath, issues).Values.OrderBy(a => a.Line))
        {
            if (!gts.TryGetValue(a.QuestionId, out var gt)) { issues.Add("unknown_id", $"question_id {a.QuestionId} has no annotation", answersPath, a.Line, skipped: true); continue; }
            double s = VqaAnswerNormalizer.SoftScore(a.Text, gt.Answers);
            sum += s;
            n++;
            if (gt.Type is { } type) { var c = perType.GetValueOrDefault(type); perType[type] = (c.Sum + s, c.N + 1); }
        }
        var typeObj = new JsonObject();
        foreach (var (k, v) in perType) typeObj[k] = 100.0 * (v.Sum / v.N);
        var metrics = new JsonObject { ["samples"] = n, ["accuracy"] = n == 0 ? null : JsonValue.Create(100.0 * (sum / n)), ["per_answer_type"] = typeObj };
        return new EvaluationReport(Name, metrics, issues) { Headline = Metric.Value(metrics["accuracy"]) };
    }
}
