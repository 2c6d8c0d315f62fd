using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using ShareGPT4V.Preprocessing;

namespace ShareGPT4V.Evaluation.Scorers;

/// <summary>
/// MMBench (and MMBench-CN), scored locally by the project's definition (the official scoring runs on the
/// OpenCompass server): a row is right when the stripped answer equals its <c>answer</c> letter; single pass over all
/// rows, vanilla (base rows) and CircularEval (every circular copy of a question right). Percentages.
/// </summary>
public sealed class MmBenchBenchmark : IBenchmark
{
    private const long CircularStride = 1_000_000;

    /// <summary>Creates the English (<c>mmbench</c>) or Chinese (<c>mmbench-cn</c>) benchmark.</summary>
    public MmBenchBenchmark(bool chinese = false)
    {
        Chinese = chinese;
        RunSettings = new(PromptStyle.MmBench, ImageAspectMode.Pad, 1024, chinese ? "cn" : "en");
    }

    /// <summary>True for MMBench-CN (Chinese letter instruction).</summary>
    public bool Chinese { get; }
    /// <inheritdoc/>
    public string Name => Chinese ? "mmbench-cn" : "mmbench";
    /// <inheritdoc/>
    public string Title => Chinese ? "MMB-CN" : "MMB";
    /// <inheritdoc/>
    public BenchmarkRunSettings RunSettings { get; }
    /// <inheritdoc/>
    public bool CanScoreLocally => true;

    internal static bool TryIndex(QuestionKey k, out long index) =>
        long.TryParse(k.Value, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out index);

    /// <inheritdoc/>
    /// <param name="answersPath">LLaVA answer file (<c>model_vqa_mmbench</c> format).</param>
    /// <param name="annotationsPath">The MMBench TSV (<c>mmbench_dev_20230712.tsv</c>).</param>
    public EvaluationReport Score(string answersPath, string annotationsPath)
    {
        var issues = new IssueList();
        var table = TsvTable.Read(annotationsPath);
        int cIndex = table.Column("index"), cAnswer = table.Column("answer"), cCategory = table.Column("category"), cL2 = table.Column("l2-category", required: false);

        var predictions = new Dictionary<long, AnswerRecord>();
        foreach (var a in AnswerFile.Read(answersPath))
        {
            if (!TryIndex(a.QuestionId, out var idx)) { issues.Add("unknown_id", $"question_id {a.QuestionId} is not a row index", answersPath, a.Line, skipped: true); continue; }
            if (predictions.TryGetValue(idx, out var earlier))
                issues.Add("duplicate_id", $"question_id {idx} answered again (line {earlier.Line} replaced: the last answer counts)", answersPath, a.Line, skipped: true);
            predictions[idx] = a;
        }

        int rows = 0, rowsCorrect = 0, baseRows = 0, baseCorrect = 0;
        var groups = new Dictionary<long, (bool AllCorrect, string? Category, string? L2, bool HasBase, string? FirstCategory, string? FirstL2)>();
        var rowIndices = new HashSet<long>();
        foreach (var (line, f) in table.Rows)
        {
            var indexText = TsvTable.Value(f, cIndex);
            if (indexText is null || !long.TryParse(indexText, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var index))
                throw new EvaluationDataException($"The row's index '{indexText}' is not an integer", annotationsPath, line);
            if (!rowIndices.Add(index)) throw new EvaluationDataException($"Row index {index} appears twice", annotationsPath, line);
            var answer = TsvTable.Value(f, cAnswer);
            bool ok = predictions.TryGetValue(index, out var p) && answer is not null && PythonText.Strip(p.Text) == answer;
            rows++;
            if (ok) rowsCorrect++;
            long g = index % CircularStride;
            bool isBase = index < CircularStride;
            if (isBase) { baseRows++; if (ok) baseCorrect++; }
            var category = TsvTable.Value(f, cCategory);
            var l2 = TsvTable.Value(f, cL2);
            if (!groups.TryGetValue(g, out var grp)) grp = (true, null, null, false, category, l2);
            grp.AllCorrect &= ok;
            if (isBase) { grp.Category = category; grp.L2 = l2; grp.HasBase = true; }
            groups[g] = grp;
        }
        foreach (var (idx, a) in predictions)
            if (!rowIndices.Contains(idx)) issues.Add("unknown_id", $"question_id {idx} is not a row of the table (ignored)", answersPath, a.Line, skipped: true);
        int missing = rowIndices.Count(i => !predictions.ContainsKey(i));
        if (missing > 0) issues.Add("missing_answer", $"{missing} row(s) have no answer (scored as wrong)", answersPath, null, skipped: false);

        var perCategory = new Dictionary<string, (int N, int K)>(StringComparer.Ordinal);
        var perL2 = new Dictionary<string, (int N, int K)>(StringComparer.Ordinal);
        int circularCorrect = 0;
        foreach (var grp in groups.Values)
        {
            if (grp.AllCorrect) circularCorrect++;
            var cat = (grp.HasBase ? grp.Category : grp.FirstCategory) ?? "";
            var l2 = (grp.HasBase ? grp.L2 : grp.FirstL2) ?? "";
            var c = perCategory.GetValueOrDefault(cat);
            perCategory[cat] = (c.N + 1, c.K + (grp.AllCorrect ? 1 : 0));
            if (cL2 >= 0)
            {
                var d = perL2.GetValueOrDefault(l2);
                perL2[l2] = (d.N + 1, d.K + (grp.AllCorrect ? 1 : 0));
            }
        }
        var catObj = new JsonObject();
        foreach (var (k, v) in perCategory.OrderBy(kv => kv.Key, StringComparer.Ordinal)) catObj[k] = Metric.Percent(v.K, v.N);
        var l2Obj = new JsonObject();
        foreach (var (k, v) in perL2.OrderBy(kv => kv.Key, StringComparer.Ordinal)) l2Obj[k] = Metric.Percent(v.K, v.N);
        var metrics = new JsonObject
        {
            ["rows"] = rows,
            ["questions"] = groups.Count,
            ["accuracy"] = Metric.Percent(rowsCorrect, rows),
            ["vanilla_accuracy"] = Metric.Percent(baseCorrect, baseRows),
            ["circular_accuracy"] = Metric.Percent(circularCorrect, groups.Count),
            ["circular_per_category"] = catObj,
            ["circular_per_l2_category"] = l2Obj,
        };
        return new EvaluationReport(Name, metrics, issues) { Headline = Metric.Value(metrics["circular_accuracy"]) };
    }
}
