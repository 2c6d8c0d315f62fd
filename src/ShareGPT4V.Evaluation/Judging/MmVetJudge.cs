using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.AI;
using ShareGPT4V.Preprocessing;
using AiChatMessage = Microsoft.Extensions.AI.ChatMessage;
using AiChatRole = Microsoft.Extensions.AI.ChatRole;

namespace ShareGPT4V.Evaluation.Judging;

/// <summary>
/// MM-Vet, graded as the official MM-Vet evaluator does: a few-shot prompt asks the judge to complete a
/// "Question | Ground truth | Prediction | Correctness" row with a score 0.0–1.0; scores per capability and in total,
/// in percent, rounded to one decimal. The judge is any <see cref="IChatClient"/>.
/// </summary>
public sealed class MmVetJudge : IBenchmark
{
    /// <summary>The official grader's few-shot prompt.</summary>
    public const string GraderPrompt =
        "Compare the ground truth and prediction from AI models, to give a correctness score for the prediction. <AND> in the ground truth means it is totally right only when all elements in the ground truth are present in the prediction, and <OR> means it is totally right when any one element in the ground truth is present in the prediction. The correctness score is 0.0 (totally wrong), 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, or 1.0 (totally right). Just complete the last space of the correctness score.\n" +
        "\n" +
        "Question | Ground truth | Prediction | Correctness\n" +
        "--- | --- | --- | ---\n" +
        "What is x in the equation? | -1 <AND> -5 | x = 3 | 0.0\n" +
        "What is x in the equation? | -1 <AND> -5 | x = -1 | 0.5\n" +
        "What is x in the equation? | -1 <AND> -5 | x = -5 | 0.5\n" +
        "What is x in the equation? | -1 <AND> -5 | x = -5 or 5 | 0.5\n" +
        "What is x in the equation? | -1 <AND> -5 | x = -1 or x = -5 | 1.0\n" +
        "Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme talks about Iceland and Greenland. It's pointing out that despite their names, Iceland is not very icy and Greenland isn't very green. | 0.4\n" +
        "Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme is using humor to point out the misleading nature of Iceland's and Greenland's names. Iceland, despite its name, has lush green landscapes while Greenland is mostly covered in ice and snow. The text 'This is why I have trust issues' is a playful way to suggest that these contradictions can lead to distrust or confusion. The humor in this meme is derived from the unexpected contrast between the names of the countries and their actual physical characteristics. | 1.0\n";
    /// <summary>Added to the query when the judge's reply was not a score.</summary>
    public const string RetrySuffix = "\nPredict the correctness of the answer (digit): ";
    /// <summary>The reference judge model.</summary>
    public const string ReferenceJudgeModel = "gpt-4-0613";
    /// <summary>The judge's token limit.</summary>
    public const int MaxTokens = 3;

    /// <inheritdoc/>
    public string Name => "mm-vet";
    /// <inheritdoc/>
    public string Title => "MM-Vet";
    /// <inheritdoc/>
    public BenchmarkRunSettings RunSettings { get; } = new(PromptStyle.OpenEnded, ImageAspectMode.Resize, 1024);
    /// <inheritdoc/>
    public bool CanScoreLocally => true;

    /// <summary>The grading query of one sample (with the retry suffix after a reply that was not a score).</summary>
    public static string Query(string question, string groundTruth, string prediction, bool retry = false) =>
        GraderPrompt + "\n" + string.Join(" | ", question, groundTruth.Replace("<AND>", " <AND> ", StringComparison.Ordinal).Replace("<OR>", " <OR> ", StringComparison.Ordinal), prediction, "")
        + (retry ? RetrySuffix : "");

    /// <summary>The score in a reply: its first space-separated piece as a number in [0, 1], or null.</summary>
    public static double? ParseScore(string content)
    {
        var piece = PythonText.Strip(content.Split(' ')[0]);
        var v = LlavaBenchJudge.PythonFloat(piece);
        return v is { } d && d >= 0 && d <= 1 ? d : null;
    }

