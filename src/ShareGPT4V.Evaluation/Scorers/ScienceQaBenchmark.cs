using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using ShareGPT4V.Preprocessing;

namespace ShareGPT4V.Evaluation.Scorers;

/// <summary>
/// ScienceQA as <c>eval_science_qa.py</c> scores it over the <c>test</c> split of <c>pid_splits.json</c>; IMG = the
/// problems whose answer prompt holds <c>&lt;image&gt;</c> (the number LLaVA reports as SQA-IMG). Percentages.
/// </summary>
public sealed partial class ScienceQaBenchmark : IBenchmark
{
    private static readonly string[] Options = { "A", "B", "C", "D", "E" };

    /// <inheritdoc/>
    public string Name => "sqa";
    /// <inheritdoc/>
    public string Title => "SQA-I";
    /// <inheritdoc/>
    public BenchmarkRunSettings RunSettings { get; } = new(PromptStyle.Science, ImageAspectMode.Resize, 1024);
    /// <inheritdoc/>
    public bool CanScoreLocally => true;

    [GeneratedRegex("The answer is ([A-Z]).")]
    private static partial Regex AnswerIs();

    /// <summary>The letter the official script reads from an answer, or <c>FAILED</c>.</summary>
    public static string ExtractLetter(string text)
    {
        if (Array.IndexOf(Options, text) >= 0) return text;
        if (text.Length >= 3 && Array.IndexOf(Options, text[0].ToString()) >= 0 && text.Substring(1, 2) == ". ") return text[0].ToString();
        var m = AnswerIs().Matches(text);
        return m.Count == 1 ? m[0].Groups[1].Value : "FAILED";
    }

    /// <inheritdoc/>
    /// <param name="answersPath">LLaVA answer file.</param>
    /// <param name="annotationsPath">Folder with <c>problems.json</c> and <c>pid_splits.json</c>.</param>
    public EvaluationReport Score(string answersPath, string annotationsPath)
    {
        var issues = new IssueList();
        var problemsPath = Path.Combine(annotationsPath, "problems.json");
        var splitsPath = Path.Combine(annotationsPath, "pid_splits.json");
        var problems = JsonLines.ReadDocument(problemsPath);
        var splits = JsonLines.ReadDocument(splitsPath);
        if (splits.ValueKind != JsonValueKind.Object || !splits.TryGetProperty("test", out var test) || test.ValueKind != JsonValueKind.Array)
            throw new EvaluationDataException("pid_splits.json has no 'test' list", splitsPath);
        if (problems.ValueKind != JsonValueKind.Object) throw new EvaluationDataException("problems.json must be an object pid → problem", problemsPath);

        var answers = AnswerFile.ByIdLastWins(AnswerFile.Read(answersPath), answersPath, issues);
        var testIds = new HashSet<QuestionKey>();
        int total = 0, correct = 0, imgTotal = 0, imgCorrect = 0;
        int index = 0;
        foreach (var pidElement in test.EnumerateArray())
        {
            index++;
            if (pidElement.ValueKind != JsonValueKind.String) throw new EvaluationDataException($"test split entry {index} is not a string pid", splitsPath);
            var pid = pidElement.GetString()!;
            // The official script builds a dict of the split: a pid listed twice is scored once.
            if (!testIds.Add(QuestionKey.String(pid))) continue;
            if (!problems.TryGetProperty(pid, out var prob)) throw new EvaluationDataException($"pid '{pid}' of the test split is not in problems.json", problemsPath);
            var choices = JsonLines.Property(prob, "choices", problemsPath, null);
            var answerIdx = JsonLines.Property(prob, "answer", problemsPath, null);
            if (choices.ValueKind != JsonValueKind.Array || answerIdx.ValueKind != JsonValueKind.Number)
                throw new EvaluationDataException($"problem '{pid}' needs a 'choices' list and a numeric 'answer'", problemsPath);

            string text, prompt;
            if (answers.TryGetValue(QuestionKey.String(pid), out var a)) { text = a.Text; prompt = a.Prompt ?? ""; }
            else
            {
                text = "FAILED";
                prompt = "Unknown";
                issues.Add("missing_answer", $"test pid '{pid}' has no answer (scored as wrong)", answersPath, null, skipped: false);
            }
            var letter = ExtractLetter(text);
            int n = choices.GetArrayLength();
            int predIdx = Array.IndexOf(Options, letter);
            if (predIdx >= n) predIdx = -1;
            bool ok = predIdx >= 0 && predIdx == answerIdx.GetInt32();
            bool multimodal = prompt.Contains("<image>", StringComparison.Ordinal);
            total++;
            if (ok) correct++;
            if (multimodal) { imgTotal++; if (ok) imgCorrect++; }
        }
        foreach (var id in answers.Keys.Where(k => !testIds.Contains(k)))
            issues.Add("unknown_id", $"question_id {id} is not a test pid (ignored)", answersPath, answers[id].Line, skipped: true);

        var metrics = new JsonObject
        {
            ["total"] = total,
            ["correct"] = correct,
            ["accuracy"] = Metric.Percent(correct, total),
            ["img_total"] = imgTotal,
            ["img_correct"] = imgCorrect,
            ["img_accuracy"] = Metric.Percent(imgCorrect, imgTotal),
        };
        return new EvaluationReport(Name, metrics, issues) { Headline = Metric.Value(metrics["img_accuracy"]) };
    }
}
