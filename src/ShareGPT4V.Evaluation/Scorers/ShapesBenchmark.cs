using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using ShareGPT4V.Preprocessing;

namespace ShareGPT4V.Evaluation.Scorers;

/// <summary>
/// The shapes world's held-out split (docs/shapes-world.md): count, colour, yes/no, position and caption questions
/// about generated images, scored from <c>annotations.jsonl</c> in the eval folder. Count: the first number (digits or
/// a number word). Colour: the first colour word. Yes/no: POPE's reading (<see cref="PopeBenchmark.ParseYes"/>).
/// Position: the row word and the column word both right. Caption: per image, precision and recall of the
/// (colour, shape) pairs it mentions, and whether it names exactly the right set. Fractions, not percentages; a
/// question without an answer counts as wrong and is reported.
/// </summary>
public sealed partial class ShapesBenchmark : IBenchmark
{
    /// <summary>The file of expected answers inside the eval folder.</summary>
    public const string AnnotationFile = "annotations.jsonl";

    private static readonly string[] Colors = ["red", "green", "blue", "yellow", "orange", "purple"];
    private static readonly string[] Shapes = ["circle", "square", "triangle", "star"];
    private static readonly string[] Categories = ["count", "color", "yesno", "position", "caption"];
    private static readonly Dictionary<string, int> NumberWords = new(StringComparer.Ordinal)
    {
        ["zero"] = 0, ["none"] = 0, ["one"] = 1, ["single"] = 1, ["two"] = 2, ["three"] = 3, ["four"] = 4, ["five"] = 5,
        ["six"] = 6, ["seven"] = 7, ["eight"] = 8, ["nine"] = 9, ["ten"] = 10,
    };

    /// <inheritdoc/>
    public string Name => "shapes";
    /// <inheritdoc/>
    public string Title => "Shapes";
    /// <inheritdoc/>
    public BenchmarkRunSettings RunSettings { get; } = new(PromptStyle.Loader, ImageAspectMode.Pad, 128);
    /// <inheritdoc/>
    public bool CanScoreLocally => true;

    [GeneratedRegex("[a-z0-9]+")]
    private static partial Regex WordPattern();

    private static List<string> Words(string text) => WordPattern().Matches(text.ToLowerInvariant()).Select(m => m.Value).ToList();

    /// <summary>The first number an answer states (digits or a number word), or null.</summary>
    public static int? ParseCount(string answer)
    {
        foreach (var w in Words(answer))
        {
            if (w.All(char.IsAsciiDigit)) return w.Length <= 6 ? int.Parse(w, System.Globalization.CultureInfo.InvariantCulture) : null;
            if (NumberWords.TryGetValue(w, out int n)) return n;
        }
        return null;
    }

    /// <summary>The first of the six colour words an answer uses, or null.</summary>
    public static string? ParseColor(string answer) => Words(answer).FirstOrDefault(w => Colors.Contains(w));

    /// <summary>
    /// The grid cell an answer names: row top / middle / bottom and column left / center / right. "top", "upper",
    /// "bottom", "lower", "left" and "right" decide their axis; "center", "centre", "middle" and "central" fill an axis
    /// left undecided, so "center" alone is the middle cell, "top center" the top row's middle, "middle left" the
    /// middle row's left cell. Null parts when the answer names none.
    /// </summary>
    public static (string? Row, string? Col) ParsePosition(string answer)
    {
        string? row = null, col = null;
        bool central = false;
        foreach (var w in Words(answer))
        {
            switch (w)
            {
                case "top" or "upper": row ??= "top"; break;
                case "bottom" or "lower": row ??= "bottom"; break;
                case "left": col ??= "left"; break;
                case "right": col ??= "right"; break;
                case "center" or "centre" or "middle" or "central": central = true; break;
            }
        }
        if (central)
        {
            row ??= "middle";
            col ??= "center";
        }
        return (row, col);
    }

    private static string? ShapeOf(string word)
    {
        foreach (var s in Shapes)
            if (word == s || word == s + "s") return s;
        return null;
    }

