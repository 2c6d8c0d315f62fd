using System.Runtime.InteropServices;
using ShareGPT4V.Generation.Processing;

namespace ShareGPT4V.Generation;

/// <summary>
/// Beam search for one prompt, as transformers 4.45.2's <c>generate(num_beams=B, do_sample=False)</c> does it, with
/// the model left outside: <see cref="Step"/> takes the logits of the B beams and says which beam each cache row
/// continues (<see cref="SourceBeams"/>) and with which token (<see cref="NextTokens"/>).
/// <list type="number">
/// <item>The B beams start as copies of the prompt; running scores 0 for beam 0 and -1e9 for the others, so the first
/// step expands beam 0 only.</item>
/// <item>Per beam: log_softmax of the logits (float32), then the logits processors with that beam's own history
/// (a repetition penalty therefore always multiplies), plus the beam's running score.</item>
/// <item>The best 2B of the B×V candidates, walked in order: an end-of-sequence candidate ranked below B closes its
/// beam (without the EOS) into a finished hypothesis scored candidate / (t+1)^LengthPenalty; one ranked B or lower is
/// skipped; any other candidate continues as a running beam, until B are running.</item>
/// <item>At most B finished hypotheses are kept, the best. Without early stopping the search ends once B are kept and
/// the worst of them is at least the best candidate of the step / (t+1)^LengthPenalty; with it, once B are kept.</item>
/// <item>When the token budget runs out, each running beam becomes a hypothesis scored running / N^LengthPenalty.
/// The answer is the best hypothesis (on equal scores, the one added later).</item>
/// </list>
/// </summary>
internal sealed class BeamSearch
{
    private readonly int _beams;
    private readonly int _eos;
    private readonly int _maxNewTokens;
    private readonly double _lengthPenalty;
    private readonly bool _earlyStopping;
    private readonly LogitsProcessorList[] _processors; // one per beam: processors keep scratch buffers
    private readonly int[] _prompt;
    private List<int>[] _tokens;          // generated ids of each running beam
    private float[] _running;             // running score of each beam
    private readonly List<(double Score, int[] Ids, bool Eos)> _finished = new();
    private double _worst = 1e9;
    private int _step;
    private float[] _scores = Array.Empty<float>();
    private readonly List<int> _history = new();

    /// <param name="options">Beams, length penalty, early stopping and the processors.</param>
    /// <param name="promptHistory">The prompt ids the processors see (empty for the original layout).</param>
    /// <param name="eosId">The end-of-sequence id, or -1 when it does not end a hypothesis.</param>
    /// <param name="maxNewTokens">Tokens to generate at most.</param>
    public BeamSearch(GenerationOptions options, IReadOnlyList<int> promptHistory, int eosId, int maxNewTokens)
    {
        _beams = options.NumBeams;
        _eos = eosId;
        _maxNewTokens = maxNewTokens;
        _lengthPenalty = options.LengthPenalty;
        _earlyStopping = options.EarlyStopping;
        _processors = Enumerable.Range(0, _beams).Select(_ => LogitsProcessorList.For(options)).ToArray();
        _prompt = promptHistory.ToArray();
        _tokens = Enumerable.Range(0, _beams).Select(_ => new List<int>()).ToArray();
        _running = new float[_beams];
        for (int b = 1; b < _beams; b++) _running[b] = -1e9f;
        SourceBeams = new int[_beams];
        NextTokens = new int[_beams];
    }

    public int Beams => _beams;

    /// <summary>After <see cref="Step"/> returned true: the beam whose cache row each row continues.</summary>
    public int[] SourceBeams { get; }

    /// <summary>After <see cref="Step"/> returned true: the token each row feeds next.</summary>
    public int[] NextTokens { get; }

    /// <summary>True once the search has ended (<see cref="Result"/> is final).</summary>
    public bool Done { get; private set; }

