using ShareGPT4V.Generation;
using Xunit;

namespace ShareGPT4V.Tests.Decoding;

/// <summary>
/// The sampler's draws against the probabilities transformers' processors give (the goldens' <c>probs</c>): the
/// drawn ids are exactly the kept set, and their frequencies pass a chi-square bound.
/// </summary>
public sealed class SamplerTests
{
    private static ProcessorGoldens G => ProcessorGoldens.Instance;

    [Theory]
    [InlineData("gen_sample_t0.7_p0.9_tiny_last", 20_000)]
    [InlineData("gen_sample_all_tiny_last", 20_000)]        // repetition penalty + n-gram with the history, then every warper
    [InlineData("gen_llava_eval_t0.2_llama_last", 4_000)]   // LLaVA's evaluation settings on a 32k vocabulary
    [InlineData("gen_sample_t1.5_minp0.1_syn_mixed", 20_000)]
    public void DrawsFollowTheProcessedDistribution(string caseId, int draws)
    {
        var c = G.Case(caseId);
        var options = ProcessorGoldens.OptionsFor(c.GetProperty("built_by").GetProperty("generate_kwargs")) with { Seed = 1234 };
        var logits = G.Row(c.GetProperty("row").GetString()!);
        var history = G.History(c.GetProperty("history").GetString()!);
        var probs = G.Tensor(c.GetProperty("outputs").GetProperty("probs").GetString()!);

        var sampler = new Sampler(options);
        var counts = new int[logits.Length];
        for (int i = 0; i < draws; i++) counts[sampler.Sample(logits, history)]++;

        // Never an id the processors removed; every kept id likely enough to be seen is seen.
        for (int id = 0; id < counts.Length; id++)
        {
            if (probs[id] == 0) Assert.True(counts[id] == 0, $"{caseId}: id {id} was removed by the processors but drawn {counts[id]} times");
            else if (probs[id] * draws >= 30) Assert.True(counts[id] > 0, $"{caseId}: id {id} (p = {probs[id]:G4}) was never drawn");
        }
        // Pearson's chi-square over the kept ids, the rare ones pooled so every cell expects at least 5 draws;
        // the bound is the mean plus 6 standard deviations of the chi-square distribution.
        double chi2 = 0, pooledP = 0, pooledN = 0;
        int cells = 0;
        for (int id = 0; id < counts.Length; id++)
        {
            if (probs[id] == 0) continue;
            double expected = probs[id] * draws;
            if (expected < 5) { pooledP += expected; pooledN += counts[id]; continue; }
            chi2 += (counts[id] - expected) * (counts[id] - expected) / expected;
            cells++;
        }
        if (pooledP > 0) { chi2 += (pooledN - pooledP) * (pooledN - pooledP) / pooledP; cells++; }
        int df = Math.Max(1, cells - 1);
        Assert.True(chi2 < df + 6 * Math.Sqrt(2.0 * df), $"{caseId}: chi-square {chi2:F1} with {df} degrees of freedom");
    }

    [Fact]
    public void AWrongTopPIsCaught()
    {
        // The same draws with top-p 0.95 instead of 0.9 reach ids the golden removed: the check above would fail.
        var c = G.Case("gen_sample_t0.7_p0.9_tiny_last");
        var probs = G.Tensor(c.GetProperty("outputs").GetProperty("probs").GetString()!);
        var logits = G.Row("tiny_last");
        var sampler = new Sampler(new GenerationOptions { Temperature = 0.7, TopK = 50, TopP = 0.95, Seed = 1234 });
        int outside = 0;
        for (int i = 0; i < 20_000; i++) if (probs[sampler.Sample(logits, ReadOnlySpan<int>.Empty)] == 0) outside++;
        Assert.True(outside > 0);
    }

    [Fact]
    public void TheSameSeedGivesTheSameDrawsAndAnotherSeedOthers()
    {
        var logits = G.Row("tiny_last");
        int[] Draws(int seed)
        {
            var s = new Sampler(new GenerationOptions { Temperature = 1.5, Seed = seed });
            return Enumerable.Range(0, 64).Select(_ => s.Sample(logits, ReadOnlySpan<int>.Empty)).ToArray();
        }
        Assert.Equal(Draws(7), Draws(7));
        Assert.NotEqual(Draws(7), Draws(8));
    }

    [Fact]
    public void GreedyTakesTheFirstArgmaxOfTheProcessedScores()
    {
        var c = G.Case("gen_greedy_ignores_warpers_tiny_last");
        var options = ProcessorGoldens.OptionsFor(c.GetProperty("built_by").GetProperty("generate_kwargs"));
        var sampler = new Sampler(options);
        int id = sampler.Sample(G.Row(c.GetProperty("row").GetString()!), G.History(c.GetProperty("history").GetString()!));
        Assert.Equal(c.GetProperty("argmax").GetInt32(), id);
        Assert.Equal(0, new Sampler(new GenerationOptions()).Sample(new float[] { 3, 1, 3 }, ReadOnlySpan<int>.Empty));
    }
}
