using System.Text;
using ShareGPT4V.Tokenization;
using Xunit;

namespace ShareGPT4V.Tests.Tokenization;

public class StreamingDetokenizerTests
{
    [Theory]
    [InlineData("The price is €100 😀 ok")]
    [InlineData("你好，世界！🦙 日本語のテキスト")]
    [InlineData("emoji 👍🏽🎉 at the end 🦙")]
    [InlineData(" leading space and trailing ")]
    [InlineData("Привет мир ∑∫√")]
    public void StreamedTextEqualsDecodeAndNeverSplitsACharacter(string text)
    {
        foreach (var name in TokenizerFixtures.AllNames)
        {
            var t = TokenizerFixtures.ByName(name);
            var ids = t.Encode(text);
            var stream = t.CreateStreamingDetokenizer();
            var sb = new StringBuilder();
            foreach (int id in ids)
            {
                string part = stream.Append(id);
                Assert.DoesNotContain('\uFFFD', part);
                Assert.False(part.Length > 0 && char.IsHighSurrogate(part[^1]), "a surrogate pair was split");
                sb.Append(part);
            }
            sb.Append(stream.Flush());
            Assert.Equal(t.Decode(ids), sb.ToString());
            Assert.Equal(text, sb.ToString());
        }
    }

    [Fact]
    public void MultiByteCharacterComesOutWithItsLastBytePiece()
    {
        var t = TokenizerFixtures.Json;
        // "€" is spelled <0xE2><0x82><0xAC> when it is not a piece of its own; build that sequence directly.
        int[] bytes = [t.TokenToId("<0xE2>")!.Value, t.TokenToId("<0x82>")!.Value, t.TokenToId("<0xAC>")!.Value];
        var stream = t.CreateStreamingDetokenizer();
        Assert.Equal("A", stream.Append(t.TokenToId("\u2581A")!.Value));
        Assert.Equal("", stream.Append(bytes[0]));
        Assert.Equal("", stream.Append(bytes[1]));
        Assert.Equal("€", stream.Append(bytes[2]));
        Assert.Equal("", stream.Flush());
    }

    [Fact]
    public void FirstWordLosesItsSpaceOnlyAtTheStart()
    {
        var t = TokenizerFixtures.Json;
        var stream = t.CreateStreamingDetokenizer();
        Assert.Equal("", stream.Append(1));           // BOS is skipped and does not count as output
        Assert.Equal("Hello", stream.Append(15043)); // ▁Hello
        Assert.Equal(" world", stream.Append(3186));  // ▁world
        stream.Reset();
        Assert.Equal("world", stream.Append(3186));
    }

    [Fact]
    public void UnfinishedCharacterBecomesReplacementOnFlushLikeDecode()
    {
        var t = TokenizerFixtures.Json;
        int[] ids = [15043, t.TokenToId("<0xF0>")!.Value, t.TokenToId("<0x9F>")!.Value];
        var stream = t.CreateStreamingDetokenizer();
        string streamed = string.Concat(ids.Select(stream.Append)) + stream.Flush();
        Assert.Equal(t.Decode(ids), streamed);
        Assert.Equal("Hello\uFFFD", streamed);
    }

    [Fact]
    public void SpecialTokensAreKeptWhenAsked()
    {
        var t = TokenizerFixtures.SpmHf;
        var stream = t.CreateStreamingDetokenizer(skipSpecialTokens: false);
        Assert.Equal("<s>", stream.Append(1));
        Assert.Equal(" Hello", stream.Append(15043));
        Assert.Equal("</s>", stream.Append(2));
    }
}
