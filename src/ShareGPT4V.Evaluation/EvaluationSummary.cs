using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace ShareGPT4V.Evaluation;

/// <summary>
/// The paper's results table: one row of headline numbers in its column order (ShareGPT4V's Table: LLaVA-W, MME-P,
/// MME-C, MMB, MMB-CN, SEED-I, MM-Vet, QBench, SQA-I, VQAv2, VizWiz; then LLaVA-1.5's GQA, TextVQA, POPE).
/// </summary>
public sealed class EvaluationSummary
{
    /// <summary>Column titles in the paper's order.</summary>
    public static readonly IReadOnlyList<string> Columns = new[]
    {
        "LLaVA-W", "MME-P", "MME-C", "MMB", "MMB-CN", "SEED-I", "MM-Vet", "QBench", "SQA-I", "VQAv2", "VizWiz", "GQA", "TextVQA", "POPE",
    };

    private readonly Dictionary<string, double?> _values = new(StringComparer.Ordinal);

    /// <summary>Scores by column title (absent columns were not evaluated).</summary>
    public IReadOnlyDictionary<string, double?> Values => _values;

    /// <summary>Sets a column (title from <see cref="Columns"/>).</summary>
    /// <exception cref="ArgumentException">Unknown column.</exception>
    public void Set(string column, double? value)
    {
        if (!Columns.Contains(column)) throw new ArgumentException($"Unknown column '{column}' (known: {string.Join(", ", Columns)})", nameof(column));
        _values[column] = value;
    }

    /// <summary>Adds a report's headline(s): MME fills MME-P and MME-C, every other benchmark its own column.</summary>
    public void Add(EvaluationReport report)
    {
        if (report.Benchmark == "mme")
        {
            Set("MME-P", Metric.Value(report.Metrics["perception"]));
            Set("MME-C", Metric.Value(report.Metrics["cognition"]));
            return;
        }
        var column = Benchmarks.TryGet(report.Benchmark)?.Title ?? report.Benchmark;
        if (Columns.Contains(column)) Set(column, report.Headline);
    }

    /// <summary>The table of several reports.</summary>
    public static EvaluationSummary FromReports(IEnumerable<EvaluationReport> reports)
    {
        var s = new EvaluationSummary();
        foreach (var r in reports) s.Add(r);
        return s;
    }

    /// <summary>A Markdown table with the evaluated columns (in the paper's order), one decimal.</summary>
    public string ToMarkdown()
    {
        var cols = Columns.Where(_values.ContainsKey).ToList();
        var sb = new StringBuilder();
        sb.Append("| ").Append(string.Join(" | ", cols)).Append(" |\n");
        sb.Append('|').Append(string.Concat(cols.Select(_ => " ---: |"))).Append('\n');
        sb.Append("| ").Append(string.Join(" | ", cols.Select(c => _values[c] is { } v ? v.ToString("F1", CultureInfo.InvariantCulture) : "–"))).Append(" |\n");
        return sb.ToString();
    }

    /// <summary>A JSON object column → value, in the paper's order.</summary>
    public string ToJson()
    {
        var o = new JsonObject();
        foreach (var c in Columns.Where(_values.ContainsKey)) o[c] = _values[c];
        return o.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }

    /// <summary>Writes a report as JSON (<c>benchmark</c>, <c>headline</c>, <c>metrics</c>, <c>issues</c>), through a temporary file.</summary>
    public static void WriteReport(EvaluationReport report, string path)
    {
        var o = new JsonObject
        {
            ["benchmark"] = report.Benchmark,
            ["headline"] = report.Headline,
            ["metrics"] = report.Metrics.DeepClone(),
            ["issues"] = new JsonArray(report.Issues.Select(i => (JsonNode?)new JsonObject
            {
                ["kind"] = i.Kind, ["message"] = i.Message, ["file"] = i.File, ["line"] = i.Line, ["skipped"] = i.Skipped,
            }).ToArray()),
        };
        var tmp = path + ".tmp";
        File.WriteAllText(tmp, o.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        File.Move(tmp, path, overwrite: true);
    }

    /// <summary>Reads a report written by <see cref="WriteReport"/>.</summary>
    /// <exception cref="EvaluationDataException">Not such a report.</exception>
    public static EvaluationReport ReadReport(string path)
    {
        JsonNode? node;
        try { node = JsonNode.Parse(File.ReadAllText(path)); }
        catch (Exception e) when (e is JsonException or IOException) { throw new EvaluationDataException($"Cannot read the report: {e.Message}", path, null, e); }
        if (node is not JsonObject o || o["benchmark"]?.GetValue<string>() is not { } name || o["metrics"] is not JsonObject metrics)
            throw new EvaluationDataException("Not an evaluation report (needs 'benchmark' and 'metrics')", path);
        var issues = new List<EvaluationIssue>();
        if (o["issues"] is JsonArray arr)
            foreach (var i in arr.OfType<JsonObject>())
                issues.Add(new EvaluationIssue(i["kind"]?.GetValue<string>() ?? "", i["message"]?.GetValue<string>() ?? "", i["file"]?.GetValue<string>(),
                    i["line"]?.GetValue<int>(), i["skipped"]?.GetValue<bool>() ?? false));
        return new EvaluationReport(name, (JsonObject)metrics.DeepClone(), issues) { Headline = Metric.Value(o["headline"]) };
    }
}
