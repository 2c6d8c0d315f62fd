namespace ShareGPT4V.Generation;

/// <summary>
/// Picks the next token from one row of logits: argmax for greedy, otherwise repetition penalty, temperature,
/// top-k, top-p and a draw from a seeded generator owned by the request (no global random state).
/// </summary>
public sealed class Sampler
{
    private readonly GenerationOptions _options;
    private readonly Random _random;

    public Sampler(GenerationOptions options)
    {
        options.Validate();
        _options = options;
        _random = options.Seed is int s ? new Random(s) : new Random();
    }

    /// <summary>The next token for <paramref name="logits"/> given the ids seen so far (prompt text and output).</summary>
    public int Sample(ReadOnlySpan<float> logits, IReadOnlyCollection<int> seen)
    {
        var scores = logits.ToArray();
        if (_options.RepetitionPenalty != 1.0)
        {
            float p = (float)_options.RepetitionPenalty;
            foreach (var id in seen)
                if ((uint)id < (uint)scores.Length)
                    scores[id] = scores[id] < 0 ? scores[id] * p : scores[id] / p;
        }
        if (_options.IsGreedy) return ArgMax(scores);

        float t = (float)_options.Temperature;
        for (int i = 0; i < scores.Length; i++) scores[i] /= t;

        // Candidate set sorted by score, descending; ties keep the lower id first as a stable sort does.
        var order = Enumerable.Range(0, scores.Length).ToArray();
        Array.Sort(order, (a, b) => scores[b] != scores[a] ? scores[b].CompareTo(scores[a]) : a.CompareTo(b));
        int keep = order.Length;
        if (_options.TopK > 0) keep = Math.Min(keep, _options.TopK);

        double max = scores[order[0]];
        var probs = new double[keep];
        double sum = 0;
        for (int i = 0; i < keep; i++) { probs[i] = Math.Exp(scores[order[i]] - max); sum += probs[i]; }
        for (int i = 0; i < keep; i++) probs[i] /= sum;

        if (_options.TopP < 1.0)
        {
            // Keep the most likely tokens until their mass reaches top_p (at least one), as transformers' TopP does:
            // it removes tokens whose ascending cumulative mass is <= 1 - top_p.
            double cum = 0;
            int n = 0;
            for (; n < keep; n++)
            {
                cum += probs[n];
                if (cum >= _options.TopP) { n++; break; }
            }
            keep = Math.Max(1, Math.Min(n, keep));
            double s2 = 0;
            for (int i = 0; i < keep; i++) s2 += probs[i];
            for (int i = 0; i < keep; i++) probs[i] /= s2;
        }

        double r = _random.NextDouble();
        double acc = 0;
        for (int i = 0; i < keep; i++)
        {
            acc += probs[i];
            if (r < acc) return order[i];
        }
        return order[keep - 1];
    }

    public static int ArgMax(ReadOnlySpan<float> scores)
    {
        int best = 0;
        for (int i = 1; i < scores.Length; i++)
            if (scores[i] > scores[best]) best = i;
        return best;
    }
}
