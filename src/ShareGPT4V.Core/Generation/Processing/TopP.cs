namespace ShareGPT4V.Generation.Processing;

/// <summary>
/// transformers' <c>TopPLogitsWarper</c> (nucleus): the scores sorted ascending, their softmax accumulated; the ids
/// whose cumulative probability is ≤ 1 - p are removed (-inf), except the <c>minTokensToKeep</c> largest. Ids of
/// probability exactly 0 are therefore always removed, even with p = 1. Only the finite scores are sorted (the others
/// have probability 0 and stay -inf). Where the boundary falls inside a group of equal scores, which of them survive
/// depends on the sort; transformers' unstable sort makes that choice arbitrary too (the count is what matches).
/// </summary>
internal sealed class TopP : LogitsProcessor
{
    private readonly float _removeAtOrBelow;
    private int[] _order = Array.Empty<int>();
    private float[] _sorted = Array.Empty<float>();
    private float[] _probs = Array.Empty<float>();

    public TopP(double p, int minTokensToKeep = 1)
    {
        if (!(p >= 0 && p <= 1)) throw new ArgumentOutOfRangeException(nameof(p), p, "top-p must be in [0, 1]");
        if (minTokensToKeep <= 0) throw new ArgumentOutOfRangeException(nameof(minTokensToKeep), minTokensToKeep, "min_tokens_to_keep must be > 0");
        P = p;
        MinTokensToKeep = minTokensToKeep;
        _removeAtOrBelow = (float)(1 - p); // compared in float32, as libtorch compares a float32 tensor with a Python float
    }

    public double P { get; }
    public int MinTokensToKeep { get; }

    public override void Apply(ReadOnlySpan<int> history, Span<float> scores)
    {
        if (_order.Length < scores.Length)
        {
            _order = new int[scores.Length];
            _sorted = new float[scores.Length];
            _probs = new float[scores.Length];
        }
        int n = 0;
        for (int i = 0; i < scores.Length; i++)
            if (!float.IsNegativeInfinity(scores[i])) { _order[n] = i; _sorted[n] = scores[i]; n++; }
        var sorted = _sorted.AsSpan(0, n);
        var order = _order.AsSpan(0, n);
        sorted.Sort(order); // ascending
        var probs = _probs.AsSpan(0, n);
        ScoreMath.Softmax(sorted, probs);
        // libtorch's CPU cumsum accumulates float32 in double and rounds each partial sum to float32.
        double cum = 0;
        int keepFrom = n - MinTokensToKeep; // positions >= keepFrom are always kept
        for (int j = 0; j < n; j++)
        {
            cum += probs[j];
            if (j < keepFrom && (float)cum <= _removeAtOrBelow) scores[order[j]] = float.NegativeInfinity;
        }
    }

    public override string Describe() => $"TopPLogitsWarper(top_p={P}, min_tokens_to_keep={MinTokensToKeep})";
}
