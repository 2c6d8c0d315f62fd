using System.Text.Json;
using ShareGPT4V.Evaluation;
using ShareGPT4V.Evaluation.Scorers;
using ShareGPT4V.Preprocessing;
using Xunit;

namespace ShareGPT4V.Tests.Shapes;

/// <summary>The shapes scorer on hand-written annotations and answers, each figure worked out by hand.</summary>
public sealed class ShapesBenchmarkTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "shapes-score-" + Guid.NewGuid().ToString("N"));

    public ShapesBenchmarkTests() => Directory.CreateDirectory(Path.Combine(_dir, "eval"));

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    private const string Objects = """[{"color":"red","shape":"circle","size":"large","row":"top","col":"left"},{"color":"blue","shape":"square","size":"small","row":"middle","col":"center"}]""";

    private static readonly string[] Annotations =
    [
        $$"""{"question_id":"a_count","category":"count","answer":"2","count":2,"objects":{{Objects}}}""",
        $$"""{"question_id":"b_count","category":"count","answer":"3","count":3,"objects":{{Objects}}}""",
        $$"""{"question_id":"c_count","category":"count","answer":"1","count":1,"objects":{{Objects}}}""",
        $$"""{"question_id":"d_count","category":"count","answer":"4","count":4,"objects":{{Objects}}}""",
        """{"question_id":"a_color","category":"color","answer":"Red","color":"red","shape":"circle"}""",
        """{"question_id":"b_color","category":"color","answer":"Purple","color":"purple","shape":"star"}""",
        """{"question_id":"c_color","category":"color","answer":"Orange","color":"orange","shape":"star"}""",
        """{"question_id":"a_yes","category":"yesno","answer":"Yes","label":"yes","color":"red","shape":"circle"}""",
        """{"question_id":"a_no","category":"yesno","answer":"No","label":"no","color":"red","shape":"star"}""",
        """{"question_id":"b_yes","category":"yesno","answer":"Yes","label":"yes","color":"blue","shape":"square"}""",
        """{"question_id":"b_no","category":"yesno","answer":"No","label":"no","color":"green","shape":"square"}""",
        """{"question_id":"a_position","category":"position","answer":"In the top left.","color":"red","shape":"circle","row":"top","col":"left"}""",
        """{"question_id":"b_position","category":"position","answer":"In the center.","color":"blue","shape":"square","row":"middle","col":"center"}""",
        """{"question_id":"c_position","category":"position","answer":"In the top center.","color":"blue","shape":"star","row":"top","col":"center"}""",
        """{"question_id":"d_position","category":"position","answer":"In the middle right.","color":"red","shape":"star","row":"middle","col":"right"}""",
        $$"""{"question_id":"a_caption","category":"caption","answer":"...","objects":{{Objects}}}""",
        $$"""{"question_id":"b_caption","category":"caption","answer":"...","objects":{{Objects}}}""",
        """{"question_id":"c_caption","category":"caption","answer":"...","objects":[{"color":"green","shape":"star","size":"small","row":"top","col":"left"}]}""",
    ];

    private string Write(string name, IEnumerable<string> lines)
    {
        string path = Path.Combine(_dir, name);
        File.WriteAllLines(path, lines);
        return path;
    }

    private static string Answer(string id, string text) => JsonSerializer.Serialize(new { question_id = id, text });

    [Fact]
    public void EachFigureIsScoredAsWorkedOutByHand()
    {
        Write("eval/annotations.jsonl", Annotations);
        var answers = Write("answers.jsonl",
        [
            Answer("a_count", "2"),                                  // right
            Answer("b_count", "There are three shapes."),            // right (number word)
            Answer("c_count", "A single shape."),                    // right ("single")
            Answer("d_count", "5"),                                  // wrong
            Answer("a_color", "Red"),                                // right
            Answer("b_color", "The star is purple."),                // right
            Answer("c_color", "It is red, not orange."),             // wrong: the first colour word counts
            Answer("a_yes", "Yes"),                                  // TP
            Answer("a_no", "Yes, there is."),                        // FP
            Answer("b_yes", "No"),                                   // FN
            Answer("b_no", "No, there is not."),                     // TN
            Answer("a_position", "It is in the upper left corner."), // right
            Answer("b_position", "In the centre."),                  // right
            Answer("c_position", "In the center."),                  // wrong: middle row
            // d_position unanswered: wrong, reported
            Answer("a_caption", "The image shows two shapes on a light blue background: a large red circle in the top left and a small blue square in the center."),
            Answer("b_caption", "A red circle, a green triangle and blue squares."),
            Answer("c_caption", "Nothing to see."),
            Answer("zzz", "an answer to no question"),
        ]);
        var report = new ShapesBenchmark().Score(answers, Path.Combine(_dir, "eval"));
        var m = report.Metrics;
        double V(string c, string k) => m[c]![k]!.GetValue<double>();
        Assert.Equal(3 / 4.0, V("count", "accuracy"));
        Assert.Equal(2 / 3.0, V("color", "accuracy"));
        Assert.Equal((1, 1, 1, 1), (m["yesno"]!["TP"]!.GetValue<int>(), m["yesno"]!["FP"]!.GetValue<int>(), m["yesno"]!["TN"]!.GetValue<int>(), m["yesno"]!["FN"]!.GetValue<int>()));
        Assert.Equal(0.5, V("yesno", "accuracy"));
        Assert.Equal(0.5, V("yesno", "precision"));
        Assert.Equal(0.5, V("yesno", "recall"));
        Assert.Equal(0.5, V("yesno", "f1"));
        Assert.Equal(0.5, V("yesno", "yes_ratio"));
        Assert.Equal(2 / 4.0, V("position", "accuracy"));
        // Captions: a exact (P 1, R 1); b says {red circle, green triangle, blue square}: P 2/3, R 1; c says nothing: P 0, R 0.
        Assert.Equal((1 + 2 / 3.0 + 0) / 3, V("caption", "precision"), 12);
        Assert.Equal((1 + 1 + 0) / 3.0, V("caption", "recall"), 12);
        Assert.Equal(1 / 3.0, V("caption", "exact_set"), 12);
        Assert.Equal((3 / 4.0 + 2 / 3.0 + 0.5 + 0.5 + 1 / 3.0) / 5 * 100, report.Headline!.Value, 9);
        Assert.Contains(report.Issues, i => i.Kind == "missing_answer" && i.Message.Contains("d_position"));
        Assert.Contains(report.Issues, i => i.Kind == "unknown_id" && i.Skipped && i.Message.Contains("zzz"));
        Assert.All(new[] { "count", "color", "yesno", "position" }, c => Assert.InRange(V(c, "accuracy"), 0, 1));
    }

    [Theory]
    [InlineData("In the top left.", "top", "left")]
    [InlineData("top left", "top", "left")]
    [InlineData("In the center.", "middle", "center")]
    [InlineData("In the centre of the image", "middle", "center")]
    [InlineData("In the top center.", "top", "center")]
    [InlineData("At the middle left.", "middle", "left")]
    [InlineData("middle right", "middle", "right")]
    [InlineData("Bottom center", "bottom", "center")]
    [InlineData("lower right", "bottom", "right")]
    [InlineData("On the left", null, "left")]
    [InlineData("Yes", null, null)]
    public void PositionsAreReadByRowAndColumn(string answer, string? row, string? col) =>
        Assert.Equal((row, col), ShapesBenchmark.ParsePosition(answer));

    [Theory]
    [InlineData("3", 3)]
    [InlineData("Four.", 4)]
    [InlineData("There are 2 shapes.", 2)]
    [InlineData("one", 1)]
    [InlineData("many", null)]
    public void CountsAreTheFirstNumber(string answer, int? count) => Assert.Equal(count, ShapesBenchmark.ParseCount(answer));

    [Theory]
    [InlineData("a large red circle in the top left and a small blue square", "red circle|blue square")]
    [InlineData("red and blue circles", "blue circle|red circle")]
    [InlineData("On a light blue background there is a single green star.", "green star")]
    [InlineData("On a light blue background: a large star.", "")]
    [InlineData("a yellow triangle, a yellow triangle", "yellow triangle")]
    public void CaptionPairsAreColourThenShape(string caption, string expected)
    {
        var pairs = ShapesBenchmark.CaptionPairs(caption).Select(p => $"{p.Color} {p.Shape}").OrderBy(s => s, StringComparer.Ordinal);
        Assert.Equal(expected.Length == 0 ? [] : expected.Split('|').OrderBy(s => s, StringComparer.Ordinal), pairs);
    }

    [Fact]
    public void MalformedFilesNameTheFileAndLine()
    {
        var answers = Write("answers.jsonl", [Answer("a_count", "2")]);
        var bad = new (string Line, string Fragment)[]
        {
            ("{not json", "Malformed JSON"),
            ("""{"question_id":"x","category":"weight","answer":"1"}""", "Unknown category"),
            ("""{"question_id":"x","category":"count","answer":"1"}""", "'count'"),
            ("""{"question_id":"x","category":"count","answer":"1","count":-1}""", "non-negative"),
            ("""{"question_id":"x","category":"position","answer":"1","row":"top","col":"up"}""", "'col'"),
            ("""{"question_id":"x","category":"caption","answer":"1","objects":[{"color":"pink","shape":"star"}]}""", "'color'"),
            ("""{"question_id":"x","category":"yesno","answer":"1"}""", "'label'"),
            ("""{"category":"count","count":1}""", "question_id"),
        };
        foreach (var (line, fragment) in bad)
        {
            var annotations = Write("eval/annotations.jsonl", [Annotations[0], line]);
            var e = Assert.Throws<EvaluationDataException>(() => new ShapesBenchmark().Score(answers, Path.Combine(_dir, "eval")));
            Assert.Equal(annotations, e.FilePath);
            Assert.Equal(2, e.Line);
            Assert.Contains(fragment, e.Message);
        }

        Write("eval/annotations.jsonl", [Annotations[0], Annotations[0]]);
        Assert.Contains("twice", Assert.Throws<EvaluationDataException>(() => new ShapesBenchmark().Score(answers, Path.Combine(_dir, "eval"))).Message);

        Write("eval/annotations.jsonl", [Annotations[0]]);
        var badAnswers = Write("bad-answers.jsonl", [Answer("a_count", "2"), """{"question_id":"a_count"}"""]);
        var ae = Assert.Throws<EvaluationDataException>(() => new ShapesBenchmark().Score(badAnswers, Path.Combine(_dir, "eval")));
        Assert.Equal((badAnswers, 2), (ae.FilePath, ae.Line));

        var missing = Assert.Throws<EvaluationDataException>(() => new ShapesBenchmark().Score(answers, Path.Combine(_dir, "nowhere")));
        Assert.Contains("nowhere", missing.Message);
    }

    [Fact]
    public void ItIsRegisteredWithTheLoaderSettings()
    {
        var b = Benchmarks.Get("shapes");
        Assert.IsType<ShapesBenchmark>(b);
        Assert.Equal(new BenchmarkRunSettings(PromptStyle.Loader, ImageAspectMode.Pad, 128), b.RunSettings);
        Assert.True(b.CanScoreLocally);
    }
}
