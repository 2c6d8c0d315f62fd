using System.Text;
using System.Text.Json.Nodes;
using ShareGPT4V.Preprocessing;

namespace ShareGPT4V.Evaluation.Scorers;

/// <summary>
/// MME as LLaVA's <c>convert_answer_to_mme.py</c> followed by MME's <c>eval_tool/calculation.py</c> score it:
/// per subtask acc, acc+ (both questions of an image right) and score = 100·acc + 100·acc+; perception and cognition
/// are sums of subtask scores.
/// </summary>
public sealed class MmeBenchmark : IBenchmark
{
    /// <summary>The perception subtasks, in the order the official tool sums them.</summary>
    public static readonly IReadOnlyList<string> Perception = new[] { "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR" };
    /// <summary>The cognition subtasks, in the official order.</summary>
    public static readonly IReadOnlyList<string> Cognition = new[] { "commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning" };

    private const string ShortAnswerSuffix = "Answer the question using a single word or phrase.";
    private const string YesNo = "Please answer yes or no.";

    /// <inheritdoc/>
    public string Name => "mme";
    /// <inheritdoc/>
    public string Title => "MME-P";
    /// <inheritdoc/>
    public BenchmarkRunSettings RunSettings { get; } = new(PromptStyle.Loader, ImageAspectMode.Pad, 128);
    /// <inheritdoc/>
    public bool CanScoreLocally => true;

    /// <summary>The official answer reading: "yes", "no" or "other" (always wrong).</summary>
    public static string ParseAnswer(string text)
    {
        var s = text.ToLowerInvariant();
        if (s is "yes" or "no") return s;
        var prefix = s.Length > 4 ? s[..4] : s;
        if (prefix.Contains("yes", StringComparison.Ordinal)) return "yes";
        if (prefix.Contains("no", StringComparison.Ordinal)) return "no";
        return "other";
    }

    /// <inheritdoc/>
    /// <param name="answersPath">LLaVA answer file.</param>
    /// <param name="annotationsPath"><c>MME_Benchmark_release_version</c> folder.</param>
    public EvaluationReport Score(string answersPath, string annotationsPath)
    {
        var issues = new IssueList();
        var gt = ReadGroundTruth(annotationsPath);

        // Conversion: per category, answers in file order, each resolved to its ground-truth question.
        var perCategory = new Dictionary<string, List<(int Line, string Gt, string Pred)>>(StringComparer.Ordinal);
        foreach (var a in AnswerFile.Read(answersPath))
        {
            var id = a.QuestionId.Value;
            int slash = id.IndexOf('/');
            if (slash < 0) throw new EvaluationDataException($"question_id '{id}' is not '<category>/<image file>'", answersPath, a.Line);
            var category = id[..slash];
            var fileName = id[(id.LastIndexOf('/') + 1)..];
            int dot = fileName.IndexOf('.');
            var txt = (dot >= 0 ? fileName[..dot] : fileName) + ".txt";
            var question = a.Prompt ?? "";
            if (question.Contains(ShortAnswerSuffix, StringComparison.Ordinal)) question = PythonText.Strip(question.Replace(ShortAnswerSuffix, "", StringComparison.Ordinal));
            if (!question.Contains(YesNo, StringComparison.Ordinal))
            {
                question += " " + YesNo;
                if (!gt.ContainsKey((category, txt, question))) question = question[..^(YesNo.Length + 1)] + "  " + YesNo;
            }
            if (!gt.TryGetValue((category, txt, question), out var answer))
            {
                issues.Add("unknown_id", $"no ground truth for '{question}' in {category}/{txt}", answersPath, a.Line, skipped: true);
                continue;
            }
            if (!perCategory.TryGetValue(category, out var list)) perCategory[category] = list = new();
            list.Add((a.Line, answer, a.Text));
        }

        var tasks = new JsonObject();
        double perception = 0, cognition = 0;
        foreach (var (names, isPerception) in new[] { (Perception, true), (Cognition, false) })
            foreach (var task in names)
            {
                if (!perCategory.TryGetValue(task, out var lines) || lines.Count == 0)
                    throw new EvaluationDataException($"MME subtask '{task}' has no answers (all 14 subtasks are needed)", answersPath);
                if (lines.Count % 2 != 0)
                    throw new EvaluationDataException($"MME subtask '{task}' has {lines.Count} answers; images come in pairs of questions", answersPath, lines[^1].Line);
                int correct = 0, bothRight = 0;
                for (int i = 0; i < lines.Count; i += 2)
                {
                    int imageCorrect = 0;
                    for (int k = i; k < i + 2; k++)
                    {
                        var g = lines[k].Gt.ToLowerInvariant();
                        if (g is not ("yes" or "no")) throw new EvaluationDataException($"ground truth '{lines[k].Gt}' is neither Yes nor No", annotationsPath);
                        if (ParseAnswer(lines[k].Pred) == g) { imageCorrect++; correct++; }
                    }
                    if (imageCorrect == 2) bothRight++;
                }
                double acc = (double)correct / lines.Count;
                double accPlus = (double)bothRight / (lines.Count / 2);
                double score = 0.0 + acc * 100 + accPlus * 100;
                tasks[task] = new JsonObject { ["acc"] = acc, ["acc_plus"] = accPlus, ["score"] = score };
                if (isPerception) perception += score; else cognition += score;
            }
        var metrics = new JsonObject { ["perception"] = perception, ["cognition"] = cognition, ["tasks"] = tasks };
        return new EvaluationReport(Name, metrics, issues) { Headline = perception };
    }

    private static Dictionary<(string Category, string File, string Question), string> ReadGroundTruth(string root)
    {
        if (!Directory.Exists(root)) throw new EvaluationDataException("The MME folder does not exist", root);
        var gt = new Dictionary<(string, string, string), string>();
        foreach (var categoryDir in Directory.GetDirectories(root))
        {
            var category = Path.GetFileName(categoryDir);
            // artwork, celebrity, landmark, posters, scene keep their txt files in questions_answers_YN/ (next to images/).
            var qaDir = Path.Combine(categoryDir, "questions_answers_YN");
            if (!Directory.Exists(qaDir))
            {
                if (Directory.Exists(Path.Combine(categoryDir, "images"))) throw new EvaluationDataException("The category has images/ but no questions_answers_YN/", categoryDir);
                qaDir = categoryDir;
            }
            foreach (var file in Directory.GetFiles(qaDir, "*.txt"))
            {
                int n = 0;
                foreach (var raw in File.ReadLines(file, Encoding.UTF8))
                {
                    n++;
                    var parts = PythonText.Strip(raw).Split('\t');
                    if (parts.Length != 2) throw new EvaluationDataException("A ground-truth line must be '<question>\\t<Yes|No>'", file, n);
                    gt[(category, Path.GetFileName(file), parts[0])] = parts[1];
                }
            }
        }
        return gt;
    }
}