    /// <summary>
    /// Consumes the logits of the B beams (<paramref name="logits"/>, [B × V], beam-major) for the next position.
    /// Returns true when another step is needed: feed <see cref="NextTokens"/> after reordering the cache rows by
    /// <see cref="SourceBeams"/>.
    /// </summary>
    public bool Step(ReadOnlySpan<float> logits, int vocab)
    {
        if (Done) throw new InvalidOperationException("The beam search has ended");
        if (logits.Length != _beams * vocab) throw new ArgumentException($"Expected {_beams} x {vocab} logits, got {logits.Length}", nameof(logits));
        if (_scores.Length != logits.Length) _scores = new float[logits.Length];
        var all = _scores.AsSpan();
        logits.CopyTo(all);
        for (int b = 0; b < _beams; b++)
        {
            var row = all.Slice(b * vocab, vocab);
            ScoreMath.LogSoftmax(row);
            if (!_processors[b].IsEmpty)
            {
                _history.Clear();
                _history.AddRange(_prompt);
                _history.AddRange(_tokens[b]);
                _processors[b].Apply(CollectionsMarshal.AsSpan(_history), row);
            }
            float run = _running[b];
            for (int i = 0; i < row.Length; i++) row[i] += run;
        }

        var (candScores, candIds) = TopCandidates(all, 2 * _beams);
        int t = _step++;
        int generated = t + 1; // tokens in a hypothesis closed at this step, its EOS counted
        var newTokens = new List<int>[_beams];
        var newRunning = new float[_beams];
        int filled = 0;
        for (int rank = 0; rank < candIds.Length && filled < _beams; rank++)
        {
            int beam = candIds[rank] / vocab, token = candIds[rank] % vocab;
            if (token == _eos)
            {
                if (rank >= _beams) continue;
                AddHypothesis(_tokens[beam].ToArray(), candScores[rank], generated, eos: true);
                continue;
            }
            SourceBeams[filled] = beam;
            NextTokens[filled] = token;
            newRunning[filled] = candScores[rank];
            newTokens[filled] = new List<int>(_tokens[beam]) { token };
            filled++;
        }
        _tokens = newTokens;
        _running = newRunning;

        bool done = _finished.Count >= _beams
            && (_earlyStopping || _worst >= candScores[0] / Math.Pow(generated, _lengthPenalty));
        if (done) { Done = true; return false; }
        if (generated >= _maxNewTokens)
        {
            for (int b = 0; b < _beams; b++) AddHypothesis(_tokens[b].ToArray(), _running[b], generated, eos: false);
            Done = true;
            return false;
        }
        return true;
    }

    /// <summary>The best hypothesis: its generated ids (without the EOS), whether it ended with the EOS, and its score.</summary>
    public (int[] Ids, bool EndedWithEos, double Score) Result()
    {
        if (!Done) throw new InvalidOperationException("The beam search has not ended");
        int best = 0;
        for (int i = 1; i < _finished.Count; i++)
            if (_finished[i].Score >= _finished[best].Score) best = i; // equal scores: the later one
        var h = _finished[best];
        return (h.Ids, h.Eos, h.Score);
    }

    private void AddHypothesis(int[] ids, float sumLogProbs, int length, bool eos)
    {
        double score = sumLogProbs / Math.Pow(length, _lengthPenalty);
        if (_finished.Count < _beams || score > _worst)
        {
            _finished.Add((score, ids, eos));
            if (_finished.Count > _beams)
            {
                // Drop the worst (the earliest added among equals); the new worst is the next one up.
                var order = Enumerable.Range(0, _finished.Count).OrderBy(i => _finished[i].Score).ThenBy(i => i).ToArray();
                _worst = _finished[order[1]].Score;
                _finished.RemoveAt(order[0]);
            }
            else _worst = Math.Min(score, _worst);
        }
    }

    /// <summary>The k best (score, flat index) of <paramref name="scores"/>, best first; equal scores: lower index first.</summary>
    private static (float[] Scores, int[] Ids) TopCandidates(ReadOnlySpan<float> scores, int k)
    {
        k = Math.Min(k, scores.Length);
        var ids = new int[k];
        var vals = new float[k];
        int n = 0;
        for (int i = 0; i < scores.Length; i++)
        {
            float s = scores[i];
            if (n == k && !(s > vals[k - 1])) continue;
            int j = n < k ? n++ : k - 1;
            while (j > 0 && s > vals[j - 1]) { vals[j] = vals[j - 1]; ids[j] = ids[j - 1]; j--; }
            vals[j] = s;
            ids[j] = i;
        }
        return (vals, ids);
    }
}
