namespace ShareGPT4V.Generation.Processing;

/// <summary>
/// transformers' <c>NoRepeatNGramLogitsProcessor</c>: an id that would complete an n-gram already present in the
/// history gets -inf. The last n-1 ids of the history are matched against every earlier window of n-1 ids; the id
/// that followed each match is banned. n = 1 bans every id of the history.
/// </summary>
internal sealed class NoRepeatNGram : LogitsProcessor
{
    public NoRepeatNGram(int size)
    {
        if (size <= 0) throw new ArgumentOutOfRangeException(nameof(size), size, "The n-gram size must be > 0");
        Size = size;
    }

    public int Size { get; }

    public override void Apply(ReadOnlySpan<int> history, Span<float> scores)
    {
        int n = Size, len = history.Length;
        if (len + 1 < n) return; // no complete n-gram can be formed yet
        var tail = history.Slice(len - n + 1, n - 1);
        for (int i = 0; i + n <= len; i++)
        {
            if (!history.Slice(i, n - 1).SequenceEqual(tail)) continue;
            int banned = history[i + n - 1];
            if ((uint)banned < (uint)scores.Length) scores[banned] = float.NegativeInfinity;
        }
    }

    public override string Describe() => $"NoRepeatNGramLogitsProcessor(ngram_size={Size})";
}
