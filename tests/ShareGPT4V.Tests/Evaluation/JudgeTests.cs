using System.Text.Json;
using Microsoft.Extensions.AI;
using ShareGPT4V.Evaluation;
using ShareGPT4V.Evaluation.Judging;
using Xunit;

namespace ShareGPT4V.Tests.Evaluation;

/// <summary>A judge that answers from a script and records what it was asked.</summary>
internal sealed class ScriptedJudge(params string[] replies) : IChatClient
{
    private readonly Queue<string> _replies = new(replies);
    public List<(List<Microsoft.Extensions.AI.ChatMessage> Messages, ChatOptions? Options)> Requests { get; } = new();

    public Task<ChatResponse> GetResponseAsync(IEnumerable<Microsoft.Extensions.AI.ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        Requests.Add((messages.ToList(), options));
        return Task.FromResult(new ChatResponse(new Microsoft.Extensions.AI.ChatMessage(ChatRole.Assistant, _replies.Dequeue())) { ModelId = "scripted" });
    }

    public IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<Microsoft.Extensions.AI.ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default) =>
        throw new NotSupportedException();

    public object? GetService(Type serviceType, object? serviceKey = null) => null;
    public void Dispose() { }
}

/// <summary>LLaVA-Bench reviews and MM-Vet grades with a scripted judge: the requests, score parsing and summaries.</summary>
public sealed class JudgeTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("sgpt4v-judge-").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Write(string name, params string[] lines)
    {
        var p = Path.Combine(_dir, name);
        File.WriteAllLines(p, lines);
        return p;
    }

    [Theory]
    [InlineData("8 7\nAssistant 1 was better.", 8, 7)]
    [InlineData("8,7", 8, 7)]
    [InlineData("9.5 6", 9.5, 6)]
    [InlineData("8, 7", -1, -1)] // "8  7" splits into three pieces
    [InlineData("Scores: 8 7", -1, -1)]
    [InlineData("", -1, -1)]
    public void LlavaBenchScoreParsing(string review, double a, double b) => Assert.Equal((a, b), LlavaBenchJudge.ParseScore(review));

    [Fact]
    public async Task LlavaBenchReviewsAndSummary()
    {
        var questions = Write("questions.jsonl",
            """{"question_id": 0, "image": "001.jpg", "text": "What is this?", "category": "conv"}""",
            """{"question_id": 1, "image": "001.jpg", "text": "Describe it.", "category": "detail"}""",
            """{"question_id": 2, "image": "002.jpg", "text": "Why?", "category": "complex"}""");
        var context = Write("context.jsonl", """{"image": "001.jpg", "caption": "A cat."}""", """{"image": "002.jpg", "caption": ["A dog.", "On grass."]}""");
        var reference = Write("gpt4.jsonl", """{"question_id": 0, "text": "A cat.", "answer_id": "r0"}""", """{"question_id": 1, "text": "Cat on mat.", "answer_id": "r1"}""", """{"question_id": 2, "text": "Because.", "answer_id": "r2"}""");
        var answers = Write("model.jsonl", """{"question_id": 0, "prompt": "What is this?", "text": "cat", "answer_id": "m0"}""", """{"question_id": 1, "prompt": "Describe it.", "text": "a cat", "answer_id": "m1"}""", """{"question_id": 2, "prompt": "Why?", "text": "no idea", "answer_id": "m2"}""");
        var reviews = Path.Combine(_dir, "reviews.jsonl");
        var judge = new ScriptedJudge("8 6\nfine", "7,7\nok", "I cannot rate this.");
        Assert.Equal(3, await LlavaBenchJudge.ReviewAsync(judge, questions, context, reference, answers, reviews));

        var (messages, options) = judge.Requests[2];
        Assert.Equal(ChatRole.System, messages[0].Role);
        Assert.Equal("You are a helpful and precise assistant for checking the quality of the answer.", messages[0].Text);
        Assert.Equal("[Context]\nA dog.\nOn grass.\n\n[Question]\nWhy?\n\n[Assistant 1]\nBecause.\n\n[End of Assistant 1]\n\n" +
            "[Assistant 2]\nno idea\n\n[End of Assistant 2]\n\n[System]\n" + LlavaBenchJudge.RulePrompt + "\n\n", messages[1].Text);
        Assert.Equal(0.2f, options!.Temperature);
        Assert.Equal("gpt-4-0314", options.ModelId);

        var rows = File.ReadAllLines(reviews).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        Assert.Equal("llava_bench_complex", rows[2].GetProperty("category").GetString());
        Assert.Equal(new[] { -1.0, -1.0 }, rows[2].GetProperty("tuple").EnumerateArray().Select(x => x.GetDouble()));
        Assert.Equal("m1", rows[1].GetProperty("answer2_id").GetString());

        // Continuing finds nothing left to review.
        Assert.Equal(0, await LlavaBenchJudge.ReviewAsync(new ScriptedJudge(), questions, context, reference, answers, reviews));

        // summarize_gpt_review: means rounded to 3 decimals (4.667 and 4.0), relative round(4.0 / 4.667 * 100, 1).
        var report = Benchmarks.Get("llava-bench").Score(reviews, "");
        var all = report.Metrics["all"]!;
        Assert.Equal(85.7, all["relative"]!.GetValue<double>());
        Assert.Equal(46.7, all["reference"]!.GetValue<double>());
        Assert.Equal(40.0, all["model"]!.GetValue<double>());
        Assert.Equal(75.0, report.Metrics["llava_bench_conv"]!["relative"]!.GetValue<double>());
        Assert.Equal(85.7, report.Headline);
        Assert.Contains(report.Issues, i => i.Kind == "unparsed_review");
    }

    [Fact]
    public async Task MmVetGradesWithRetriesAndCapabilityScores()
    {
        var mmvet = Path.Combine(_dir, "mm-vet.json");
        File.WriteAllText(mmvet, """
            {"v1_0": {"question": "What is x?", "answer": "-1<AND>-5", "capability": ["math", "ocr"]},
             "v1_1": {"question": "Who?", "answer": "Tom<OR>Thomas", "capability": ["rec"]},
             "v1_2": {"question": "Why?", "answer": "rain", "capability": ["rec", "know"]}}
            """);
        var answers = Write("answers.jsonl", """{"question_id": 0, "text": "x = -1"}""", """{"question_id": 1, "text": "Tom"}""", """{"question_id": 2, "text": "sun"}""");
        var grades = Path.Combine(_dir, "grades.json");
        var judge = new ScriptedJudge("0.5", "1.0 because", "maybe", "1.5", "0.2");
        Assert.Equal(3, await MmVetJudge.GradeAsync(judge, mmvet, answers, grades));

        Assert.Equal(MmVetJudge.GraderPrompt + "\nWhat is x? | -1 <AND> -5 | x = -1 | ", judge.Requests[0].Messages.Single().Text);
        Assert.Equal(3, judge.Requests[0].Options!.MaxOutputTokens);
        Assert.Equal(0f, judge.Requests[0].Options!.Temperature);
        // v1_2: "maybe" then "1.5" (out of range) are asked again with the retry suffix, the temperature rising by 0.5.
        Assert.EndsWith(MmVetJudge.RetrySuffix, judge.Requests[3].Messages.Single().Text);
        Assert.Equal(new float?[] { 0f, 0f, 0f, 0f, 0.5f }, judge.Requests.Select(r => r.Options!.Temperature));

        var report = Benchmarks.Get("mm-vet").Score(grades, mmvet);
        // total = (0.5 + 1.0 + 0.2) / 3 · 100 = 56.7; rec = (1.0 + 0.2) / 2 · 100 = 60.0
        Assert.Equal(56.7, report.Metrics["total"]!.GetValue<double>());
        Assert.Equal(60.0, report.Metrics["per_capability"]!["rec"]!.GetValue<double>());
        Assert.Equal(50.0, report.Metrics["per_capability"]!["math"]!.GetValue<double>());
        Assert.Equal(56.7, report.Headline);
    }
}
