using ShareGPT4V.Generation;
using Xunit;

namespace ShareGPT4V.Tests.Decoding;

/// <summary>
/// Beam search where the end-of-sequence token is chosen (no oracle run produces it), on a 3-token vocabulary
/// (0 = a, 1 = b, 2 = EOS) whose next-token probabilities depend on the beam's prefix. The expected answers are
/// worked out by hand from transformers' rules (the generation goldens' README, steps 1-5), 2 beams, 3 new tokens:
/// <code>
/// step 0 (beam 0 only)  p(· | "")  = a .5  b .2  EOS .3  → running a (ln .5), b (ln .2); EOS (rank 1) closes "" : ln .3 / 1^lp
/// step 1                p(· | a)   = a .9  b .05 EOS .05;   p(· | b) = a .1 b .1 EOS .8
///                       candidates aa -0.798, bEOS -1.832, ab -3.689 … → running aa, ab; "b" closes: -1.832 / 2^lp
/// step 2                p(· | aa)  = a .3  b .1  EOS .6;    p(· | ab) = a .4 b .3 EOS .3
///                       candidates aaEOS -1.309, aaa -2.002, aab -3.101 … → "aa" closes: -1.309 / 3^lp
/// </code>
/// </summary>
public sealed class BeamSearchTests
{
    private const int Eos = 2;

    private static readonly Dictionary<string, double[]> Next = new()
    {
        [""] = new[] { .5, .2, .3 },
        ["a"] = new[] { .9, .05, .05 },
        ["b"] = new[] { .1, .1, .8 },
        ["aa"] = new[] { .3, .1, .6 },
        ["ab"] = new[] { .4, .3, .3 },
    };

    private static (int[] Ids, bool Eos, double Score) Run(double lengthPenalty, bool earlyStopping)
    {
        var options = new GenerationOptions { NumBeams = 2, LengthPenalty = lengthPenalty, EarlyStopping = earlyStopping, MaxNewTokens = 3 };
        var search = new BeamSearch(options, Array.Empty<int>(), Eos, 3);
        var prefixes = new[] { "", "" };
        while (true)
        {
            // log(p) as logits: their log_softmax is log(p) again (up to rounding).
            var logits = prefixes.SelectMany(p => (Next.TryGetValue(p, out var q) ? q : new[] { 1 / 3.0, 1 / 3.0, 1 / 3.0 }).Select(x => (float)Math.Log(x))).ToArray();
            if (!search.Step(logits, 3)) break;
            prefixes = search.SourceBeams.Select((s, i) => prefixes[s] + "ab"[search.NextTokens[i]]).ToArray();
        }
        return search.Result();
    }

    [Fact]
    public void AHypothesisEndedByEosWinsOnItsLengthNormalisedScore()
    {
        // lp 1: "aa"+EOS scores (ln .5 + ln .9 + ln .6) / 3 = -0.436; the running "aaa" only -2.002 / 3 = -0.667.
        var (ids, eos, score) = Run(1.0, false);
        Assert.Equal(new[] { 0, 0 }, ids);
        Assert.True(eos);
        Assert.Equal((Math.Log(.5) + Math.Log(.9) + Math.Log(.6)) / 3, score, 5);
    }

    [Fact]
    public void EarlyStoppingEndsOnceBeamsHypothesesHaveFinished()
    {
        // After step 1 two hypotheses are done: "" (ln .3 = -1.204) and "b" ((ln .2 + ln .8) / 2 = -0.916).
        var (ids, eos, score) = Run(1.0, true);
        Assert.Equal(new[] { 1 }, ids);
        Assert.True(eos);
        Assert.Equal((Math.Log(.2) + Math.Log(.8)) / 2, score, 5);
    }

    [Fact]
    public void WithoutLengthNormalisationTheShortestHypothesisWinsAndTheSearchStopsWhenNothingCanBeatIt()
    {
        // lp 0: scores are plain sums. At step 2 "aa"+EOS (-1.309) pushes out "b" (-1.832); the worst kept (-1.309)
        // equals the best candidate (-1.309), so the search is done and the running beams are not added: "" wins.
        var (ids, eos, score) = Run(0.0, false);
        Assert.Empty(ids);
        Assert.True(eos);
        Assert.Equal(Math.Log(.3), score, 5);
    }

    [Fact]
    public void WithoutEosTheBestRunningBeamIsTheAnswer()
    {
        var options = new GenerationOptions { NumBeams = 2, MaxNewTokens = 3 };
        var search = new BeamSearch(options, Array.Empty<int>(), -1, 3);
        var prefixes = new[] { "", "" };
        string Label(int t) => t == Eos ? "e" : "ab"[t].ToString();
        while (true)
        {
            var logits = prefixes.SelectMany(p => (Next.TryGetValue(p, out var q) ? q : new[] { 1 / 3.0, 1 / 3.0, 1 / 3.0 }).Select(x => (float)Math.Log(x))).ToArray();
            if (!search.Step(logits, 3)) break;
            prefixes = search.SourceBeams.Select((s, i) => prefixes[s] + Label(search.NextTokens[i])).ToArray();
        }
        // EOS is an ordinary token here: "aa" then EOS (-1.309) beats "aaa" (-2.002); uniform prefixes never win.
        var (ids, eos, _) = search.Result();
        Assert.Equal(new[] { 0, 0, Eos }, ids);
        Assert.False(eos);
    }
}
