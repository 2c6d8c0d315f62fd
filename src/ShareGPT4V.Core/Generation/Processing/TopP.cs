namespace ShareGPT4V.Generation.Processing;

/// <summary>
/// transformers' <c>TopPLogitsWarper</c> (nucleus): the scores sorted ascending, their softmax accumulated; the ids
/// whose cumulative probability is ≤ 1 - p are removed (-inf), except the <c>minTokensToKeep</c> largest. Ids of
/// probability exactly 0 are therefore always removed, even with p = 1. Only the high end of the scores is sorted
/// (the part the nucleus can reach). Where the boundary falls inside a group of equal scores, which of them survive
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
        int v = scores.Length;
        if (_order.Length < v)
        {
            _order = new int[v];
            _sorted = new float[v];
            _probs = new float[v];
        }
        var probs = _probs.AsSpan(0, v);
        ScoreMath.Softmax(scores, probs); // elementwise as over the sorted row; the sum is taken in double, so its order does not matter
        int finite = 0;
        foreach (var x in scores) if (!float.IsNegativeInfinity(x)) finite++;

        // Only the high end needs sorting: take the m largest scores (ties at the m-th included); if everything
        // below them has an ascending cumulative mass ≤ 1 - p (so it is all removed, whatever its order), sort just
        // those m; otherwise double m. A cumulative sum only grows, so the low part's last partial sum decides.
        for (int m = Math.Min(64, finite); ; m = Math.Min(2 * m, finite))
        {
            float threshold = m >= finite ? float.NegativeInfinity : ScoreMath.KthLargest(scores, m, _sorted.AsSpan(0, v));
            double low = 0;
            int n = 0;
            for (int i = 0; i < v; i++)
            {
                float x = scores[i];
                if (float.IsNegativeInfinity(x)) continue;
                if (x >= threshold) { _order[n] = i; _sorted[n] = x; n++; }
                else low += probs[i];
            }
            if (m < finite && !(n >= MinTokensToKeep && (float)low <= _removeAtOrBelow)) continue;
            for (int i = 0; i < v; i++)
                if (scores[i] < threshold) scores[i] = float.NegativeInfinity;
            var sorted = _sorted.AsSpan(0, n);
            var order = _order.AsSpan(0, n);
            sorted.Sort(order); // ascending
            // libtorch's CPU cumsum accumulates float32 in double and rounds each partial sum to float32.
            double cum = low;
            int keepFrom = n - MinTokensToKeep; // the last minTokensToKeep positions are always kept
            for (int j = 0; j < n; j++)
            {
                cum += probs[order[j]];
                if (j < keepFrom && (float)cum <= _removeAtOrBelow) scores[order[j]] = float.NegativeInfinity;
            }
            return;
        }
    }

    public override string Describe() => $"TopPLogitsWarper(top_p={P}, min_tokens_to_keep={MinTokensToKeep})";
}
