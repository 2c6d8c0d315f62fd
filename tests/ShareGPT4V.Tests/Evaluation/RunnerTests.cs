using System.Text.Json;
using System.Text.Json.Nodes;
using ShareGPT4V.Evaluation;
using ShareGPT4V.Generation;
using ShareGPT4V.Tests.Oracle;
using ShareGPT4V.Conversation;
using Xunit;

namespace ShareGPT4V.Tests.Evaluation;

public sealed class EvalPipelineFixture : IDisposable
{
    public MultimodalPipeline Pipeline { get; } = MultimodalPipeline.Load(new PipelineOptions
    {
        ModelPath = Fixtures.Path("oracle/hf_llama2vocab"),
        ImageAspect = ShareGPT4V.Preprocessing.ImageAspectMode.Resize, // the oracle's generation goldens use plain resize + crop
    });
    public void Dispose() => Pipeline.Dispose();
}

/// <summary>The runner on the hf_llama2vocab oracle checkpoint: golden answers, answer-file format, shards, resume, missing images.</summary>
public sealed class RunnerTests : IClassFixture<EvalPipelineFixture>, IDisposable
{
    private readonly MultimodalPipeline _p;
    private readonly GoldenCase _case = GoldenCase.Get("hf_llama2vocab");
    private readonly string _dir = Directory.CreateTempSubdirectory("sgpt4v-eval-").FullName;
    private static readonly GenerationOptions Short = new() { MaxNewTokens = 6 };

    public RunnerTests(EvalPipelineFixture f) => _p = f.Pipeline;
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Questions(params (object Id, string Image, string Text)[] qs)
    {
        var path = Path.Combine(_dir, $"q{Guid.NewGuid():N}.jsonl");
        File.WriteAllLines(path, qs.Select(q => new JsonObject { ["question_id"] = JsonValue.Create(q.Id), ["image"] = q.Image, ["text"] = q.Text }.ToJsonString()));
        return path;
    }

    private IReadOnlyList<EvalQuestion> Load(string benchmark, string path) => QuestionFile.Read(path, Benchmarks.Get(benchmark).RunSettings, _case.Dir);

    // Answer lines without the random answer_id.
    private static List<string> Stable(string path) => File.ReadAllLines(path).Select(l =>
    {
        var o = JsonNode.Parse(l)!.AsObject();
        o.Remove("answer_id");
        return o.ToJsonString();
    }).ToList();

    private (object, string, string)[] FivePopeQuestions() => Enumerable.Range(1, 5)
        .Select(i => ((object)i, i % 2 == 0 ? "image2.png" : "image1.png", $"Is there a {(i < 3 ? "dog" : "cat")} number {i} in the image?\n{PromptBuilder.ShortAnswer}")).ToArray();

    [Fact]
    public async Task BatchedAnswersEqualTheTransformersGoldens()
    {
        // LLaVA-Bench style (model_vqa: no suffix, resize + crop) with llava_v1 = the oracle's prompts "main" and "short_image".
        var path = Questions((0, "image1.png", "Describe this image in detail."), (1, "image2.png", "What is this?"));
        var answers = Path.Combine(_dir, "a.jsonl");
        var result = await EvaluationRunner.RunAsync(_p, Benchmarks.Get("llava-bench"), Load("llava-bench", path), answers,
            new EvalRunOptions { Template = "llava_v1", ModelId = "tiny", BatchSize = 2, Generation = new GenerationOptions { MaxNewTokens = 12 } });
        Assert.Equal(2, result.Answered);
        int[] Ids(JsonElement e) => e.EnumerateArray().Select(x => x.GetInt32()).ToArray();
        var expected = new[]
        {
            _p.Tokenizer.Decode(Ids(_case.Prompt("main").GetProperty("generated_ids"))).Trim(),
            _p.Tokenizer.Decode(Ids(_case.Prompt("batch_image").GetProperty("generated_ids")[0])).Trim(), // row 0 = short_image
        };
        var lines = File.ReadAllLines(answers).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        Assert.Equal(expected, lines.Select(l => l.GetProperty("text").GetString()));
        // LLaVA's answer-file format: keys in order, id type kept, Python's separators.
        Assert.Equal(new[] { "question_id", "prompt", "text", "answer_id", "model_id", "metadata" }, lines[0].EnumerateObject().Select(p => p.Name));
        Assert.Equal(JsonValueKind.Number, lines[0].GetProperty("question_id").ValueKind);
        Assert.Equal("Describe this image in detail.", lines[0].GetProperty("prompt").GetString());
        Assert.Equal(22, lines[0].GetProperty("answer_id").GetString()!.Length);
        Assert.StartsWith("{\"question_id\": 0, \"prompt\": ", File.ReadAllLines(answers)[0]);
        Assert.EndsWith("\"model_id\": \"tiny\", \"metadata\": {}}", File.ReadAllLines(answers)[0]);
    }