    /// <summary>
    /// Grades each answer that has fewer than <paramref name="runs"/> grades in <paramref name="gradesPath"/>
    /// (a JSON object id → {model, content, score}, rewritten through a temporary file after every sample). The answer
    /// of question <c>n</c> is MM-Vet's <c>v1_n</c>, as LLaVA's converter names it. A reply that is not a score is
    /// asked again with the retry suffix and the temperature raised by 0.5, up to 5 tries, then scored 0.
    /// </summary>
    public static async Task<int> GradeAsync(IChatClient judge, string mmVetJsonPath, string answersPath, string gradesPath, int runs = 1,
        string? judgeModel = ReferenceJudgeModel, CancellationToken cancellationToken = default)
    {
        if (runs < 1) throw new ArgumentOutOfRangeException(nameof(runs), runs, "must be at least 1");
        var data = JsonLines.ReadDocument(mmVetJsonPath);
        var predictions = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var a in AnswerFile.Read(answersPath)) predictions[a.QuestionId.Value.StartsWith("v1_", StringComparison.Ordinal) ? a.QuestionId.Value : "v1_" + a.QuestionId.Value] = a.Text;
        var grades = File.Exists(gradesPath) ? (JsonNode.Parse(await File.ReadAllTextAsync(gradesPath, cancellationToken).ConfigureAwait(false)) as JsonObject
            ?? throw new EvaluationDataException("The grade file is not a JSON object", gradesPath)) : new JsonObject();
        int graded = 0;
        for (int run = 0; run < runs; run++)
            foreach (var item in data.EnumerateObject())
            {
                cancellationToken.ThrowIfCancellationRequested();
                var sample = grades[item.Name] as JsonObject;
                if (sample?["score"] is JsonArray done && done.Count > run) continue;
                if (!predictions.TryGetValue(item.Name, out var prediction))
                    throw new EvaluationDataException($"no answer for MM-Vet sample '{item.Name}'", answersPath);
                var question = JsonLines.String(item.Value, "question", mmVetJsonPath, null);
                var truth = JsonLines.String(item.Value, "answer", mmVetJsonPath, null);
                float temperature = 0;
                var reply = await Ask(judge, Query(question, truth, prediction), temperature, judgeModel, cancellationToken).ConfigureAwait(false);
                var content = PythonText.Strip(reply.Text.Split(' ')[0]);
                double score;
                int tries = 1;
                while (true)
                {
                    if (ParseScore(content) is { } s) { score = s; break; }
                    reply = await Ask(judge, Query(question, truth, prediction, retry: true), temperature, judgeModel, cancellationToken).ConfigureAwait(false);
                    content = reply.Text;
                    tries++;
                    temperature += 0.5f;
                    if (tries > 5) { score = 0; break; }
                    content = PythonText.Strip(content.Split(' ')[0]);
                }
                sample ??= new JsonObject { ["model"] = new JsonArray(), ["content"] = new JsonArray(), ["score"] = new JsonArray() };
                ((JsonArray)sample["model"]!).Add(reply.ModelId ?? judgeModel ?? "");
                ((JsonArray)sample["content"]!).Add(content);
                ((JsonArray)sample["score"]!).Add(score);
                grades[item.Name] = sample;
                var tmp = gradesPath + ".tmp";
                await File.WriteAllTextAsync(tmp, grades.ToJsonString(new JsonSerializerOptions { WriteIndented = true }), cancellationToken).ConfigureAwait(false);
                File.Move(tmp, gradesPath, overwrite: true);
                graded++;
            }
        return graded;
    }

    private static Task<ChatResponse> Ask(IChatClient judge, string query, float temperature, string? model, CancellationToken ct) =>
        judge.GetResponseAsync(new[] { new AiChatMessage(AiChatRole.User, query) },
            new ChatOptions { Temperature = temperature, MaxOutputTokens = MaxTokens, ModelId = model }, ct);

    /// <summary>
    /// Scores a grade file as the official evaluator does: per capability (and in total) the sum of scores over the
    /// samples having it / their number · 100, averaged over runs and rounded to one decimal.
    /// </summary>
    /// <param name="answersPath">The grade file written by <see cref="GradeAsync"/>.</param>
    /// <param name="annotationsPath"><c>mm-vet.json</c>.</param>
    public EvaluationReport Score(string answersPath, string annotationsPath)
    {
        var issues = new IssueList();
        var data = JsonLines.ReadDocument(annotationsPath);
        var grades = JsonLines.ReadDocument(answersPath);
        if (grades.ValueKind != JsonValueKind.Object) throw new EvaluationDataException("The grade file must be a JSON object id → grades", answersPath);
        int runs = int.MaxValue;
        var counts = new Dictionary<string, int>(StringComparer.Ordinal);
        var samples = new List<(string[] Caps, double[] Scores)>();
        foreach (var item in data.EnumerateObject())
        {
            var caps = JsonLines.Property(item.Value, "capability", annotationsPath, null).EnumerateArray().Select(c => c.GetString()!).Distinct().ToArray();
            foreach (var c in caps) counts[c] = counts.GetValueOrDefault(c) + 1;
            if (!grades.TryGetProperty(item.Name, out var g) || !g.TryGetProperty("score", out var sc) || sc.ValueKind != JsonValueKind.Array)
                throw new EvaluationDataException($"sample '{item.Name}' has no grades", answersPath);
            var scores = sc.EnumerateArray().Select(x => x.GetDouble()).ToArray();
            runs = Math.Min(runs, scores.Length);
            samples.Add((caps, scores));
        }
        if (samples.Count == 0 || runs == 0) throw new EvaluationDataException("No graded samples", answersPath);
        var perCap = counts.Keys.ToDictionary(k => k, _ => new double[runs], StringComparer.Ordinal);
        var total = new double[runs];
        foreach (var (caps, scores) in samples)
            for (int r = 0; r < runs; r++)
            {
                foreach (var c in caps) perCap[c][r] += scores[r];
                total[r] += scores[r];
            }
        double Mean(double[] sums, int n) => PythonRound.Round(sums.Select(s => s / n * 100).Average(), 1);
        var capObj = new JsonObject();
        foreach (var (c, n) in counts.OrderByDescending(kv => kv.Value)) capObj[c] = Mean(perCap[c], n);
        var totals = total.Select(s => s / samples.Count * 100).ToArray();
        double mean = totals.Average();
        double std = Math.Sqrt(totals.Select(t => (t - mean) * (t - mean)).Average());
        var metrics = new JsonObject
        {
            ["total"] = Mean(total, samples.Count),
            ["std"] = PythonRound.Round(std, 1),
            ["runs"] = runs,
            ["samples"] = samples.Count,
            ["per_capability"] = capObj,
        };
        return new EvaluationReport(Name, metrics, issues) { Headline = Metric.Value(metrics["total"]) };
    }
}
