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
/// LLaVA-Bench (in-the-wild), judged as LLaVA's <c>eval_gpt_review_bench.py</c> does: the judge sees the image's
/// caption, the question, the reference (GPT-4) answer and the model's answer, and replies with two 1–10 scores on
/// its first line; <c>summarize_gpt_review.py</c> reports the model's mean over the reference's mean, in percent.
/// The judge is any <see cref="IChatClient"/>.
/// </summary>
public sealed class LlavaBenchJudge : IBenchmark
{
    /// <summary>The judge's system message.</summary>
    public const string SystemMessage = "You are a helpful and precise assistant for checking the quality of the answer.";
    /// <summary>The judge's temperature in the reference.</summary>
    public const float Temperature = 0.2f;
    /// <summary>The reference judge model.</summary>
    public const string ReferenceJudgeModel = "gpt-4-0314";
    /// <summary>The reference's <c>--max-tokens</c> default.</summary>
    public const int MaxTokens = 1024;
    /// <summary>The rule prompt of <c>rule.json</c> for the three LLaVA-Bench categories (conv, detail, complex share it).</summary>
    public const string RulePrompt =
        "We would like to request your feedback on the performance of two AI assistants in response to the user question displayed above. " +
        "The user asks the question on observing an image. For your reference, the visual content in the image is represented with a few sentences describing the image. \n" +
        "Please rate the helpfulness, relevance, accuracy, level of details of their responses. Each assistant receives an overall score on a scale of 1 to 10, where a higher score indicates better overall performance.\n" +
        "Please first output a single line containing only two values indicating the scores for Assistant 1 and 2, respectively. The two scores are separated by a space.\n" +
        "In the subsequent line, please provide a comprehensive explanation of your evaluation, avoiding any potential bias and ensuring that the order in which the responses were presented does not affect your judgment.";
    /// <summary>The rule's role label.</summary>
    public const string Role = "Assistant";

    /// <inheritdoc/>
    public string Name => "llava-bench";
    /// <inheritdoc/>
    public string Title => "LLaVA-W";
    /// <inheritdoc/>
    public BenchmarkRunSettings RunSettings { get; } = new(PromptStyle.OpenEnded, ImageAspectMode.Resize, 1024);
    /// <inheritdoc/>
    public bool CanScoreLocally => true;

    /// <summary>The review request's user message.</summary>
    public static string ReviewContent(string caption, string question, string answer1, string answer2, string role = Role, string rule = RulePrompt) =>
        $"[Context]\n{caption}\n\n[Question]\n{question}\n\n[{role} 1]\n{answer1}\n\n[End of {role} 1]\n\n[{role} 2]\n{answer2}\n\n[End of {role} 2]\n\n[System]\n{rule}\n\n";

    /// <summary>The two scores of a review's first line ("8 7", "8,7"), or (-1, -1) when it is not two numbers (counted as the reference does).</summary>
    public static (double First, double Second) ParseScore(string review)
    {
        var first = review.Split('\n')[0].Replace(',', ' ');
        var parts = first.Split(' ');
        if (parts.Length == 2 && PythonFloat(parts[0]) is { } a && PythonFloat(parts[1]) is { } b) return (a, b);
        return (-1, -1);
    }

    /// <summary>Python's <c>float(str)</c> for plain decimal text (surrounding whitespace allowed), or null.</summary>
    internal static double? PythonFloat(string s)
    {
        var t = PythonText.Strip(s);
        if (t.Length == 0 || t.Contains(',', StringComparison.Ordinal)) return null;
        return double.TryParse(t.Replace("_", "", StringComparison.Ordinal), NumberStyles.Float, CultureInfo.InvariantCulture, out var d) ? d : null;
    }