    [Fact]
    public async Task ShardsMergedEqualTheUnshardedRun()
    {
        var path = Questions(FivePopeQuestions());
        var qs = Load("pope", path);
        var pope = Benchmarks.Get("pope");
        var whole = Path.Combine(_dir, "whole.jsonl");
        await EvaluationRunner.RunAsync(_p, pope, qs, whole, new EvalRunOptions { BatchSize = 3, Generation = Short });
        var parts = new List<string>();
        for (int i = 1; i >= 0; i--) // in reverse: merge puts them back in question order
        {
            var part = Path.Combine(_dir, $"part{i}.jsonl");
            var r = await EvaluationRunner.RunAsync(_p, pope, qs, part, new EvalRunOptions { Shard = new Shard(i, 2), BatchSize = 2, Generation = Short });
            Assert.Equal(i == 0 ? 3 : 2, r.Questions);
            parts.Insert(0, part);
        }
        var merged = Path.Combine(_dir, "merged.jsonl");
        var m = AnswerMerge.Merge(parts.AsEnumerable().Reverse().ToList(), merged, qs);
        Assert.Equal((5, 0, 0), (m.Written, m.Duplicates, m.Missing));
        Assert.Equal(Stable(whole), Stable(merged));
    }

    [Fact]
    public async Task AnInterruptedRunContinuesWhereItStopped()
    {
        var path = Questions(FivePopeQuestions());
        var qs = Load("pope", path);
        var pope = Benchmarks.Get("pope");
        var whole = Path.Combine(_dir, "whole.jsonl");
        await EvaluationRunner.RunAsync(_p, pope, qs, whole, new EvalRunOptions { BatchSize = 2, Generation = Short });
        // A crash mid-write: two full lines and half of the third.
        var lines = File.ReadAllLines(whole);
        var cut = Path.Combine(_dir, "cut.jsonl");
        File.WriteAllText(cut, lines[0] + "\n" + lines[1] + "\n" + lines[2][..(lines[2].Length / 2)]);
        var r = await EvaluationRunner.RunAsync(_p, pope, qs, cut, new EvalRunOptions { BatchSize = 2, Generation = Short });
        Assert.Equal((5, 2, 3), (r.Questions, r.AlreadyAnswered, r.Answered));
        Assert.Equal(Stable(whole), Stable(cut));
        // Nothing left to do: a third run answers nothing.
        var again = await EvaluationRunner.RunAsync(_p, pope, qs, cut, new EvalRunOptions { Generation = Short });
        Assert.Equal((5, 0), (again.AlreadyAnswered, again.Answered));
    }

    [Fact]
    public async Task AMissingImageIsRefusedWithItsLineOrSkippedAndCounted()
    {
        var path = Questions((1, "image1.png", "Q1?"), (2, "nope.png", "Q2?"));
        var qs = Load("pope", path);
        var answers = Path.Combine(_dir, "a.jsonl");
        var e = await Assert.ThrowsAsync<EvaluationDataException>(() =>
            EvaluationRunner.RunAsync(_p, Benchmarks.Get("pope"), qs, answers, new EvalRunOptions { Generation = Short }));
        Assert.Contains("nope.png", e.Message);
        Assert.Contains($"{path}:2", e.Message);
        Assert.False(File.Exists(answers) && new FileInfo(answers).Length > 0);
        var r = await EvaluationRunner.RunAsync(_p, Benchmarks.Get("pope"), qs, answers, new EvalRunOptions { Generation = Short, SkipMissingImages = true });
        Assert.Equal((1, 1), (r.Answered, r.SkippedMissingImages));
        Assert.Single(File.ReadAllLines(answers));
    }

