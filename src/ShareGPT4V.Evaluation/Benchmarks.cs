using ShareGPT4V.Evaluation.Scorers;

namespace ShareGPT4V.Evaluation;

/// <summary>The benchmarks this package knows, by command-line name.</summary>
public static class Benchmarks
{
    private static readonly Func<IBenchmark>[] Factories =
    {
        () => new PopeBenchmark(),
        () => new ScienceQaBenchmark(),
        () => new TextVqaBenchmark(),
        () => new MmeBenchmark(),
        () => new SeedBenchmark(),
        () => new GqaBenchmark(),
        () => new MmBenchBenchmark(),
        () => new MmBenchBenchmark(chinese: true),
        () => new QBenchBenchmark(),
        () => new QBenchBenchmark(chinese: true),
        () => new VqaBenchmark(),
        () => new VqaBenchmark(vizWiz: true),
        () => new Judging.LlavaBenchJudge(),
        () => new Judging.MmVetJudge(),
        () => new ShapesBenchmark(),
    };

    /// <summary>Every benchmark, one instance each.</summary>
    public static IReadOnlyList<IBenchmark> All => Factories.Select(f => f()).ToList();

    /// <summary>Names accepted by <see cref="Get"/>.</summary>
    public static IReadOnlyList<string> Names => All.Select(b => b.Name).ToList();

    /// <summary>The benchmark of that name, or null.</summary>
    public static IBenchmark? TryGet(string name)
    {
        var wanted = name.Trim().ToLowerInvariant().Replace('_', '-');
        return All.FirstOrDefault(b => b.Name == wanted);
    }

    /// <summary>The benchmark of that name (case-insensitive; <c>_</c> and <c>-</c> are the same).</summary>
    /// <exception cref="ArgumentException">No benchmark has that name.</exception>
    public static IBenchmark Get(string name)
    {
        return TryGet(name) ?? throw new ArgumentException($"Unknown benchmark '{name}' (known: {string.Join(", ", Names)})", nameof(name));
    }
}
