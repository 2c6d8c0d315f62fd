using ShareGPT4V.Tokenization;
using Xunit;

namespace ShareGPT4V.Tests.Tokenization;

/// <summary>Exact ids against the transformers / LLaVA goldens.</summary>
public class GoldenIdsTests
{
    public static TheoryData<string, string> PromptsTimesTokenizers()
    {
        var data = new TheoryData<string, string>();
        foreach (var p in TokenizerFixtures.GoldenPromptNames)
            foreach (var t in TokenizerFixtures.AllNames) data.Add(p, t);
        return data;
    }

    [Theory]
    [MemberData(nameof(PromptsTimesTokenizers))]
    public void EncodePromptReproducesLlavaIdsWithMinus200(string prompt, string tokenizer)
    {
        var (text, expected) = TokenizerFixtures.GoldenPrompt(prompt);
        Assert.Equal(expected, TokenizerFixtures.ByName(tokenizer).EncodePrompt(text, LlavaTokenizer.LlavaImageTokenIndex));
    }

    [Theory]
    [MemberData(nameof(PromptsTimesTokenizers))]
    public void EncodePromptReproducesLlavaHfIdsWith32000(string prompt, string tokenizer)
    {
        var (text, llavaIds) = TokenizerFixtures.GoldenPrompt(prompt);
        var expected = llavaIds.Select(i => i == -200 ? 32000 : i).ToArray();
        Assert.Equal(expected, TokenizerFixtures.ByName(tokenizer).EncodePrompt(text, 32000));
    }

    [Fact]
    public void GoldenInputIdsOfTheInferenceCaseMatch()
    {
        var main = TokenizerFixtures.Golden.GetProperty("prompts").GetProperty("main");
        var expected = TokenizerFixtures.Ints(main.GetProperty("input_ids"));
        Assert.Equal(expected, TokenizerFixtures.Json.EncodePrompt(main.GetProperty("text").GetString()!, 32000));
    }

    [Theory]
    [InlineData("main")]
    [InlineData("short_image")]
    public void TokenizerJsonWholeStringWithAddedImageTokenEqualsChunking(string prompt)
    {
        // With <image> an added special token, HF tokenizers gives the ▁ after it too (README: checked).
        var (text, llavaIds) = TokenizerFixtures.GoldenPrompt(prompt);
        var expected = llavaIds.Select(i => i == -200 ? 32000 : i).ToArray();
        Assert.Equal(expected, TokenizerFixtures.Json.Encode(text));
    }

    [Fact]
    public void SentencePieceModelWholeStringLegacyFalseHasNoPrefixAfterImageToken()
    {
        // tokenizer.model, legacy false, <image> as added token: "32000, 13" (no ▁), unlike LLaVA's chunking.
        var (text, _) = TokenizerFixtures.GoldenPrompt("main");
        var ids = TokenizerFixtures.SpmHf.Encode(text);
        int at = Array.IndexOf(ids, 32000);
        Assert.Equal(13, ids[at + 1]);
    }

    [Theory]
    [InlineData("json")]
    [InlineData("spm_legacy_false")]
    [InlineData("spm_hf")]
    public void HelloWorld(string tokenizer)
    {
        Assert.Equal([1, 15043, 3186, 29991], TokenizerFixtures.ByName(tokenizer).Encode("Hello world!"));
    }

    [Theory]
    [InlineData("finetune", 0)]
    [InlineData("finetune", 1)]
    [InlineData("pretrain", 0)]
    [InlineData("pretrain", 1)]
    public void TrainingPromptsMatchEachTokenizerVariant(string stage, int index)
    {
        var ex = TokenizerFixtures.TrainingBatch(stage).GetProperty("examples")[index];
        string prompt = ex.GetProperty("prompt").GetString()!;
        var variants = ex.GetProperty("tokenizer_variants");
        // tokenizer.model + legacy false = transformers 4.37 slow tokenizer (LLaVA main): "</s>USER" -> 2, 11889.
        Assert.Equal(TokenizerFixtures.Ints(variants.GetProperty("llava_tf4.37_legacy_false")),
            TokenizerFixtures.SpmLegacyFalse.EncodePrompt(prompt, -200));
        // tokenizer.model + legacy true: 2, 3148 ▁US, 1001 ER.
        Assert.Equal(TokenizerFixtures.Ints(variants.GetProperty("legacy_true")),
            TokenizerFixtures.SpmLegacyTrue.EncodePrompt(prompt, -200));
        // tokenizer.json (HF tokenizers): the segment after </s> gets the ▁ too, like legacy true.
        Assert.Equal(TokenizerFixtures.Ints(variants.GetProperty("legacy_true")),
            TokenizerFixtures.Json.EncodePrompt(prompt, -200));
        Assert.Equal(TokenizerFixtures.Ints(ex.GetProperty("input_ids_hf")),
            TokenizerFixtures.SpmHf.EncodePrompt(prompt, 32000));
    }

    [Fact]
    public void TextAfterEndOfSequenceFollowsEachFileRule()
    {
        const string text = "A.</s>USER: B";
        Assert.Equal([1, 319, 29889, 2, 11889, 29901, 350], TokenizerFixtures.SpmLegacyFalse.Encode(text));
        Assert.Equal([1, 319, 29889, 2, 3148, 1001, 29901, 350], TokenizerFixtures.SpmLegacyTrue.Encode(text));
        Assert.Equal([1, 319, 29889, 2, 3148, 1001, 29901, 350], TokenizerFixtures.Json.Encode(text));
    }

    [Fact]
    public void SpecialTokenIdsComeFromTheConfigFiles()
    {
        var t = TokenizerFixtures.SpmLegacyFalse;
        Assert.Equal((1, 2, 0), (t.BosId, t.EosId, t.UnkId));
        Assert.Equal(0, t.PadId); // special_tokens_map.json: pad "<unk>" overrides tokenizer_config's null
        Assert.False(t.Legacy);
        Assert.True(t.AddBosToken);
        Assert.Equal(TokenizerFileKind.SentencePieceModel, t.FileKind);
        Assert.Equal(32000, t.VocabularySize);
        Assert.Null(t.TokenToId("<image>"));

        var hf = TokenizerFixtures.SpmHf;
        Assert.Equal(32001, hf.PadId);
        Assert.Equal(32000, hf.TokenToId("<image>"));
        Assert.Equal(32002, hf.VocabularySize);
        Assert.True(hf.IsSpecial(32000));

        var json = TokenizerFixtures.Json;
        Assert.Equal(TokenizerFileKind.TokenizerJson, json.FileKind);
        Assert.Equal(32001, json.PadId);
        Assert.True(json.Legacy);
        Assert.Equal("<0x0A>", json.IdToToken(13));
        Assert.Equal("\u2581US", json.IdToToken(3148));
    }
}
