namespace ShareGPT4V.Generation.Processing;

/// <summary>
/// transformers' <c>RepetitionPenaltyLogitsProcessor</c>: every distinct id of the history has its score multiplied by
/// the penalty when negative, divided by it otherwise (0 included). An id repeated in the history is penalised once;
/// a penalty below 1 rewards the ids instead.
/// </summary>
internal sealed class RepetitionPenalty : LogitsProcessor
{
    private readonly float _penalty;
    private bool[] _done = Array.Empty<bool>();

    public RepetitionPenalty(double penalty)
    {
        if (!(penalty > 0) || double.IsInfinity(penalty)) throw new ArgumentOutOfRangeException(nameof(penalty), penalty, "The repetition penalty must be a finite number > 0");
        Penalty = penalty;
        _penalty = (float)penalty; // libtorch applies a Python float to a float32 tensor in float32
    }

    public double Penalty { get; }

    public override void Apply(ReadOnlySpan<int> history, Span<float> scores)
    {
        if (history.IsEmpty) return;
        if (_done.Length != scores.Length) _done = new bool[scores.Length];
        foreach (var id in history)
        {
            // The reference raises on an id outside the vocabulary (its gather fails); the pipeline never passes one.
            if ((uint)id >= (uint)scores.Length)
                throw new ArgumentOutOfRangeException(nameof(history), id, $"History id {id} is outside the vocabulary of {scores.Length}");
            if (_done[id]) continue;
            _done[id] = true;
            float s = scores[id];
            scores[id] = s < 0 ? s * _penalty : s / _penalty;
        }
        foreach (var id in history) _done[id] = false;
    }

    public override string Describe() => $"RepetitionPenaltyLogitsProcessor(penalty={Penalty})";
}
