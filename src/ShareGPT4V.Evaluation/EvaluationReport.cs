using System.Text.Json;
using System.Text.Json.Nodes;

namespace ShareGPT4V.Evaluation;

/// <summary>Something about the inputs that the score does not show by itself: a skipped line, a duplicate, a missing answer.</summary>
/// <param name="Kind">Short code: <c>unknown_id</c>, <c>duplicate_id</c>, <c>missing_answer</c>, ...</param>
/// <param name="Message">What happened, for a person.</param>
/// <param name="File">The file concerned.</param>
/// <param name="Line">Its 1-based line, when there is one.</param>
/// <param name="Skipped">True when the line was left out of the score.</param>
public sealed record EvaluationIssue(string Kind, string Message, string? File, int? Line, bool Skipped);

/// <summary>The result of scoring one benchmark: its metrics (named and nested as the official script's numbers) and the issues met.</summary>
/// <param name="Benchmark">Benchmark name (<c>pope</c>, <c>mme</c>, ...).</param>
/// <param name="Metrics">Metric name → number or nested object; counts are integers, scales as the official scripts use.</param>
/// <param name="Issues">Lines skipped or replaced, answers missing.</param>
public sealed record EvaluationReport(string Benchmark, JsonObject Metrics, IReadOnlyList<EvaluationIssue> Issues)
{
    /// <summary>Lines left out of the score.</summary>
    public int SkippedLines => Issues.Count(i => i.Skipped);

    /// <summary>The headline number the paper's table reports for this benchmark, when it has one.</summary>
    public double? Headline { get; init; }

    /// <summary>
    /// The metrics as one JSON object (numbers with round-trip precision); with <paramref name="withIssues"/> a
    /// <c>skipped</c> count and an <c>issues</c> list are added when there are issues.
    /// </summary>
    public string ToJson(bool withIssues = true, bool indented = true)
    {
        var o = (JsonObject)Metrics.DeepClone();
        if (withIssues && Issues.Count > 0)
        {
            o["skipped"] = SkippedLines;
            var arr = new JsonArray();
            foreach (var i in Issues)
                arr.Add(new JsonObject { ["kind"] = i.Kind, ["message"] = i.Message, ["file"] = i.File, ["line"] = i.Line, ["skipped"] = i.Skipped });
            o["issues"] = arr;
        }
        return o.ToJsonString(new JsonSerializerOptions { WriteIndented = indented });
    }
}

/// <summary>Collects issues while scoring.</summary>
internal sealed class IssueList : List<EvaluationIssue>
{
    public void Add(string kind, string message, string? file, int? line, bool skipped) => Add(new EvaluationIssue(kind, message, file, line, skipped));
}

/// <summary>Small helpers that build metric objects the way the official scripts compute them.</summary>
internal static class Metric
{
    /// <summary>a / b as a fraction, or null (JSON null) when b is 0 (the official scripts would divide by zero).</summary>
    public static JsonNode? Fraction(double a, double b) => b == 0 ? null : JsonValue.Create(a / b);

    /// <summary>a / b · 100 in Python's evaluation order ((a / b) * 100), or null when b is 0.</summary>
    public static JsonNode? Percent(double a, double b) => b == 0 ? null : JsonValue.Create(a / b * 100);

    public static double? Value(JsonNode? n) => n is JsonValue v && v.TryGetValue<double>(out var d) ? d : null;
}
