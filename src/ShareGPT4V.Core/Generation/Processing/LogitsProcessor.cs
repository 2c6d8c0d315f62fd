namespace ShareGPT4V.Generation.Processing;

/// <summary>
/// One step of transformers' logits processing: rewrites one row of scores in place, given the ids the processor sees
/// (the history: which ids those are depends on the checkpoint layout, see <see cref="GenerationOptions"/>).
/// Instances keep scratch buffers, so one instance serves one request on one thread.
/// </summary>
internal abstract class LogitsProcessor
{
    /// <summary>Rewrites <paramref name="scores"/> ([V], float32) in place.</summary>
    public abstract void Apply(ReadOnlySpan<int> history, Span<float> scores);

    /// <summary>The name transformers gives this processor, and its arguments, for comparisons with the reference's lists.</summary>
    public abstract string Describe();
}

/// <summary>Float32 arithmetic shared by the processors, written to round as libtorch's CPU kernels do.</summary>
internal static class ScoreMath
{
    /// <summary>
    /// softmax in float32: subtract the maximum, exponentiate, sum, multiply by the reciprocal of the sum
    /// (-inf gives 0). Writes into <paramref name="probs"/>.
    /// </summary>
    public static void Softmax(ReadOnlySpan<float> scores, Span<float> probs)
    {
        float max = float.NegativeInfinity;
        foreach (var s in scores) if (s > max) max = s;
        if (float.IsNegativeInfinity(max)) { probs.Fill(float.NaN); return; } // as torch: an all -inf row has no distribution
        double sum = 0; // libtorch sums in vector lanes; a double sum is as close to the exact value
        for (int i = 0; i < scores.Length; i++)
        {
            float x = scores[i];
            float e = float.IsNegativeInfinity(x) ? 0f : MathF.Exp(x - max); // after top-k most entries are -inf
            probs[i] = e;
            sum += e;
        }
        float inv = 1f / (float)sum;
        for (int i = 0; i < probs.Length; i++) probs[i] *= inv;
    }

    /// <summary>log_softmax in float32, in place: x - max - log(sum(exp(x - max))).</summary>
    public static void LogSoftmax(Span<float> scores)
    {
        float max = float.NegativeInfinity;
        foreach (var s in scores) if (s > max) max = s;
        if (float.IsNegativeInfinity(max)) return;
        double sum = 0;
        foreach (var s in scores) sum += MathF.Exp(s - max);
        float logSum = (float)Math.Log(sum);
        for (int i = 0; i < scores.Length; i++) scores[i] = scores[i] - max - logSum;
    }

    /// <summary>The first index of the largest score (torch.argmax's choice on ties).</summary>
    public static int ArgMax(ReadOnlySpan<float> scores)
    {
        int best = 0;
        for (int i = 1; i < scores.Length; i++)
            if (scores[i] > scores[best]) best = i;
        return best;
    }

    /// <summary>
    /// The k-th largest value of <paramref name="scores"/> (1 ≤ k ≤ length, duplicates counted), without sorting the
    /// vocabulary: for a small k one pass keeps the k largest in a min-heap (most values fail the first comparison);
    /// otherwise quickselect on <paramref name="scratch"/> (same length as the scores).
    /// </summary>
    public static float KthLargest(ReadOnlySpan<float> scores, int k, Span<float> scratch)
    {
        if (k <= 0 || k > scores.Length) throw new ArgumentOutOfRangeException(nameof(k), k, $"k must be in [1, {scores.Length}]");
        return k <= 1024 && k * 8 <= scores.Length ? KthLargestByHeap(scores, k, scratch[..k]) : KthLargestBySelect(scores, k, scratch);
    }

    private static float KthLargestByHeap(ReadOnlySpan<float> scores, int k, Span<float> heap)
    {
        for (int i = 0; i < k; i++) heap[i] = scores[i];
        for (int i = k / 2 - 1; i >= 0; i--) SiftDown(heap, i);
        for (int i = k; i < scores.Length; i++)
        {
            float v = scores[i];
            if (!(v > heap[0])) continue;
            heap[0] = v;
            SiftDown(heap, 0);
        }
        return heap[0];
    }

    private static void SiftDown(Span<float> heap, int i)
    {
        int n = heap.Length;
        float v = heap[i];
        while (true)
        {
            int c = 2 * i + 1;
            if (c >= n) break;
            if (c + 1 < n && heap[c + 1] < heap[c]) c++;
            if (!(heap[c] < v)) break;
            heap[i] = heap[c];
            i = c;
        }
        heap[i] = v;
    }

    private static float KthLargestBySelect(ReadOnlySpan<float> scores, int k, Span<float> scratch)
    {
        scores.CopyTo(scratch);
        int lo = 0, hi = scores.Length - 1, target = k - 1; // index in descending order
        uint state = 0x9E3779B9; // fixed pivots: the result does not depend on them, only the time does
        while (lo < hi)
        {
            state = state * 1664525 + 1013904223;
            float pivot = scratch[lo + (int)(state % (uint)(hi - lo + 1))];
            // Three-way partition into > pivot, == pivot, < pivot (descending), so ties cannot make it loop.
            int lt = lo, i = lo, gt = hi;
            while (i <= gt)
            {
                float v = scratch[i];
                if (v > pivot) { (scratch[lt], scratch[i]) = (scratch[i], scratch[lt]); lt++; i++; }
                else if (v < pivot) { (scratch[gt], scratch[i]) = (scratch[i], scratch[gt]); gt--; }
                else i++;
            }
            if (target < lt) hi = lt - 1;
            else if (target > gt) lo = gt + 1;
            else return pivot;
        }
        return scratch[target];
    }
}
