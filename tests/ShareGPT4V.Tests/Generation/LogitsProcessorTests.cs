using System.Text.Json;
using ShareGPT4V.Generation.Processing;
using Xunit;

namespace ShareGPT4V.Tests.Decoding;

/// <summary>Every case of the transformers 4.45.2 logits-processor goldens, through our processors and list builder.</summary>
public sealed class LogitsProcessorTests
{
    private const double Tol = 1e-6;
    private static ProcessorGoldens G => ProcessorGoldens.Instance;

    public static TheoryData<string> CaseIds()
    {
        var data = new TheoryData<string>();
        foreach (var c in ProcessorGoldens.Instance.Cases) data.Add(c.GetProperty("id").GetString()!);
        return data;
    }

    [Theory, MemberData(nameof(CaseIds))]
    public void ProcessedScoresMatchTransformers(string id)
    {
        var c = G.Case(id);
        var scores = (float[])G.Row(c.GetProperty("row").GetString()!).Clone();
        if (c.GetProperty("input").GetString() == "log_softmax(row)") ScoreMath.LogSoftmax(scores);
        var history = G.History(c.GetProperty("history").GetString()!);

        // Cases built by generate(): our list builder must give the same processors; the scores go through it.
        IReadOnlyList<LogitsProcessor> processors;
        var built = c.GetProperty("built_by");
        if (built.ValueKind == JsonValueKind.Object)
        {
            processors = LogitsProcessorList.For(ProcessorGoldens.OptionsFor(built.GetProperty("generate_kwargs"))).Processors;
            var expected = c.GetProperty("processors").EnumerateArray().Select(p => ProcessorGoldens.Build(p).Describe()).ToArray();
            Assert.Equal(expected, processors.Select(p => p.Describe()).ToArray());
        }
        else processors = c.GetProperty("processors").EnumerateArray().Select(ProcessorGoldens.Build).ToList();
        foreach (var p in processors) p.Apply(history, scores);

        var golden = G.Tensor(c.GetProperty("outputs").GetProperty("scores").GetString()!);
        var goldenProbs = G.Tensor(c.GetProperty("outputs").GetProperty("probs").GetString()!);
        var probs = new float[scores.Length];
        ScoreMath.Softmax(scores, probs);
        Assert.Equal(c.GetProperty("kept").GetInt32(), scores.Count(float.IsFinite));
        if (c.GetProperty("permutation_sensitive").GetBoolean())
        {
            // The survivors inside a tie group (hence the argmax) are torch.sort's choice: only the count (above)
            // is meaningful, and every survivor keeps its input score.
            var input = G.Row(c.GetProperty("row").GetString()!);
            for (int i = 0; i < scores.Length; i++)
                if (float.IsFinite(scores[i])) Assert.Equal(input[i], scores[i]);
            return;
        }
        Assert.Equal(c.GetProperty("argmax").GetInt32(), ScoreMath.ArgMax(scores));
        double worst = 0, worstProb = 0;
        for (int i = 0; i < scores.Length; i++)
        {
            if (float.IsNegativeInfinity(golden[i]) || float.IsNegativeInfinity(scores[i]))
                Assert.True(golden[i] == scores[i], $"{id}: id {i} is {scores[i]}, transformers gives {golden[i]}");
            else worst = Math.Max(worst, Math.Abs(golden[i] - scores[i]));
            worstProb = Math.Max(worstProb, Math.Abs(goldenProbs[i] - probs[i]));
        }
        Assert.True(worst <= Tol, $"{id}: scores differ by {worst:E3}");
        Assert.True(worstProb <= Tol, $"{id}: probabilities differ by {worstProb:E3}");
    }

    [Fact]
    public void TheListsGenerateBuildsAreReproduced()
    {
        foreach (var combo in G.Index.GetProperty("generate_combos").EnumerateObject())
        {
            var options = ProcessorGoldens.OptionsFor(combo.Value.GetProperty("generate_kwargs"));
            var expected = combo.Value.GetProperty("processors_in_order").EnumerateArray().Select(p => ProcessorGoldens.Build(p).Describe());
            Assert.Equal(expected, LogitsProcessorList.For(options).Processors.Select(p => p.Describe()));
        }
    }

    [Fact]
    public void OurDefaultsBuildNoProcessorAndTopKZeroIsOff()
    {
        Assert.True(LogitsProcessorList.For(new ShareGPT4V.Generation.GenerationOptions()).IsEmpty);
        var sampling = LogitsProcessorList.For(new ShareGPT4V.Generation.GenerationOptions { Temperature = 0.7 });
        Assert.Equal(new[] { "TemperatureLogitsWarper(temperature=0.7)" }, sampling.Processors.Select(p => p.Describe()));
    }

    [Fact]
    public void SelectionFindsTheKthLargestAsASortWould()
    {
        var rng = new Random(5);
        for (int trial = 0; trial < 200; trial++)
        {
            int n = rng.Next(1, 3000);
            var v = Enumerable.Range(0, n).Select(_ => (float)Math.Round(rng.NextDouble() * 10, rng.Next(0, 3))).ToArray(); // many ties
            int k = trial % 2 == 0 ? rng.Next(1, Math.Min(n, 40) + 1) : rng.Next(1, n + 1); // both the heap and quickselect
            var sorted = v.OrderByDescending(x => x).ToArray();
            Assert.Equal(sorted[k - 1], ScoreMath.KthLargest(v, k, new float[n]));
        }
    }
}
