using System.Text.Json;
using System.Text.Json.Nodes;
using ShareGPT4V.Preprocessing;

namespace ShareGPT4V.Evaluation.Scorers;

/// <summary>
/// POPE, as <c>eval_pope.py</c> scores it: per category, answers (in answer-file order) paired by position with the
/// labels of <c>coco/coco_pope_&lt;category&gt;.json</c>; "no" when a space-separated word of the first sentence is
/// <c>No</c>, <c>not</c> or <c>no</c>. Fractions, not percentages.
/// </summary>
public sealed class PopeBenchmark : IBenchmark
{
    /// <inheritdoc/>
    public string Name => "pope";
    /// <inheritdoc/>
    public string Title => "POPE";
    /// <inheritdoc/>
    public BenchmarkRunSettings RunSettings { get; } = new(PromptStyle.Loader, ImageAspectMode.Pad, 128);
    /// <inheritdoc/>
    public bool CanScoreLocally => true;

    /// <summary>The yes/no reading of one answer (true = yes).</summary>
    public static bool ParseYes(string text)
    {
        int dot = text.IndexOf('.');
        if (dot >= 0) text = text[..dot];
        text = text.Replace(",", "", StringComparison.Ordinal);
        foreach (var w in text.Split(' '))
            if (w is "No" or "not" or "no") return false;
        return true;
    }

    /// <inheritdoc/>
    /// <param name="answersPath">LLaVA answer file.</param>
    /// <param name="annotationsPath">Folder with <c>llava_pope_test.jsonl</c> and <c>coco/</c>.</param>
    public EvaluationReport Score(string answersPath, string annotationsPath)
    {
        var issues = new IssueList();
        if (!Directory.Exists(annotationsPath)) throw new EvaluationDataException("The POPE annotation folder does not exist", annotationsPath);
        var questionFile = Path.Combine(annotationsPath, "llava_pope_test.jsonl");
        var coco = Path.Combine(annotationsPath, "coco");
        if (!File.Exists(questionFile)) throw new EvaluationDataException("The POPE question file is missing", questionFile);
        if (!Directory.Exists(coco)) throw new EvaluationDataException("The POPE label folder is missing", coco);

        var categoryOf = new Dictionary<QuestionKey, string>();
        foreach (var (line, e) in JsonLines.Read(questionFile))
            categoryOf[JsonLines.Key(e, "question_id", questionFile, line)] = JsonLines.String(e, "category", questionFile, line);

        var answers = AnswerFile.Read(answersPath);
        var known = new List<(AnswerRecord A, string Category)>();
        foreach (var a in answers)
        {
            if (categoryOf.TryGetValue(a.QuestionId, out var c)) known.Add((a, c));
            else issues.Add("unknown_id", $"question_id {a.QuestionId} is not in llava_pope_test.jsonl", answersPath, a.Line, skipped: true);
        }

        var metrics = new JsonObject();
        var files = Directory.GetFiles(coco).Select(Path.GetFileName).OrderBy(f => f, StringComparer.Ordinal).ToList();
        foreach (var file in files)
        {
            if (!file!.StartsWith("coco_pope_", StringComparison.Ordinal) || !file.EndsWith(".json", StringComparison.Ordinal))
                throw new EvaluationDataException("Every file of the POPE label folder must be named coco_pope_<category>.json", Path.Combine(coco, file));
            string category = file[10..^5];
            var labelPath = Path.Combine(coco, file);
            var labels = JsonLines.Read(labelPath).Select(x => JsonLines.String(x.Item2, "label", labelPath, x.Item1) != "no").ToList();
            var preds = known.Where(k => k.Category == category).Select(k => ParseYes(k.A.Text)).ToList();
            int tp = 0, fp = 0, tn = 0, fn = 0;
            for (int i = 0; i < Math.Min(preds.Count, labels.Count); i++)
            {
                if (preds[i] && labels[i]) tp++;
                else if (preds[i]) fp++;
                else if (!labels[i]) tn++;
                else fn++;
            }
            if (preds.Count != labels.Count)
                issues.Add("count_mismatch", $"category '{category}': {preds.Count} answers, {labels.Count} labels (paired by position, the rest ignored as the official script does)", labelPath, null, skipped: false);
            double? precision = tp + fp == 0 ? null : (double)tp / (tp + fp);
            double? recall = tp + fn == 0 ? null : (double)tp / (tp + fn);
            double? f1 = precision is { } p && recall is { } r && p + r != 0 ? 2 * p * r / (p + r) : null;
            metrics[category] = new JsonObject
            {
                ["samples"] = preds.Count,
                ["TP"] = tp, ["FP"] = fp, ["TN"] = tn, ["FN"] = fn,
                ["accuracy"] = Metric.Fraction(tp + tn, tp + tn + fp + fn),
                ["precision"] = precision,
                ["recall"] = recall,
                ["f1"] = f1,
                ["yes_ratio"] = Metric.Fraction(preds.Count(x => x), preds.Count),
            };
        }
        // LLaVA reports the mean F1 over the three categories.
        var f1s = metrics.Select(kv => Metric.Value(kv.Value?["f1"])).ToList();
        double? headline = f1s.Count > 0 && f1s.All(x => x is not null) ? f1s.Average(x => x!.Value) * 100 : null;
        return new EvaluationReport(Name, metrics, issues) { Headline = headline };
    }
}
