using ShareGPT4V.Tokenization;

namespace ShareGPT4V.Generation;

/// <summary>
/// The text of one generated answer as it grows token by token. It applies the reference post-processing
/// (strip, cut at a stop string) and releases, for streaming, only text that can no longer change: leading
/// whitespace is dropped, trailing whitespace and any suffix that could begin a stop string are held back.
/// So the streamed pieces concatenate to exactly <see cref="FinalText"/>.
/// </summary>
internal sealed class OutputText
{
    // Work per token is bounded by the piece and the longest stop string, not by the answer so far: the raw text
    // lives in one growing buffer, stop strings are searched only where a new one could end, and only the released
    // piece becomes a string.
    private readonly StreamingDetokenizer _detok;
    private readonly string[] _stops;
    private readonly int _longestStop;
    private char[] _buf = new char[256];
    private int _len;
    private int _lead;      // leading whitespace characters (final once a non-whitespace character arrived)
    private int _cut = -1;  // where the first stop string starts, once seen
    private int _emitted;   // characters of the cleaned text already released
    private string? _final;

    public OutputText(LlavaTokenizer tokenizer, IReadOnlyList<string> stopStrings)
    {
        _detok = tokenizer.CreateStreamingDetokenizer(skipSpecialTokens: true);
        _stops = stopStrings.ToArray();
        _longestStop = _stops.Length == 0 ? 0 : _stops.Max(x => x.Length);
    }

    /// <summary>True once a stop string has appeared.</summary>
    public bool Stopped => _cut >= 0;

    /// <summary>Adds a token; returns the newly releasable text (maybe empty).</summary>
    public string Append(int tokenId)
    {
        if (_final is not null) throw new InvalidOperationException("The answer is complete");
        if (Stopped) return string.Empty;
        Add(_detok.Append(tokenId));
        if (Stopped) return string.Empty; // Complete() releases the rest
        // Clean view: leading whitespace dropped; hold back trailing whitespace and a possible stop-string start.
        int start = _lead;
        int end = _len - PossibleStopPrefix();
        while (end > start && char.IsWhiteSpace(_buf[end - 1])) end--;
        // Never split a surrogate pair.
        if (end > start && char.IsHighSurrogate(_buf[end - 1])) end--;
        int available = end - start;
        if (available <= _emitted) return string.Empty;
        var piece = new string(_buf, start + _emitted, available - _emitted);
        _emitted = available;
        return piece;
    }

    /// <summary>Finishes the answer and returns the text not yet released.</summary>
    public string Complete()
    {
        if (_final is null)
        {
            if (!Stopped) Add(_detok.Flush());
            int end = Stopped ? _cut : _len;
            _final = new string(_buf, 0, end).Trim();
        }
        var rest = _emitted < _final.Length ? _final[_emitted..] : string.Empty;
        _emitted = _final.Length;
        return rest;
    }

    /// <summary>The answer after <see cref="Complete"/>.</summary>
    public string FinalText => _final ?? throw new InvalidOperationException("Complete() has not been called");

    private void Add(string piece)
    {
        if (piece.Length == 0) return;
        int before = _len;
        if (_len + piece.Length > _buf.Length) Array.Resize(ref _buf, Math.Max(_buf.Length * 2, _len + piece.Length));
        piece.CopyTo(0, _buf, _len, piece.Length);
        _len += piece.Length;
        if (_lead == before) while (_lead < _len && char.IsWhiteSpace(_buf[_lead])) _lead++;
        // No stop string lay in the text before: a new one must end inside the piece.
        int from = Math.Max(0, before - _longestStop + 1);
        var window = new ReadOnlySpan<char>(_buf, from, _len - from);
        foreach (var s in _stops)
        {
            int i = window.IndexOf(s.AsSpan(), StringComparison.Ordinal);
            if (i >= 0 && (_cut < 0 || from + i < _cut)) _cut = from + i;
        }
    }

    private int PossibleStopPrefix()
    {
        int longest = 0;
        var text = new ReadOnlySpan<char>(_buf, 0, _len);
        foreach (var s in _stops)
            for (int k = Math.Min(s.Length - 1, _len); k > longest; k--)
                if (text[^k..].SequenceEqual(s.AsSpan(0, k))) { longest = k; break; }
        return longest;
    }
}
