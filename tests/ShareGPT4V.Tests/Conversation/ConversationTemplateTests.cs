using System.Text.Json;
using ShareGPT4V.Conversation;
using ShareGPT4V.Tests.Tokenization;
using Xunit;
using Conv = ShareGPT4V.Conversation.ConversationBuilder;

namespace ShareGPT4V.Tests.Conversation;

public class ConversationTemplateTests
{
    private const string HumanSystem =
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions.";
    private const string UserSystem =
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.";

    [Theory]
    [InlineData("main", "Describe this image in detail.", 1)]
    [InlineData("short_image", "What is this?", 1)]
    [InlineData("text", "What is the capital of France?", 0)]
    [InlineData("text_short", "Hi!", 0)]
    public void LlavaV1ReproducesTheInferenceGoldenPrompts(string prompt, string question, int images)
    {
        var (expected, _) = TokenizerFixtures.GoldenPrompt(prompt);
        var text = new Conv("llava_v1").AddUser(question, images).BuildPrompt();
        Assert.Equal(expected, text);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    public void VicunaV1ReproducesTheFinetunePromptsAndIds(int index)
    {
        var ex = TokenizerFixtures.TrainingBatch("finetune").GetProperty("examples")[index];
        var conv = FromLlavaRecord(ConversationTemplates.VicunaV1, ex.GetProperty("conversations"));
        string prompt = conv.BuildPrompt();
        Assert.Equal(ex.GetProperty("prompt").GetString(), prompt);
        Assert.Equal(TokenizerFixtures.Ints(ex.GetProperty("input_ids")), TokenizerFixtures.SpmLegacyFalse.EncodePrompt(prompt, -200));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    public void PlainReproducesThePretrainPrompts(int index)
    {
        var ex = TokenizerFixtures.TrainingBatch("pretrain").GetProperty("examples")[index];
        var conv = FromLlavaRecord(ConversationTemplates.Plain, ex.GetProperty("conversations"));
        string prompt = conv.BuildPrompt();
        Assert.Equal(ex.GetProperty("prompt").GetString(), prompt);
        Assert.Equal(TokenizerFixtures.Ints(ex.GetProperty("input_ids")), TokenizerFixtures.Json.EncodePrompt(prompt, -200));
    }

    /// <summary>LLaVA data records: "human"/"gpt" turns, the image marker written somewhere in the first human turn.</summary>
    private static Conv FromLlavaRecord(ConversationTemplate template, JsonElement conversations)
    {
        var conv = new Conv(template);
        foreach (var turn in conversations.EnumerateArray())
        {
            string value = turn.GetProperty("value").GetString()!;
            if (turn.GetProperty("from").GetString() == "human")
                conv.AddUser(value, ShareGPT4V.Tokenization.LlavaTokenizer.CountImageMarkers(value));
            else conv.AddAssistant(value);
        }
        return conv;
    }

    [Fact]
    public void VicunaV1MultiTurnAndMovedImage()
    {
        var text = new Conv(ConversationTemplates.VicunaV1)
            .AddUser("What is this?\n<image>", 1).AddAssistant("A cat.")
            .AddUser("And its colour?").BuildPrompt();
        Assert.Equal(UserSystem + " USER: <image>\nWhat is this? ASSISTANT: A cat.</s>USER: And its colour? ASSISTANT:", text);
    }

    [Fact]
    public void Share4VV0UsesHashSeparators()
    {
        var conv = new Conv("share4v_v0").AddUser("What is this?", 1);
        Assert.Equal(HumanSystem + "###Human: <image>\nWhat is this?###Assistant:", conv.BuildPrompt());
        Assert.Equal(["###"], conv.StopStrings);
        conv.AddAssistant("A cat.").AddUser("Sure?");
        Assert.Equal(HumanSystem + "###Human: <image>\nWhat is this?###Assistant: A cat.###Human: Sure?###Assistant:", conv.BuildPrompt());
    }

    [Fact]
    public void Share4VV1IsLlavaV1()
    {
        var a = new Conv("share4v_v1").AddUser("q", 1).BuildPrompt();
        var b = new Conv("llava_v1").AddUser("q", 1).BuildPrompt();
        Assert.Equal(b, a);
        Assert.Equal(["</s>"], ConversationTemplates.Share4VV1.StopStrings);
    }

    [Fact]
    public void LlavaLlama2()
    {
        string sys = ConversationTemplates.LlavaLlama2.SystemPrompt;
        var conv = new Conv("llava_llama_2").AddUser("Describe it.", 1);
        Assert.Equal($"[INST] <<SYS>>\n{sys}\n<</SYS>>\n\n<image>\nDescribe it. [/INST]", conv.BuildPrompt());
        conv.AddAssistant("A cat.").AddUser("More?");
        Assert.Equal($"[INST] <<SYS>>\n{sys}\n<</SYS>>\n\n<image>\nDescribe it. [/INST] A cat. </s><s>[INST] More? [/INST]", conv.BuildPrompt());
        Assert.StartsWith("You are a helpful language and vision assistant.", sys);
    }

    [Fact]
    public void LlavaHfMatchesItsChatTemplate()
    {
        // The rules of the shipped chat_template.jinja that the renderer mirrors.
        string jinja = File.ReadAllText(Fixtures.Path("anchors/llava-hf__llava-1.5-7b-hf/chat_template.jinja")).Replace("\r\n", "\n");
        Assert.Contains("message['role'].upper() + ': '", jinja);
        Assert.Contains("{{ '<image>\n' }}", jinja);
        Assert.Contains("content['text'] + ' '", jinja);
        Assert.Contains("{{ 'ASSISTANT:' }}", jinja);

        var conv = new Conv("llava_hf").AddUser("What are these?", 1);
        Assert.Equal("USER: <image>\nWhat are these? ASSISTANT:", conv.BuildPrompt());
        conv.AddAssistant("Two cats.").AddUser("Which is bigger?");
        Assert.Equal("USER: <image>\nWhat are these? ASSISTANT: Two cats. USER: Which is bigger? ASSISTANT:", conv.BuildPrompt());
        conv.SystemPrompt = "Be brief.";
        Assert.StartsWith("Be brief. USER: <image>\n", conv.BuildPrompt());
    }

    [Fact]
    public void PlainForInferenceIsJustTheImageMarker()
    {
        Assert.Equal("<image>", new Conv("plain").AddUser("ignored by preprocess_plain", 1).BuildPrompt());
        Assert.Equal(["\n"], ConversationTemplates.Plain.StopStrings);
    }

    [Fact]
    public void RawKeepsTextAndWrittenMarkers()
    {
        Assert.Equal("Look: <image> here", new Conv("raw").AddUser("Look: <image> here", 1).BuildPrompt());
        Assert.Equal("<image>\nHi", new Conv("raw").AddUser("Hi", 1).BuildPrompt());
        Assert.Equal("plain text", new Conv("raw").AddUser("plain text").BuildPrompt());
    }

    [Fact]
    public void SeveralImagesPerTurnAndAcrossTurns()
    {
        var conv = new Conv("vicuna_v1").AddUser("Compare them.", 2).AddAssistant("The left one.").AddUser("And this?", 1);
        Assert.Equal(3, conv.ImageCount);
        Assert.Equal(UserSystem + " USER: <image>\n<image>\nCompare them. ASSISTANT: The left one.</s>USER: <image>\nAnd this? ASSISTANT:", conv.BuildPrompt());
        var markers = ShareGPT4V.Tokenization.LlavaTokenizer.CountImageMarkers(conv.BuildPrompt());
        Assert.Equal(conv.ImageCount, markers);
    }

    [Fact]
    public void SystemOverride()
    {
        var conv = new Conv("vicuna_v1") { SystemPrompt = "You are terse." }.AddUser("Hi");
        Assert.Equal("You are terse. USER: Hi ASSISTANT:", conv.BuildPrompt());
    }

    [Fact]
    public void RegistryLookupIsCaseInsensitive()
    {
        Assert.Same(ConversationTemplates.VicunaV1, ConversationTemplates.Get("VICUNA_V1"));
        Assert.Same(ConversationTemplates.LlavaHf, ConversationTemplates.Get(" Llava_HF "));
        Assert.True(ConversationTemplates.TryGet("Share4V_V0", out var t));
        Assert.Equal("share4v_v0", t.Name);
        Assert.False(ConversationTemplates.TryGet("chatml", out _));
        Assert.Equal(["vicuna_v1", "llava_v1", "share4v_v1", "share4v_v0", "llava_llama_2", "plain", "llava_hf", "raw"], ConversationTemplates.Names);
    }

    [Fact]
    public void UnknownTemplateListsKnownNames()
    {
        var ex = Assert.Throws<PromptException>(() => ConversationTemplates.Get("chatml"));
        Assert.Contains("Unknown conversation template 'chatml'", ex.Message);
        Assert.Contains("vicuna_v1, llava_v1, share4v_v1, share4v_v0, llava_llama_2, plain, llava_hf, raw", ex.Message);
        Assert.Throws<PromptException>(() => new Conv("nope"));
    }

    [Theory]
    [InlineData(null, true, "llava-1.5-7b-hf", "llava_hf")]
    [InlineData("llava", true, null, "llava_hf")]
    [InlineData("share4v", false, "ShareGPT4V-7B", "llava_v1")]
    [InlineData("llava", false, "llava-v1.5-13b", "llava_v1")]
    [InlineData("llava", false, "llava-llama-2-13b-chat-lightning-preview", "llava_llama_2")]
    [InlineData(null, false, null, "llava_v1")]
    public void DefaultTemplateFromModelHints(string? modelType, bool hfLayout, string? name, string expected)
    {
        Assert.Equal(expected, ConversationTemplates.ChooseDefault(modelType, hfLayout, name).Name);
    }

    [Fact]
    public void MarkerCountMustMatchImages()
    {
        var ex = Assert.Throws<PromptException>(() => new Conv("vicuna_v1").AddUser("<image> and <image>", 1));
        Assert.Contains("2 <image> marker(s) but 1 image(s)", ex.Message);
    }

    [Fact]
    public void TurnsMustAlternateStartingWithTheUser()
    {
        var first = Assert.Throws<PromptException>(() => new Conv("vicuna_v1").AddAssistant("Hi"));
        Assert.Contains("must follow a user turn", first.Message);
        var twice = Assert.Throws<PromptException>(() => new Conv("vicuna_v1").AddUser("a").AddUser("b"));
        Assert.Contains("cannot follow another user turn", twice.Message);
    }

    [Fact]
    public void OtherBadInputs()
    {
        Assert.Contains("no messages", Assert.Throws<PromptException>(() => new Conv("vicuna_v1").BuildPrompt()).Message);
        Assert.Contains("must not be negative", Assert.Throws<PromptException>(() => new Conv("vicuna_v1").AddUser("q", -1)).Message);
        Assert.Contains("cannot carry images", Assert.Throws<PromptException>(() => new Conv("vicuna_v1").AddUser("q").AddAssistant("<image>")).Message);
        Assert.Contains("cannot carry images", Assert.Throws<PromptException>(() => new Conv("vicuna_v1").AddUser("q").Add(new ConversationMessage(ConversationRole.Assistant, "a", 1))).Message);
    }
}

public class AnswerCleanupTests
{
    [Theory]
    [InlineData("vicuna_v1", " A cat.</s>", "A cat.")]
    [InlineData("vicuna_v1", "A cat. ", "A cat.")]
    [InlineData("share4v_v0", " A cat.###Human: more", "A cat.")]
    [InlineData("llava_llama_2", "A cat. </s><s>[INST]", "A cat.")]
    [InlineData("raw", " kept as is</s> ", "kept as is</s>")]
    public void CleanAnswerCutsAtTheStopString(string template, string decoded, string expected)
    {
        Assert.Equal(expected, ConversationTemplates.Get(template).CleanAnswer(decoded));
    }

    [Fact]
    public void IndexOfStopFindsTheEarliest()
    {
        var t = ConversationTemplates.VicunaV1 with { StopStrings = ["</s>", "USER:"] };
        Assert.Equal(3, t.IndexOfStop("abcUSER: x</s>"));
        Assert.Equal(-1, t.IndexOfStop("abc</"));
    }
}
