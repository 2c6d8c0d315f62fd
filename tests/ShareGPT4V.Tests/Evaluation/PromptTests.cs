using System.Text.Json;
using ShareGPT4V.Conversation;
using ShareGPT4V.Evaluation;
using ShareGPT4V.Tokenization;
using Xunit;

namespace ShareGPT4V.Tests.Evaluation;

/// <summary>
/// Prompt construction against goldens written with the reference's prompt code (Fixtures/eval/prompts/README.md):
/// the answer file's prompt, the full conversation text, and input ids.
/// </summary>
public class PromptTests
{
    private static string Dir => Fixtures.Path("eval/prompts");

    private static List<JsonElement> Golden(string style) =>
        JsonDocument.Parse(File.ReadAllText(Path.Combine(Dir, "expected_prompts.json"))).RootElement.EnumerateArray()
            .Where(e => e.GetProperty("style").GetString() == style).ToList();

    public static TheoryData<string, string, string> Styles => new()
    {
        { "loader", "pope", "loader.jsonl" },
        { "science", "sqa", "science.json" },
        { "mmbench-en", "mmbench", "mmbench.tsv" },
        { "mmbench-cn", "mmbench-cn", "mmbench.tsv" },
        { "qbench-en", "qbench", "qbench.json" },
        { "qbench-zh", "qbench-zh", "qbench.json" },
    };

    [Theory]
    [MemberData(nameof(Styles))]
    public void PromptsEqualTheReferenceScripts(string style, string benchmark, string file)
    {
        var b = Benchmarks.Get(benchmark);
        var questions = QuestionFile.Read(Path.Combine(Dir, file), b.RunSettings, "images");
        var golden = Golden(style);
        Assert.Equal(golden.Count, questions.Count);
        var template = ConversationTemplates.Get(EvaluationRunner.DefaultTemplate(b.RunSettings));
        for (int i = 0; i < golden.Count; i++)
        {
            var g = golden[i];
            Assert.Equal(QuestionKey.FromJson(g.GetProperty("question_id")), questions[i].Id);
            Assert.Equal(g.GetProperty("prompt").GetString(), questions[i].Prompt);
            Assert.Equal(g.GetProperty("conversation").GetString(), EvaluationRunner.RenderPrompt(questions[i], template));
            if (g.TryGetProperty("options", out var options))
            {
                Assert.Equal(options.EnumerateArray().Select(o => o.GetString()), questions[i].Extra!["options"]!.AsArray().Select(o => o!.GetValue<string>()));
                Assert.Equal(g.GetProperty("option_char").EnumerateArray().Select(o => o.GetString()), questions[i].Extra!["option_char"]!.AsArray().Select(o => o!.GetValue<string>()));
            }
        }
    }

    [Fact]
    public void SqaImagesOnlyWhereTheProblemHasOne()
    {
        var qs = QuestionFile.Read(Path.Combine(Dir, "science.json"), Benchmarks.Get("sqa").RunSettings, "images");
        Assert.Equal(Path.Combine("images", "4/image.png"), qs[0].ImagePath);
        Assert.Null(qs[1].ImagePath);
        Assert.False(qs[1].HasImage);
    }

    [Fact]
    public void InputIdsOfTheGoldenPromptMatchTransformers()
    {
        // An open-ended question run with llava_v1 is exactly the oracle's "main" prompt: text and ids must agree.
        var main = Tests.Oracle.GoldenCase.Get("hf_llama2vocab").Prompt("main");
        var q = new EvalQuestion(QuestionKey.Number(0), "Describe this image in detail.", PromptBuilder.ImageLead + "Describe this image in detail.", "image1.png", null, "test");
        var text = EvaluationRunner.RenderPrompt(q, ConversationTemplates.Get("llava_v1"));
        Assert.Equal(main.GetProperty("text").GetString(), text);
        var tokenizer = LlavaTokenizer.Load(Fixtures.Path("oracle/hf_llama2vocab"));
        Assert.Equal(main.GetProperty("input_ids").EnumerateArray().Select(x => x.GetInt32()), tokenizer.EncodePrompt(text, 32000));
    }

    [Theory]
    [InlineData("qbench-en")]
    [InlineData("loader")]
    [InlineData("mmbench-en")]
    public void InputIdsFrameTheQuestionAsTheReference(string style)
    {
        // Ids of the fixed parts come from transformers' tokenization of the oracle prompts: BOS first, one image
        // token preceded by "▁" and followed by "▁\n" (29871, 13), and " ASSISTANT:" at the end.
        var tokenizer = LlavaTokenizer.Load(Fixtures.Path("oracle/hf_llama2vocab"));
        var main = Tests.Oracle.GoldenCase.Get("hf_llama2vocab").Prompt("main").GetProperty("input_ids").EnumerateArray().Select(x => x.GetInt32()).ToArray();
        foreach (var g in Golden(style))
        {
            var ids = tokenizer.EncodePrompt(g.GetProperty("conversation").GetString()!, 32000);
            Assert.Equal(1, ids[0]);
            Assert.Equal(main[^5..], ids[^5..]);
            int image = Array.IndexOf(ids, 32000);
            Assert.True(image > 0 && ids.Count(x => x == 32000) == 1);
            Assert.Equal(new[] { 29871, 32000, 29871, 13 }, ids[(image - 1)..(image + 3)]);
            if (style == "qbench-en") Assert.Equal(main[..38], ids[..38]); // llava_v1: same system prompt as the oracle's
        }
    }
}
