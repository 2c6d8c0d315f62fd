using ShareGPT4V.Generation.Processing;

namespace ShareGPT4V.Generation;

/// <summary>
/// Picks the next token of one sequence from its row of logits: the options' logits processors (see
/// <see cref="GenerationOptions"/> for the list and order), then the first argmax when greedy, otherwise a draw from
/// the softmax of the processed scores with a generator seeded per request (no global random state).
/// One sampler serves one sequence on one thread: it keeps its scratch buffers between calls, so a decode step
/// allocates nothing.
/// </summary>
internal sealed class Sampler
{
    private readonly GenerationOptions _options;
    private readonly LogitsProcessorList _processors;
    private readonly Random _random;
    private float[] _scores = Array.Empty<float>();

    /// <summary>A sampler for one sequence; the options are validated.</summary>
    public Sampler(GenerationOptions options)
    {
        options.Validate();
        _options = options;
        _processors = LogitsProcessorList.For(options);
        _random = options.Seed is int s ? new Random(s) : new Random();
    }

    /// <summary>
    /// True when the processors read the history; when false, <see cref="Sample"/> may be given an empty one.
    /// </summary>
    public bool NeedsHistory => _processors.NeedsHistory;

    /// <summary>
    /// The next token for <paramref name="logits"/> ([vocabulary], one row, unchanged) given
    /// <paramref name="history"/>, the ids the processors see: for a llava-hf checkpoint the prompt ids (image token
    /// ids expanded, one per image feature) followed by the generated ids; for an original-layout checkpoint the
    /// generated ids only.
    /// </summary>
    public int Sample(ReadOnlySpan<float> logits, ReadOnlySpan<int> history)
    {
        if (_processors.IsEmpty && _options.IsGreedy) return ArgMax(logits);
        if (_scores.Length != logits.Length) _scores = new float[logits.Length];
        var scores = _scores.AsSpan();
        logits.CopyTo(scores);
        _processors.Apply(history, scores);
        if (_options.IsGreedy) return ArgMax(scores);
        return Draw(scores, _random.NextDouble());
    }

    /// <summary>
    /// The id whose cumulative softmax mass first exceeds <paramref name="u"/> ∈ [0, 1), walking ids in order;
    /// <paramref name="scores"/> is overwritten with the probabilities.
    /// </summary>
    internal static int Draw(Span<float> scores, double u)
    {
        ScoreMath.Softmax(scores, scores);
        double total = 0;
        foreach (var p in scores) if (p > 0) total += p; // float32 probabilities do not sum to exactly 1
        if (!(total > 0)) throw new InvalidOperationException("Every token was removed by the logits processors");
        double target = u * total, acc = 0;
        int last = -1;
        for (int i = 0; i < scores.Length; i++)
        {
            if (!(scores[i] > 0)) continue;
            acc += scores[i];
            last = i;
            if (target < acc) return i;
        }
        return last;
    }

    /// <summary>The first index of the largest score.</summary>
    public static int ArgMax(ReadOnlySpan<float> scores) => ScoreMath.ArgMax(scores);
}