    /// <summary>
    /// The (colour, shape) pairs a caption mentions: a colour word followed within four words by a shape word
    /// (singular or plural), with no other shape and no "background" between; other colours may stand between only
    /// in a list joined by "and" / "or" ("red and blue circles").
    /// </summary>
    public static HashSet<(string Color, string Shape)> CaptionPairs(string caption)
    {
        var words = Words(caption);
        var pairs = new HashSet<(string, string)>();
        for (int i = 0; i < words.Count; i++)
        {
            if (!Colors.Contains(words[i])) continue;
            for (int j = i + 1; j < words.Count && j <= i + 4; j++)
            {
                if (ShapeOf(words[j]) is { } shape)
                {
                    var between = words.Skip(i + 1).Take(j - i - 1).ToList();
                    bool otherColor = between.Any(w => Colors.Contains(w));
                    bool list = between.All(w => Colors.Contains(w) || w is "and" or "or");
                    if (!otherColor || list) pairs.Add((words[i], shape));
                    break;
                }
                if (words[j] == "background") break;
            }
        }
        return pairs;
    }

    private sealed record Expected(int Line, string Category, JsonElement Value);

    /// <inheritdoc/>
    /// <param name="answersPath">LLaVA answer file (one line per question).</param>
    /// <param name="annotationsPath">The eval folder written by the generator (holding <c>annotations.jsonl</c>), or that file.</param>
    public EvaluationReport Score(string answersPath, string annotationsPath)
    {
        var issues = new IssueList();
        string file = Directory.Exists(annotationsPath) ? Path.Combine(annotationsPath, AnnotationFile) : annotationsPath;
        if (!File.Exists(file)) throw new EvaluationDataException("The shapes annotation file is missing (expected the eval folder holding annotations.jsonl)", file);

        var expected = new Dictionary<QuestionKey, Expected>();
        foreach (var (line, e) in JsonLines.Read(file))
        {
            var id = JsonLines.Key(e, "question_id", file, line);
            string category = JsonLines.String(e, "category", file, line);
            if (!Categories.Contains(category))
                throw new EvaluationDataException($"Unknown category '{category}' (expected one of {string.Join(", ", Categories)})", file, line);
            Validate(category, e, file, line);
            if (!expected.TryAdd(id, new Expected(line, category, e)))
                throw new EvaluationDataException($"question_id {id} appears twice", file, line);
        }

        var answers = AnswerFile.ByIdLastWins(AnswerFile.Read(answersPath), answersPath, issues);
        foreach (var a in answers.Values.OrderBy(a => a.Line))
            if (!expected.ContainsKey(a.QuestionId))
                issues.Add("unknown_id", $"question_id {a.QuestionId} is not in {AnnotationFile}", answersPath, a.Line, skipped: true);

        var right = Categories.ToDictionary(c => c, _ => 0);
        var samples = Categories.ToDictionary(c => c, _ => 0);
        int tp = 0, fp = 0, tn = 0, fn = 0;
        double precisionSum = 0, recallSum = 0;
        foreach (var (id, x) in expected.OrderBy(kv => kv.Value.Line))
        {
            samples[x.Category]++;
            string? text = answers.TryGetValue(id, out var a) ? a.Text : null;
            if (text is null) issues.Add("missing_answer", $"question_id {id} has no answer (counted as wrong)", file, x.Line, skipped: false);
            var e = x.Value;
            switch (x.Category)
            {
                case "count":
                    if (text is not null && ParseCount(text) == e.GetProperty("count").GetInt32()) right["count"]++;
                    break;
                case "color":
                    if (text is not null && ParseColor(text) == e.GetProperty("color").GetString()) right["color"]++;
                    break;
                case "yesno":
                    bool label = e.GetProperty("label").GetString() == "yes";
                    // A missing answer is a wrong one: read as the opposite of the label.
                    bool yes = text is null ? !label : PopeBenchmark.ParseYes(text);
                    if (yes && label) tp++;
                    else if (yes) fp++;
                    else if (!label) tn++;
                    else fn++;
                    if (yes == label) right["yesno"]++;
                    break;
                case "position":
                    if (text is not null && ParsePosition(text) == (e.GetProperty("row").GetString(), e.GetProperty("col").GetString())) right["position"]++;
                    break;
                case "caption":
                    var gold = e.GetProperty("objects").EnumerateArray()
                        .Select(o => (o.GetProperty("color").GetString()!, o.GetProperty("shape").GetString()!)).ToHashSet();
                    HashSet<(string, string)> said = text is null ? [] : CaptionPairs(text);
                    int hit = said.Count(gold.Contains);
                    precisionSum += said.Count == 0 ? 0 : (double)hit / said.Count;
                    recallSum += gold.Count == 0 ? 1 : (double)hit / gold.Count;
                    if (said.SetEquals(gold)) right["caption"]++;
                    break;
            }
        }

        var metrics = new JsonObject();
        var headlineParts = new List<double>();
        foreach (var c in Categories)
        {
            int n = samples[c];
            if (n == 0) continue;
            JsonObject m;
            if (c == "yesno")
            {
                double? precision = tp + fp == 0 ? null : (double)tp / (tp + fp);
                double? recall = tp + fn == 0 ? null : (double)tp / (tp + fn);
                double? f1 = precision is { } p && recall is { } r && p + r != 0 ? 2 * p * r / (p + r) : null;
                m = new JsonObject
                {
                    ["samples"] = n, ["TP"] = tp, ["FP"] = fp, ["TN"] = tn, ["FN"] = fn,
                    ["accuracy"] = Metric.Fraction(tp + tn, n),
                    ["precision"] = precision, ["recall"] = recall, ["f1"] = f1,
                    ["yes_ratio"] = Metric.Fraction(tp + fp, n),
                };
            }
            else if (c == "caption")
            {
                m = new JsonObject
                {
                    ["samples"] = n,
                    ["precision"] = precisionSum / n,
                    ["recall"] = recallSum / n,
                    ["exact_set"] = Metric.Fraction(right[c], n),
                };
            }
            else
            {
                m = new JsonObject { ["samples"] = n, ["correct"] = right[c], ["accuracy"] = Metric.Fraction(right[c], n) };
            }
            metrics[c] = m;
            headlineParts.Add((double)right[c] / n);
        }
        // The headline: the mean of the five per-category figures (accuracies, and the caption's exact-set rate), in percent.
        double? headline = headlineParts.Count > 0 ? headlineParts.Average() * 100 : null;
        return new EvaluationReport(Name, metrics, issues) { Headline = headline };
    }

