using Microsoft.ML.Tokenizers;
using ShareGPT4V.Tokenization;
using Xunit;

namespace ShareGPT4V.Tests.Tokenization;

/// <summary>
/// Where no golden exists, tokenizer.model and tokenizer.json must agree with each other and with
/// Microsoft.ML.Tokenizers' own SentencePiece implementation of the same tokenizer.model.
/// </summary>
public class CrossCheckTests
{
    private static readonly Lazy<LlamaTokenizer> s_reference = new(() =>
    {
        using var stream = File.OpenRead(TokenizerFixtures.ModelFile);
        return LlamaTokenizer.Create(stream, addBeginOfSentence: true, addEndOfSentence: false);
    });

    private static readonly string[] s_texts =
    [
        "Hello world!",
        "a",
        " leading space",
        "trailing spaces  ",
        "  both  ",
        "multiple   inner    spaces",
        "digits 1234567890 and 3.14159, 2024-11-25",
        "Ünïcödé façade naïve café ß",
        "日本語のテキストです。",
        "你好，世界！这是一个测试。",
        "emoji 😀🎉👍🏽 and 🦙🦙🦙",
        "tabs\tand\nnew\r\nlines\n\n",
        "€100 and £50 cost ¥",
        "Привет, мир! Ελληνικά. עברית. العربية",
        "∑∫√∞ ≠ ≈ ⊂",
        "zero\u200Bwidth and\u00A0nbsp",
        "What is shown in this picture? A red disc with a dark ring, green stripes on the right and a yellow checker patch.",
        "\u2581already escaped\u2581",
        "x",
        "\n",
        "🦙",
    ];

    public static TheoryData<string> Texts() => new(s_texts);

    [Theory]
    [MemberData(nameof(Texts))]
    public void AllFilesAgreeWithMicrosoftMlTokenizers(string text)
    {
        var expected = s_reference.Value.EncodeToIds(text).ToArray();
        Assert.Equal(expected, TokenizerFixtures.SpmLegacyTrue.Encode(text));
        Assert.Equal(expected, TokenizerFixtures.Json.Encode(text));
        Assert.Equal(expected, TokenizerFixtures.SpmHf.Encode(text));
    }

    [Theory]
    [MemberData(nameof(Texts))]
    public void DecodeRoundTripsAndMatchesMicrosoftMlTokenizers(string text)
    {
        foreach (var name in TokenizerFixtures.AllNames)
        {
            var t = TokenizerFixtures.ByName(name);
            var ids = t.Encode(text);
            // A literal ▁ in the input is SentencePiece's space symbol, so it comes back as a space.
            Assert.Equal(text.Replace('\u2581', ' '), t.Decode(ids));
        }
        var refIds = s_reference.Value.EncodeToIds(text);
        Assert.Equal(s_reference.Value.Decode(refIds), TokenizerFixtures.Json.Decode(refIds));
    }

    [Fact]
    public void LongMixedTextAgreesWithMicrosoftMlTokenizers()
    {
        var text = string.Concat(Enumerable.Range(0, 300).Select(i => s_texts[i % s_texts.Length] + (i % 3 == 0 ? " " : "\n")));
        Assert.Equal(s_reference.Value.EncodeToIds(text).ToArray(), TokenizerFixtures.SpmLegacyTrue.Encode(text));
    }

    [Fact]
    public void EmptyTextIsJustBos()
    {
        Assert.Equal([1], TokenizerFixtures.Json.Encode(""));
        Assert.Empty(TokenizerFixtures.SpmLegacyFalse.Encode("", addBos: false));
        Assert.Equal([1], TokenizerFixtures.SpmLegacyFalse.EncodePrompt("", -200));
        Assert.Equal([1, -200], TokenizerFixtures.SpmLegacyFalse.EncodePrompt("<image>", -200));
    }

    [Fact]
    public void BytePiecesSpellCharactersMissingFromTheVocabulary()
    {
        // "\n" is not a piece: byte fallback gives <0x0A> (13), which BpeTokenizer from tokenizer.json cannot do.
        Assert.Equal([1, 29871, 13], TokenizerFixtures.Json.Encode("\n"));
        var ids = TokenizerFixtures.Json.Encode("🦙", addBos: false);
        Assert.Equal(["\u2581", "<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"], ids.Select(i => TokenizerFixtures.Json.IdToToken(i)!).ToArray());
    }

    [Fact]
    public void GeneratedIdsDecodeIdenticallyWithBothFiles()
    {
        var prompts = TokenizerFixtures.Golden.GetProperty("prompts");
        foreach (var name in new[] { "main", "text" })
        {
            var ids = TokenizerFixtures.Ints(prompts.GetProperty(name).GetProperty("generated_ids"));
            string fromJson = TokenizerFixtures.Json.Decode(ids);
            Assert.Equal(fromJson, TokenizerFixtures.SpmLegacyFalse.Decode(ids));
            Assert.Equal(s_reference.Value.Decode(ids), fromJson);
            Assert.DoesNotContain('\uFFFD', fromJson);
        }
    }

    [Fact]
    public void DecodeHandlesSpecialAndPlaceholderIds()
    {
        var t = TokenizerFixtures.Json;
        int[] ids = [1, 15043, -200, 32000, 3186, 2];
        Assert.Equal("Hello world", t.Decode(ids));
        Assert.Equal("<s> Hello<image><image> world</s>", t.Decode(ids, skipSpecialTokens: false));
        Assert.Equal("", t.Decode([99999, 1, 2]));
    }

    [Fact]
    public void ConcurrentEncodeAndDecodeGiveTheSameResults()
    {
        var texts = s_texts;
        var t = TokenizerFixtures.SpmLegacyFalse;
        var expected = texts.Select(x => t.Encode(x)).ToArray();
        Parallel.For(0, 400, new ParallelOptions { MaxDegreeOfParallelism = 8 }, i =>
        {
            int k = i % texts.Length;
            Assert.Equal(expected[k], t.Encode(texts[k]));
            Assert.Equal(texts[k].Replace('\u2581', ' '), t.Decode(expected[k]));
        });
    }
}