    [Fact]
    public async Task ScienceQaBatchesImageAndTextOnlyQuestionsAsTheyRunAlone()
    {
        var file = Path.Combine(_dir, "sqa.json");
        File.WriteAllText(file, """
            [{"id": "1", "image": "image1.png", "conversations": [{"from": "human", "value": "Which is it?\nA. cat\nB. dog\n<image>"}]},
             {"id": "2", "conversations": [{"from": "human", "value": "Which word?\nA. hot\nB. cold"}]}]
            """);
        var b = Benchmarks.Get("sqa");
        var qs = QuestionFile.Read(file, b.RunSettings, _case.Dir);
        var answers = Path.Combine(_dir, "sqa.jsonl");
        await EvaluationRunner.RunAsync(_p, b, qs, answers, new EvalRunOptions { Generation = Short, BatchSize = 2 });
        var texts = File.ReadAllLines(answers).Select(l => JsonDocument.Parse(l).RootElement.GetProperty("text").GetString()).ToList();
        var template = ConversationTemplates.Get("vicuna_v1");
        var alone0 = await _p.GenerateAsync(EvaluationRunner.RenderPrompt(qs[0], template), new[] { ImageInput.FromFile(qs[0].ImagePath!) }, Short);
        var alone1 = await _p.GenerateAsync(EvaluationRunner.RenderPrompt(qs[1], template), null, Short);
        Assert.Equal(new[] { alone0.Text.Trim(), alone1.Text.Trim() }, texts);
        Assert.StartsWith("<image>\n", JsonDocument.Parse(File.ReadAllLines(answers)[0]).RootElement.GetProperty("prompt").GetString());
    }

    [Fact]
    public async Task ACorruptImageIsNamedByItsQuestionLine()
    {
        var bad = Path.Combine(_dir, "bad.png");
        File.WriteAllText(bad, "not an image");
        var path = Questions((1, Path.Combine(_case.Dir, "image1.png"), "Q1?"), (2, bad, "Q2?"));
        var qs = QuestionFile.Read(path, Benchmarks.Get("pope").RunSettings, null);
        var e = await Assert.ThrowsAsync<EvaluationDataException>(() =>
            EvaluationRunner.RunAsync(_p, Benchmarks.Get("pope"), qs, Path.Combine(_dir, "a.jsonl"), new EvalRunOptions { Generation = Short, BatchSize = 2 }));
        Assert.Contains($"{path}:2", e.Message);
        Assert.DoesNotContain($"{path}:1", e.Message);
    }

    [Fact]
    public async Task MmBenchRowsRunFromTheTsvWithInlineImages()
    {
        var b = Benchmarks.Get("mmbench");
        var qs = QuestionFile.Read(Fixtures.Path("eval/prompts/mmbench.tsv"), b.RunSettings);
        var answers = Path.Combine(_dir, "mmb.jsonl");
        await EvaluationRunner.RunAsync(_p, b, qs, answers, new EvalRunOptions { Generation = new GenerationOptions { MaxNewTokens = 2 }, BatchSize = 4 });
        var first = JsonDocument.Parse(File.ReadAllLines(answers)[0]).RootElement;
        Assert.Equal(new[] { "question_id", "round_id", "prompt", "text", "options", "option_char", "answer_id", "model_id", "metadata" },
            first.EnumerateObject().Select(p => p.Name));
        Assert.Equal(101, first.GetProperty("question_id").GetInt32());
    }
}

/// <summary>The paper's table from score reports.</summary>
public sealed class SummaryTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("sgpt4v-summary-").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void ReportsRoundTripAndFillThePapersColumnsInOrder()
    {
        var paths = new List<string>();
        foreach (var b in new[] { "pope", "mme", "sqa", "mmbench" })
        {
            var e = ScorerFixtureTests.Expected(b);
            var report = Benchmarks.Get(b).Score(Path.Combine(ScorerFixtureTests.Dir(b), e.GetProperty("answers").GetString()!),
                Path.Combine(ScorerFixtureTests.Dir(b), e.GetProperty("annotations").GetString()!));
            var path = Path.Combine(_dir, b + ".json");
            EvaluationSummary.WriteReport(report, path);
            paths.Add(path);
        }
        var summary = EvaluationSummary.FromReports(paths.Select(EvaluationSummary.ReadReport));
        Assert.Equal(new[] { "MME-P", "MME-C", "MMB", "SQA-I", "POPE" }, EvaluationSummary.Columns.Where(summary.Values.ContainsKey));
        Assert.Equal(1029.1666666666665, summary.Values["MME-P"]!.Value, 9);
        Assert.Equal(42.5, summary.Values["SQA-I"]!.Value, 9);
        Assert.Equal(27.77777777777778, summary.Values["MMB"]!.Value, 9);
        var md = summary.ToMarkdown().Split('\n');
        Assert.Equal("| MME-P | MME-C | MMB | SQA-I | POPE |", md[0]);
        Assert.Equal("| 1029.2 | 345.8 | 27.8 | 42.5 | 66.7 |", md[2]);
        Assert.Equal(new[] { "MME-P", "MME-C", "MMB", "SQA-I", "POPE" }, JsonDocument.Parse(summary.ToJson()).RootElement.EnumerateObject().Select(p => p.Name));
    }
}
