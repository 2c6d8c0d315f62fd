using ShareGPT4V.Tokenization;

namespace ShareGPT4V.Generation;

/// <summary>
/// The text of one generated answer as it grows token by token. It applies the reference post-processing
/// (strip, cut at a stop string) and releases, for streaming, only text that can no longer change: leading
/// whitespace is dropped, trailing whitespace and any suffix that could begin a stop string are held back.
/// So the streamed pieces concatenate to exactly <see cref="FinalText"/>.
/// </summary>
public sealed class OutputText
{
    private readonly StreamingDetokenizer _detok;
    private readonly IReadOnlyList<string> _stops;
    private readonly System.Text.StringBuilder _raw = new();
    private int _emitted; // characters of the cleaned text already released
    private string? _final;

    public OutputText(LlavaTokenizer tokenizer, IReadOnlyList<string> stopStrings)
    {
        _detok = tokenizer.CreateStreamingDetokenizer(skipSpecialTokens: true);
        _stops = stopStrings;
    }

    /// <summary>True once a stop string has appeared.</summary>
    public bool Stopped { get; private set; }

    /// <summary>Adds a token; returns the newly releasable text (maybe empty).</summary>
    public string Append(int tokenId)
    {
        if (_final is not null) throw new InvalidOperationException("The answer is complete");
        _raw.Append(_detok.Append(tokenId));
        var text = _raw.ToString();
        int cut = FirstStop(text);
        if (cut >= 0)
        {
            Stopped = true;
            return string.Empty; // Complete() releases the rest
        }
        // Clean view: leading whitespace dropped; hold back trailing whitespace and a possible stop-string start.
        int start = LeadingWhitespace(text);
        int end = text.Length;
        end = Math.Min(end, text.Length - PossibleStopPrefix(text));
        while (end > start && char.IsWhiteSpace(text[end - 1])) end--;
        // Never split a surrogate pair.
        if (end > start && char.IsHighSurrogate(text[end - 1])) end--;
        int available = end - start;
        if (available <= _emitted) return string.Empty;
        var piece = text.Substring(start + _emitted, available - _emitted);
        _emitted = available;
        return piece;
    }

    /// <summary>Finishes the answer and returns the text not yet released.</summary>
    public string Complete()
    {
        if (_final is null)
        {
            _raw.Append(_detok.Flush());
            var text = _raw.ToString();
            int cut = FirstStop(text);
            if (cut >= 0) { text = text[..cut]; Stopped = true; }
            _final = text.Trim();
        }
        var rest = _emitted < _final.Length ? _final[_emitted..] : string.Empty;
        _emitted = _final.Length;
        return rest;
    }

    /// <summary>The answer after <see cref="Complete"/>.</summary>
    public string FinalText => _final ?? throw new InvalidOperationException("Complete() has not been called");

    private int FirstStop(string text)
    {
        int best = -1;
        foreach (var s in _stops)
        {
            int i = text.IndexOf(s, StringComparison.Ordinal);
            if (i >= 0 && (best < 0 || i < best)) best = i;
        }
        return best;
    }

    private int PossibleStopPrefix(string text)
    {
        int longest = 0;
        foreach (var s in _stops)
            for (int k = Math.Min(s.Length - 1, text.Length); k > longest; k--)
                if (string.CompareOrdinal(text, text.Length - k, s, 0, k) == 0) { longest = k; break; }
        return longest;
    }

    private static int LeadingWhitespace(string text)
    {
        int i = 0;
        while (i < text.Length && char.IsWhiteSpace(text[i])) i++;
        return i;
    }
}
