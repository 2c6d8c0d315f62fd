using System.Text;
using System.Text.Json.Nodes;
using ShareGPT4V.Tokenization;
using Xunit;

namespace ShareGPT4V.Tests.Safety;

/// <summary>
/// Tokenizer files with absurd counts, ids and lengths are refused naming the file; hostile texts (floods of special
/// tokens, lone surrogates) neither hang nor change silently; valid Unicode round-trips.
/// </summary>
public sealed class HostileTokenizerTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("sgpt4v-tok-").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static readonly Lazy<LlavaTokenizer> JsonTokenizer = new(() => LlavaTokenizer.Load(Fixtures.Path("oracle/hf_llama2vocab"), TokenizerFileKind.TokenizerJson));
    private static readonly Lazy<LlavaTokenizer> ModelTokenizer = new(() => LlavaTokenizer.Load(Fixtures.Path("tokenizers/llama2"), TokenizerFileKind.SentencePieceModel));

    private string Folder(string name, params (string File, byte[] Data)[] files)
    {
        var dir = Path.Combine(_dir, name);
        Directory.CreateDirectory(dir);
        foreach (var (file, data) in files) File.WriteAllBytes(Path.Combine(dir, file), data);
        return dir;
    }

    private static byte[] Fixture(string rel) => File.ReadAllBytes(Fixtures.Path(rel));

    /// <summary>Runs <paramref name="work"/> on its own thread; a hang fails the test instead of stalling the suite.</summary>
    private static T WithinHangLimit<T>(Func<T> work)
    {
        var task = Task.Factory.StartNew(work, TaskCreationOptions.LongRunning);
        Assert.True(task.Wait(TimeSpan.FromMinutes(1)), "did not finish within a minute (hang)");
        return task.Result;
    }

    [Fact]
    public void AFloodOfSpecialTokensIsEncodedInOnePass()
    {
        // Found by review: each special-token search restarted for every token from the cursor, so the work grew with
        // the square of the text (a million characters of "</s>" took 25 s, these two million about 100 s). One
        // left-to-right pass now.
        var tok = JsonTokenizer.Value;
        var text = string.Concat(Enumerable.Repeat("</s>", 500_000));
        var ids = WithinHangLimit(() => tok.Encode(text, addBos: false));
        Assert.Equal(500_000, ids.Length);
        Assert.All(ids, id => Assert.Equal(tok.EosId, id));
        // Mixed with text and markers, results equal encoding the pieces one by one.
        var mixed = string.Concat(Enumerable.Repeat("a</s>b<image>", 50_000));
        var prompt = WithinHangLimit(() => tok.EncodePrompt(mixed, LlavaTokenizer.LlavaImageTokenIndex));
        Assert.Equal(50_000, prompt.Count(id => id == LlavaTokenizer.LlavaImageTokenIndex));
        Assert.Equal(50_000, prompt.Count(id => id == tok.EosId));
    }

    [Fact]
    public void LoneSurrogatesAreRefusedNotReplaced()
    {
        var e = Assert.Throws<PromptException>(() => JsonTokenizer.Value.Encode("abc\ud800def"));
        Assert.Contains("U+D800", e.Message);
        Assert.Contains("character 3", e.Message);
        Assert.Throws<PromptException>(() => ModelTokenizer.Value.EncodePrompt("<image>\udc00", -200));
        Assert.Throws<PromptException>(() => ModelTokenizer.Value.Encode("ends high \ud83d"));
        // A proper pair is fine.
        Assert.NotEmpty(ModelTokenizer.Value.Encode("\ud83d\ude42"));
    }

    [Theory]
    [InlineData("TokenizerJson")]
    [InlineData("SentencePieceModel")]
    public void ArbitraryUnicodeRoundTrips(string kindName)
    {
        var kind = Enum.Parse<TokenizerFileKind>(kindName);
        var tok = kind == TokenizerFileKind.TokenizerJson ? JsonTokenizer.Value : ModelTokenizer.Value;
        var rng = new Random(4242);
        // Every plane, controls, combining marks, RTL, emoji sequences, private use; '<' left out so no text spells a special token.
        int[][] ranges =
        [
            [0x00, 0x3B], [0x3D, 0x7F], [0x80, 0x2FF], [0x300, 0x36F], [0x590, 0x6FF], [0x900, 0x97F], [0x3040, 0x30FF],
            [0x4E00, 0x9FFF], [0xAC00, 0xD7A3], [0xE000, 0xF8FF], [0xFE00, 0xFE0F], [0xFF00, 0xFFFD],
            [0x1F300, 0x1FAFF], [0x1D400, 0x1D7FF], [0x20000, 0x2A6DF], [0xE0000, 0xE007F], [0x10FFF0, 0x10FFFD],
        ];
        for (int n = 0; n < 300; n++)
        {
            var sb = new StringBuilder();
            int length = rng.Next(1, 40);
            for (int i = 0; i < length; i++)
            {
                var r = ranges[rng.Next(ranges.Length)];
                sb.Append(char.ConvertFromUtf32(rng.Next(r[0], r[1] + 1)));
                if (rng.Next(5) == 0) sb.Append(' ');
            }
            var text = sb.ToString();
            var ids = tok.Encode(text, addBos: false);
            Assert.Equal(text, tok.Decode(ids, skipSpecialTokens: false));
            // Streaming gives the same text.
            var stream = tok.CreateStreamingDetokenizer(skipSpecialTokens: false);
            var streamed = new StringBuilder();
            foreach (var id in ids) streamed.Append(stream.Append(id));
            streamed.Append(stream.Flush());
            Assert.Equal(text, streamed.ToString());
        }
    }

    [Fact]
    public void AddedTokenIdsBeyondTheVocabularyLimitAreRefused()
    {
        // An id of int.MaxValue used to overflow the tokenizer's id range (VocabularySize = max id + 1).
        var dir = Folder("big-id", ("tokenizer.model", Fixture("tokenizers/llama2/tokenizer.model")),
            ("added_tokens.json", """{"<image>": 2147483647}"""u8.ToArray()));
        var e = Assert.Throws<ModelConfigurationException>(() => LlavaTokenizer.Load(dir));
        Assert.Contains("2147483647", e.Message);
        Assert.Contains("added_tokens.json", e.Message);

        var json = JsonNode.Parse(Fixture("oracle/hf_llama2vocab/tokenizer.json"))!;
        json["added_tokens"]!.AsArray().Add(new JsonObject { ["id"] = "5", ["content"] = "<x>" }); // a string id used to throw InvalidOperationException
        var dir2 = Folder("string-id", ("tokenizer.json", Encoding.UTF8.GetBytes(json.ToJsonString())));
        var e2 = Assert.Throws<ModelConfigurationException>(() => LlavaTokenizer.Load(dir2, TokenizerFileKind.TokenizerJson));
        Assert.Contains("added token has no content or id", e2.Message);
    }

    [Fact]
    public void OverlongPiecesAreRefused()
    {
        var json = JsonNode.Parse(Fixture("oracle/hf_llama2vocab/tokenizer.json"))!;
        var vocab = json["model"]!["vocab"]!.AsObject();
        vocab[new string('a', 5000)] = vocab.Count;
        var dir = Folder("long-piece", ("tokenizer.json", Encoding.UTF8.GetBytes(json.ToJsonString())));
        var e = Assert.Throws<ModelConfigurationException>(() => LlavaTokenizer.Load(dir, TokenizerFileKind.TokenizerJson));
        Assert.Contains("5000 characters", e.Message);
        Assert.Contains("tokenizer.json", e.Message);
    }

    [Fact]
    public void SentencePieceModelWithMorePiecesThanAnyVocabularyIsRefused()
    {
        // 2^21 + 1 one-letter pieces: each ModelProto.pieces entry is field 1 { piece: field 1 "a" }.
        int count = (1 << 21) + 1;
        var data = new byte[count * 5];
        for (int i = 0; i < count; i++) data.AsSpan(i * 5).CopyFrom([0x0A, 0x03, 0x0A, 0x01, (byte)'a']);
        var dir = Folder("many", ("tokenizer.model", data));
        var e = Assert.Throws<ModelConfigurationException>(() => LlavaTokenizer.Load(dir));
        Assert.Contains("more than 2097152 pieces", e.Message);
        Assert.Contains("tokenizer.model", e.Message);
    }

    [Fact]
    public void TruncatedOrGarbledSentencePieceModelsAreRefused()
    {
        var model = Fixture("tokenizers/llama2/tokenizer.model");
        foreach (var cut in new[] { 1, 7, model.Length / 3, model.Length - 5 })
        {
            var dir = Folder($"cut{cut}", ("tokenizer.model", model[..cut]));
            var e = Assert.Throws<ModelConfigurationException>(() => LlavaTokenizer.Load(dir));
            Assert.Contains("tokenizer.model", e.Message);
        }
    }
}

file static class SpanExtensions
{
    public static void CopyFrom(this Span<byte> span, ReadOnlySpan<byte> source) => source.CopyTo(span);
}
