using System.Text.Json;
using ShareGPT4V.Evaluation;
using Xunit;

namespace ShareGPT4V.Tests.Evaluation;

/// <summary>Broken inputs: a clear error naming file and line, or a counted skip shown in the report.</summary>
public sealed class BadInputTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("sgpt4v-evalbad-").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string CopyFixture(string benchmark)
    {
        var target = Path.Combine(_dir, benchmark);
        foreach (var f in Directory.GetFiles(ScorerFixtureTests.Dir(benchmark), "*", SearchOption.AllDirectories))
        {
            var rel = Path.GetRelativePath(ScorerFixtureTests.Dir(benchmark), f);
            Directory.CreateDirectory(Path.GetDirectoryName(Path.Combine(target, rel))!);
            File.Copy(f, Path.Combine(target, rel));
        }
        return target;
    }

    [Fact]
    public void AMalformedAnnotationLineIsAnErrorNamingFileAndLine()
    {
        var dir = CopyFixture("pope");
        var labels = Path.Combine(dir, "annotations/coco/coco_pope_random.json");
        var lines = File.ReadAllLines(labels);
        lines[2] = "{\"question_id\": 3, \"label\": ";
        File.WriteAllLines(labels, lines);
        var r = EvalCli.Run("eval", "score", "--benchmark", "pope", "--answers", Path.Combine(dir, "answers.jsonl"), "--annotations", Path.Combine(dir, "annotations"), "--json");
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("coco_pope_random.json", r.Err);
        Assert.Contains("line 3", r.Err);
        Assert.Equal("", r.Out);
    }

    [Fact]
    public void AMalformedAnswerLineIsAnErrorNamingFileAndLine()
    {
        var dir = CopyFixture("gqa");
        var answers = Path.Combine(dir, "answers.jsonl");
        var lines = File.ReadAllLines(answers).ToList();
        lines.Insert(4, "{\"question_id\": \"1\", \"text\": 5}");
        File.WriteAllLines(answers, lines);
        var e = Assert.Throws<EvaluationDataException>(() => Benchmarks.Get("gqa").Score(answers, Path.Combine(dir, "testdev_balanced_questions.json")));
        Assert.Equal(5, e.Line);
        Assert.Contains("answers.jsonl", e.Message);
    }

    [Fact]
    public void UnknownIdsAreSkippedAndCountedLeavingTheScoreAsOfficial()
    {
        var dir = CopyFixture("pope");
        var answers = Path.Combine(dir, "answers.jsonl");
        File.AppendAllText(answers, "{\"question_id\": 987654, \"prompt\": \"Is there a cat?\", \"text\": \"Yes\", \"answer_id\": \"x\", \"model_id\": \"m\", \"metadata\": {}}\n");
        var r = EvalCli.Run("eval", "score", "--benchmark", "pope", "--answers", answers, "--annotations", Path.Combine(dir, "annotations"), "--json");
        Assert.True(r.ExitCode == 0, r.Err);
        var o = JsonDocument.Parse(r.Out).RootElement;
        ScorerFixtureTests.AssertMetrics(ScorerFixtureTests.Expected("pope").GetProperty("metrics"), o);
        Assert.Equal(1, o.GetProperty("skipped").GetInt32());
        var issue = o.GetProperty("issues")[0];
        Assert.Equal("unknown_id", issue.GetProperty("kind").GetString());
        Assert.Equal(File.ReadAllLines(answers).Length, issue.GetProperty("line").GetInt32());
        Assert.Contains("987654", r.Err);
    }

    [Fact]
    public void ADuplicateAnswerKeepsTheLastAsTheOfficialDictAndIsReported()
    {
        var dir = CopyFixture("sqa");
        var answers = Path.Combine(dir, "answers.jsonl");
        var first = File.ReadAllLines(answers)[0];
        File.AppendAllText(answers, first + "\n");
        var report = Benchmarks.Get("sqa").Score(answers, Path.Combine(dir, "annotations"));
        ScorerFixtureTests.AssertMetrics(ScorerFixtureTests.Expected("sqa").GetProperty("metrics"), JsonDocument.Parse(report.ToJson()).RootElement);
        Assert.Contains(report.Issues, i => i.Kind == "duplicate_id" && i.Skipped);
    }

    [Fact]
    public void AMissingMmeSubtaskIsAnErrorNotAPartialSum()
    {
        var dir = CopyFixture("mme");
        var answers = Path.Combine(dir, "answers.jsonl");
        File.WriteAllLines(answers, File.ReadAllLines(answers).Where(l => !l.Contains("\"code_reasoning/")));
        var r = EvalCli.Run("eval", "score", "--benchmark", "mme", "--answers", answers, "--annotations", Path.Combine(dir, "MME_Benchmark_release_version"), "--json");
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("code_reasoning", r.Err);
    }

    [Fact]
    public void UnknownBenchmarkOrMissingOptionIsACommandLineError()
    {
        Assert.Equal(2, EvalCli.Run("eval", "score", "--benchmark", "nope", "--answers", "a", "--annotations", "b").ExitCode);
        Assert.Equal(2, EvalCli.Run("eval", "score", "--benchmark", "pope", "--answers", "a").ExitCode);
        Assert.Equal(1, EvalCli.Run("eval", "score", "--benchmark", "pope", "--answers", Path.Combine(_dir, "none.jsonl"), "--annotations", _dir).ExitCode);
    }
}
