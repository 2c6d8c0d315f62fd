using System.Text;

namespace ShareGPT4V.Tokenization;

/// <summary>
/// Turns generated ids into text one id at a time and hands back only complete characters: a character spelled
/// by several byte pieces (&lt;0xE2&gt;&lt;0x82&gt;&lt;0xAC&gt; = "€") comes out whole once its last byte arrives,
/// never as U+FFFD halves. Like SentencePiece, the space of the very first word is dropped. The concatenation of
/// everything returned (including <see cref="Flush"/>) equals <see cref="LlavaTokenizer.Decode"/> of all the ids.
/// One instance per stream; not thread-safe.
/// </summary>
internal sealed class StreamingDetokenizer
{
    private readonly LlavaTokenizer _tokenizer;
    private readonly bool _skipSpecialTokens;
    // A stateful UTF-8 decoder keeps incomplete sequences between calls and replaces invalid bytes exactly
    // as a one-shot decode of the whole byte string would.
    private readonly Decoder _decoder = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: false).GetDecoder();
    private readonly char[] _chars = new char[64];
    private bool _started;

    internal StreamingDetokenizer(LlavaTokenizer tokenizer, bool skipSpecialTokens)
    {
        _tokenizer = tokenizer;
        _skipSpecialTokens = skipSpecialTokens;
    }

    /// <summary>Adds one id and returns the text it completes (often empty).</summary>
    public string Append(int id)
    {
        var bytes = _tokenizer.TokenBytes(id, _skipSpecialTokens, out bool wordStart);
        if (bytes is null || bytes.Length == 0) return "";
        int offset = 0;
        if (!_started)
        {
            _started = true;
            if (wordStart) offset = 1; // the ▁ decoded to one ASCII space byte
        }
        return DecodeBytes(bytes, offset, flush: false);
    }

    /// <summary>Ends the stream: bytes of an unfinished character come out as U+FFFD.</summary>
    public string Flush() => DecodeBytes([], 0, flush: true);

    /// <summary>Starts a new stream.</summary>
    public void Reset()
    {
        _decoder.Reset();
        _started = false;
    }

    private string DecodeBytes(byte[] bytes, int offset, bool flush)
    {
        int count = bytes.Length - offset;
        int needed = _decoder.GetCharCount(bytes, offset, count, flush);
        if (needed == 0 && !flush)
        {
            // Still feed the bytes so the decoder keeps the partial character.
            _decoder.GetChars(bytes, offset, count, _chars, 0, flush: false);
            return "";
        }
        var chars = needed <= _chars.Length ? _chars : new char[needed];
        int written = _decoder.GetChars(bytes, offset, count, chars, 0, flush);
        return new string(chars, 0, written);
    }
}
