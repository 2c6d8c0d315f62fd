namespace ShareGPT4V.Generation.Processing;

/// <summary>
/// transformers' <c>MinPLogitsWarper</c>: with probs = softmax(scores), the ids with probability below
/// <c>p × max(probs)</c> are removed (-inf), except the <c>minTokensToKeep</c> with the highest scores.
/// </summary>
internal sealed class MinP : LogitsProcessor
{
    private readonly float _p;
    private float[] _probs = Array.Empty<float>();
    private float[] _scratch = Array.Empty<float>();

    public MinP(double p, int minTokensToKeep = 1)
    {
        if (!(p >= 0 && p <= 1)) throw new ArgumentOutOfRangeException(nameof(p), p, "min-p must be in [0, 1]");
        if (minTokensToKeep <= 0) throw new ArgumentOutOfRangeException(nameof(minTokensToKeep), minTokensToKeep, "min_tokens_to_keep must be > 0");
        P = p;
        _p = (float)p;
        MinTokensToKeep = minTokensToKeep;
    }

    public double P { get; }
    public int MinTokensToKeep { get; }

    public override void Apply(ReadOnlySpan<int> history, Span<float> scores)
    {
        if (_probs.Length != scores.Length) { _probs = new float[scores.Length]; _scratch = new float[scores.Length]; }
        ScoreMath.Softmax(scores, _probs);
        float top = 0;
        foreach (var q in _probs) if (q > top) top = q;
        float threshold = _p * top;
        // Exactly the k highest scores are always kept. On a tie at the k-th score the reference's argsort picks
        // which of the equal ids stay; here the lowest ids do (the count is what matches).
        int k = Math.Min(MinTokensToKeep, scores.Length);
        float floor = ScoreMath.KthLargest(scores, k, _scratch);
        int quota = k;
        foreach (var s in scores) if (s > floor) quota--;
        for (int i = 0; i < scores.Length; i++)
        {
            float s = scores[i];
            if (s > floor) continue;
            if (s == floor && quota > 0) { quota--; continue; }
            if (_probs[i] < threshold) scores[i] = float.NegativeInfinity;
        }
    }

    public override string Describe() => $"MinPLogitsWarper(min_p={P}, min_tokens_to_keep={MinTokensToKeep})";
}
