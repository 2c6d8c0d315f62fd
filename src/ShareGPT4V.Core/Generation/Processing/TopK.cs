namespace ShareGPT4V.Generation.Processing;

/// <summary>
/// transformers' <c>TopKLogitsWarper</c>: with k' = min(max(k, minTokensToKeep), V), every score strictly below the
/// k'-th largest becomes -inf, so ties at the boundary are all kept. The k'-th largest is found by selection, not by
/// sorting the vocabulary.
/// </summary>
internal sealed class TopK : LogitsProcessor
{
    private float[] _scratch = Array.Empty<float>();

    public TopK(int k, int minTokensToKeep = 1)
    {
        if (k <= 0) throw new ArgumentOutOfRangeException(nameof(k), k, "top-k must be > 0");
        if (minTokensToKeep <= 0) throw new ArgumentOutOfRangeException(nameof(minTokensToKeep), minTokensToKeep, "min_tokens_to_keep must be > 0");
        K = Math.Max(k, minTokensToKeep);
    }

    /// <summary>k after raising it to the minimum number of tokens to keep (what transformers stores).</summary>
    public int K { get; }

    public override void Apply(ReadOnlySpan<int> history, Span<float> scores)
    {
        int k = Math.Min(K, scores.Length);
        if (k >= scores.Length) return;
        if (_scratch.Length != scores.Length) _scratch = new float[scores.Length];
        float threshold = ScoreMath.KthLargest(scores, k, _scratch);
        for (int i = 0; i < scores.Length; i++)
            if (scores[i] < threshold) scores[i] = float.NegativeInfinity;
    }

    public override string Describe() => $"TopKLogitsWarper(top_k={K})";
}
