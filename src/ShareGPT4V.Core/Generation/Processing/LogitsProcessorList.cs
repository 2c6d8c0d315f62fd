namespace ShareGPT4V.Generation.Processing;

/// <summary>
/// The processors <c>generate()</c> of transformers 4.45.2 builds for a set of options, in its order:
/// repetition penalty (penalty ≠ 1), no-repeat n-gram (size &gt; 0), then only when sampling (temperature &gt; 0):
/// temperature (≠ 1), top-k (≠ 0), top-p (&lt; 1), min-p (set). Beam search with sampling keeps at least
/// 2 tokens (one end-of-sequence id + 1) in the truncating warpers, plain sampling 1.
/// </summary>
internal sealed class LogitsProcessorList
{
    private readonly LogitsProcessor[] _processors;

    private LogitsProcessorList(LogitsProcessor[] processors) => _processors = processors;

    public IReadOnlyList<LogitsProcessor> Processors => _processors;

    /// <summary>True when no processor is built: the scores are used as they come.</summary>
    public bool IsEmpty => _processors.Length == 0;

    /// <summary>True when a processor reads the history (so the caller must keep one).</summary>
    public bool NeedsHistory => _processors.Any(p => p is RepetitionPenalty or NoRepeatNGram);

    public static LogitsProcessorList For(GenerationOptions options)
    {
        var list = new List<LogitsProcessor>();
        if (options.RepetitionPenalty != 1.0) list.Add(new RepetitionPenalty(options.RepetitionPenalty));
        if (options.NoRepeatNGramSize > 0) list.Add(new NoRepeatNGram(options.NoRepeatNGramSize));
        if (!options.IsGreedy)
        {
            int minKeep = options.NumBeams > 1 ? 2 : 1;
            if (options.Temperature != 1.0) list.Add(new Temperature(options.Temperature));
            if (options.TopK != 0) list.Add(new TopK(options.TopK, minKeep));
            if (options.TopP < 1.0) list.Add(new TopP(options.TopP, minKeep));
            if (options.MinP is double minP) list.Add(new MinP(minP, minKeep));
        }
        return new LogitsProcessorList(list.ToArray());
    }

    /// <summary>Applies every processor in order to <paramref name="scores"/>, in place.</summary>
    public void Apply(ReadOnlySpan<int> history, Span<float> scores)
    {
        foreach (var p in _processors) p.Apply(history, scores);
    }
}