    /// <summary>
    /// Reviews every answer that has no review yet (the review file is continued, as the reference does), writing one
    /// line per review: <c>id, question_id, answer1_id, answer2_id, category, content, tuple</c>.
    /// </summary>
    /// <param name="judge">The judge model.</param>
    /// <param name="questionsPath"><c>questions.jsonl</c> (question_id, image, text, category).</param>
    /// <param name="contextPath"><c>context.jsonl</c> (image, caption).</param>
    /// <param name="referenceAnswersPath">The reference answers (<c>answers_gpt4.jsonl</c>), assistant 1.</param>
    /// <param name="answersPath">The model's answers, assistant 2.</param>
    /// <param name="reviewsPath">Review file to write or continue.</param>
    /// <param name="judgeModel">Model id passed in the chat options (null leaves the client's default).</param>
    /// <param name="cancellationToken">Stops between reviews.</param>
    /// <returns>Reviews written by this call.</returns>
    public static async Task<int> ReviewAsync(IChatClient judge, string questionsPath, string contextPath, string referenceAnswersPath,
        string answersPath, string reviewsPath, string? judgeModel = ReferenceJudgeModel, CancellationToken cancellationToken = default)
    {
        var questions = JsonLines.Read(questionsPath).ToList();
        var reference = AnswerFile.Read(referenceAnswersPath);
        var answers = AnswerFile.Read(answersPath);
        var captions = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (line, c) in JsonLines.Read(contextPath))
        {
            var cap = JsonLines.Property(c, "caption", contextPath, line);
            captions[JsonLines.String(c, "image", contextPath, line)] = cap.ValueKind == JsonValueKind.Array
                ? string.Join("\n", cap.EnumerateArray().Select(x => x.GetString()))
                : cap.GetString() ?? "";
        }
        int existing = File.Exists(reviewsPath) ? File.ReadLines(reviewsPath).Count(l => !string.IsNullOrWhiteSpace(l)) : 0;
        int n = Math.Min(questions.Count, Math.Min(reference.Count, answers.Count));
        int written = 0;
        var options = new ChatOptions { Temperature = Temperature, MaxOutputTokens = MaxTokens, ModelId = judgeModel };
        using var output = new StreamWriter(reviewsPath, append: true, new UTF8Encoding(false));
        for (int i = existing; i < n; i++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var (line, q) = questions[i];
            var qid = JsonLines.Key(q, "question_id", questionsPath, line);
            // The reference pairs the three files by position; a mismatch would silently compare the wrong answers.
            if (reference[i].QuestionId != qid) throw new EvaluationDataException($"line {reference[i].Line} answers question {reference[i].QuestionId}, expected {qid}", referenceAnswersPath, reference[i].Line);
            if (answers[i].QuestionId != qid) throw new EvaluationDataException($"line {answers[i].Line} answers question {answers[i].QuestionId}, expected {qid}", answersPath, answers[i].Line);
            var image = JsonLines.String(q, "image", questionsPath, line);
            if (!captions.TryGetValue(image, out var caption)) throw new EvaluationDataException($"no caption for image '{image}'", contextPath);
            var category = "llava_bench_" + JsonLines.String(q, "category", questionsPath, line);
            var content = ReviewContent(caption, JsonLines.String(q, "text", questionsPath, line), reference[i].Text, answers[i].Text);
            var response = await judge.GetResponseAsync(new[]
            {
                new AiChatMessage(AiChatRole.System, SystemMessage),
                new AiChatMessage(AiChatRole.User, content),
            }, options, cancellationToken).ConfigureAwait(false);
            var review = response.Text;
            var (s1, s2) = ParseScore(review);
            var o = new JsonObject
            {
                ["id"] = i + 1,
                ["question_id"] = KeyNode(qid),
                ["answer1_id"] = AnswerId(reference[i]),
                ["answer2_id"] = AnswerId(answers[i]),
                ["category"] = category,
                ["content"] = review,
                ["tuple"] = new JsonArray(s1, s2),
            };
            await output.WriteAsync(PythonJson.Serialize(o) + "\n").ConfigureAwait(false);
            await output.FlushAsync(cancellationToken).ConfigureAwait(false);
            written++;
        }
        return written;
    }

    private static JsonNode KeyNode(QuestionKey k) => k.IsNumber ? JsonValue.Create(long.Parse(k.Value, CultureInfo.InvariantCulture)) : JsonValue.Create(k.Value);

    private static JsonNode? AnswerId(AnswerRecord a) =>
        a.Json.TryGetProperty("answer_id", out var id) ? JsonNode.Parse(id.GetRawText()) : KeyNode(a.QuestionId);

    /// <summary>
    /// Summarises a review file as <c>summarize_gpt_review.py</c> prints it: per category and <c>all</c>, the
    /// relative score round(mean2 / mean1 · 100, 1) with the means first rounded to 3 decimals, and both means · 10.
    /// </summary>
    /// <param name="answersPath">The review file.</param>
    /// <param name="annotationsPath">Not used (the reviews carry everything).</param>
    public EvaluationReport Score(string answersPath, string annotationsPath)
    {
        var issues = new IssueList();
        var scores = new SortedDictionary<string, List<(double, double)>>(StringComparer.Ordinal);
        foreach (var (line, r) in JsonLines.Read(answersPath))
        {
            var t = JsonLines.Property(r, "tuple", answersPath, line);
            if (t.ValueKind != JsonValueKind.Array || t.GetArrayLength() != 2 || t.EnumerateArray().Any(x => x.ValueKind != JsonValueKind.Number))
                throw new EvaluationDataException("A review's 'tuple' must be two numbers", answersPath, line);
            var pair = (t[0].GetDouble(), t[1].GetDouble());
            if (pair == (-1, -1)) issues.Add("unparsed_review", "the judge's first line was not two scores (counted as -1 -1, as the reference does)", answersPath, line, skipped: false);
            if (r.TryGetProperty("category", out var c) && c.ValueKind == JsonValueKind.String)
            {
                if (!scores.TryGetValue(c.GetString()!, out var l)) scores[c.GetString()!] = l = new();
                l.Add(pair);
            }
            if (!scores.TryGetValue("all", out var all)) scores["all"] = all = new();
            all.Add(pair);
        }
        var metrics = new JsonObject();
        foreach (var (k, v) in scores)
        {
            double m1 = 0, m2 = 0;
            foreach (var (a, b) in v) { m1 += a; m2 += b; }
            m1 = PythonRound.Round(m1 / v.Count, 3);
            m2 = PythonRound.Round(m2 / v.Count, 3);
            metrics[k] = new JsonObject
            {
                ["relative"] = m1 == 0 ? null : JsonValue.Create(PythonRound.Round(m2 / m1 * 100, 1)),
                ["reference"] = PythonRound.Round(m1 * 10, 1),
                ["model"] = PythonRound.Round(m2 * 10, 1),
                ["count"] = v.Count,
            };
        }
        return new EvaluationReport(Name, metrics, issues) { Headline = Metric.Value(metrics["all"]?["relative"]) };
    }
}
