using System.Diagnostics;
using ShareGPT4V.Fuzzing;
using Xunit;
using Xunit.Abstractions;

namespace ShareGPT4V.Tests.Safety;

public sealed class FuzzTargetsFixture : IDisposable
{
    public FuzzTargets Targets { get; } = new(Fixtures.Root);
    public void Dispose() => Targets.Dispose();
}

/// <summary>
/// The bounded, in-CI part of the fuzzing (fuzz/ holds the coverage-guided harness): seeded mutations of the oracle
/// files go through the same targets, and every input must either load completely or be refused with a
/// <see cref="ShareGPT4VException"/>. No other exception, no hang, no outsized managed allocation.
/// Set SHAREGPT4V_FUZZ_CASES to run that many cases per target instead of the CI counts, and
/// SHAREGPT4V_FUZZ_SEED to vary the mutations.
/// </summary>
public sealed class MutationFuzzTests(FuzzTargetsFixture fixture, ITestOutputHelper output) : IClassFixture<FuzzTargetsFixture>
{
    /// <summary>No case may run this long: a case that does is a hang.</summary>
    private static readonly TimeSpan HangLimit = TimeSpan.FromMinutes(1);

    [Theory]
    [InlineData("safetensors", 800)]
    [InlineData("sharded", 500)]
    [InlineData("bin-zip", 800)]
    [InlineData("bin-legacy", 500)]
    [InlineData("gguf", 100)]
    [InlineData("config", 300)]
    [InlineData("tokenizer-json", 60)]
    [InlineData("tokenizer-model", 200)]
    [InlineData("tokenizer-config", 200)]
    [InlineData("preprocessor", 200)]
    [InlineData("image", 400)]
    public void EveryMutatedInputLoadsOrIsRefusedWithATypedError(string target, int ciCases)
    {
        int cases = int.TryParse(Environment.GetEnvironmentVariable("SHAREGPT4V_FUZZ_CASES"), out var n) && n > 0 ? n : ciCases;
        int seed = int.TryParse(Environment.GetEnvironmentVariable("SHAREGPT4V_FUZZ_SEED"), out var s) ? s : 20261;
        var seeds = SeedCorpus.For(target, Fixtures.Root).Select(x => x.Data).ToList();
        // string.GetHashCode differs between processes; a fixed function of the name keeps runs reproducible.
        int targetSeed = seed + target.Aggregate(0, (h, c) => h * 31 + c);
        var mutator = new Mutator(targetSeed);
        var pick = new Random(targetSeed);

        int accepted = 0, refused = 0, current = -1;
        long maxAllocated = 0;
        string? failure = null;
        var sw = Stopwatch.StartNew();
        var run = Task.Factory.StartNew(() =>
        {
            for (int i = 0; i < cases && failure is null; i++)
            {
                Volatile.Write(ref current, i);
                var input = mutator.Mutate(seeds[pick.Next(seeds.Count)], seeds);
                long before = GC.GetAllocatedBytesForCurrentThread();
                try
                {
                    if (fixture.Targets.Run(target, input) == FuzzOutcome.Accepted) accepted++; else refused++;
                }
                catch (Exception e)
                {
                    failure = Save(target, seed, i, input, $"{e.GetType().Name}: {e.Message}\n{e.StackTrace}");
                }
                long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
                maxAllocated = Math.Max(maxAllocated, allocated);
                // A header value must never turn into an allocation: allow generous work per input byte, no more.
                long budget = 256L * 1024 * 1024 + 200L * input.Length;
                if (allocated > budget && failure is null)
                    failure = Save(target, seed, i, input, $"allocated {allocated} managed bytes for a {input.Length}-byte input");
            }
        }, TaskCreationOptions.LongRunning);

        // Watch the progress, not the whole run: a long run by hand is fine, one case stuck is not.
        int seen = -1;
        var sinceProgress = Stopwatch.StartNew();
        while (!run.Wait(TimeSpan.FromSeconds(1)))
        {
            int now = Volatile.Read(ref current);
            if (now != seen) { seen = now; sinceProgress.Restart(); }
            Assert.True(sinceProgress.Elapsed < HangLimit, $"{target}: case {now} did not finish within {HangLimit} (hang)");
        }
        output.WriteLine($"{target}: {cases} cases, {accepted} accepted, {refused} refused, max managed allocation {maxAllocated >> 20} MiB, {sw.Elapsed.TotalSeconds:F1} s");
        Assert.True(failure is null, failure);
        Assert.True(refused > 0, "no mutation was refused: the mutator is not reaching the parser");
    }

    [Theory]
    [InlineData("safetensors")]
    [InlineData("sharded")]
    [InlineData("bin-legacy")]
    [InlineData("gguf")]
    [InlineData("config")]
    [InlineData("tokenizer-json")]
    [InlineData("tokenizer-model")]
    [InlineData("tokenizer-config")]
    [InlineData("preprocessor")]
    [InlineData("image")]
    public void UnmutatedSeedsAreAccepted(string target)
    {
        foreach (var (name, data) in SeedCorpus.For(target, Fixtures.Root))
        {
            // Configs of the real 7B models (and of the llama2-vocab case) parse but do not match the tiny weights the
            // target loads them against.
            if (target == "config" && (name.StartsWith("anchors", StringComparison.Ordinal) || name.Contains("hf_llama2vocab"))) continue;
            // The real index names shards that are not there.
            if (target == "sharded" && name.StartsWith("anchors", StringComparison.Ordinal)) continue;
            Assert.True(fixture.Targets.Run(target, data) == FuzzOutcome.Accepted, $"{target} seed {name} was refused");
        }
    }

    [Fact]
    public void TheBadPickleSeedsAreRefusedAndTheGoodOnesAccepted()
    {
        foreach (var (name, data) in SeedCorpus.For("bin-zip", Fixtures.Root))
            Assert.Equal(name.Contains("bad_pickles") ? FuzzOutcome.Refused : FuzzOutcome.Accepted, fixture.Targets.Run("bin-zip", data));
    }

    private static string Save(string target, int seed, int index, byte[] input, string what)
    {
        var path = Path.Combine(Path.GetTempPath(), $"sgpt4v-fuzz-{target}-{seed}-{index}.bin");
        File.WriteAllBytes(path, input);
        return $"{target} case {index} (seed {seed}, input {FuzzTargets.Describe(input)}, saved to {path}): {what}";
    }
}