    private static void Validate(string category, JsonElement e, string file, int line)
    {
        string Str(string name, string[]? allowed = null)
        {
            string v = JsonLines.String(e, name, file, line);
            if (allowed is not null && !allowed.Contains(v))
                throw new EvaluationDataException($"'{name}' is '{v}', not one of {string.Join(", ", allowed)}", file, line);
            return v;
        }
        switch (category)
        {
            case "count":
                var c = JsonLines.Property(e, "count", file, line);
                if (c.ValueKind != JsonValueKind.Number || !c.TryGetInt32(out int n) || n < 0)
                    throw new EvaluationDataException("'count' must be a non-negative integer", file, line);
                break;
            case "color":
                Str("color", Colors);
                break;
            case "yesno":
                Str("label", ["yes", "no"]);
                break;
            case "position":
                Str("row", ["top", "middle", "bottom"]);
                Str("col", ["left", "center", "right"]);
                break;
            case "caption":
                var objects = JsonLines.Property(e, "objects", file, line);
                if (objects.ValueKind != JsonValueKind.Array || objects.GetArrayLength() == 0)
                    throw new EvaluationDataException("'objects' must be a non-empty list", file, line);
                foreach (var o in objects.EnumerateArray())
                {
                    if (o.ValueKind != JsonValueKind.Object)
                        throw new EvaluationDataException("'objects' holds a value that is not an object", file, line);
                    foreach (var (name, allowed) in new[] { ("color", Colors), ("shape", Shapes) })
                    {
                        string v = JsonLines.String(o, name, file, line);
                        if (!allowed.Contains(v)) throw new EvaluationDataException($"An object's '{name}' is '{v}', not one of {string.Join(", ", allowed)}", file, line);
                    }
                }
                break;
        }
    }
}
