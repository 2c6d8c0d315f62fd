using System.Globalization;

namespace ShareGPT4V.Evaluation;

/// <summary>One shard of a benchmark: part <see cref="Index"/> (0-based) of <see cref="Count"/>.</summary>
/// <param name="Index">0-based shard index.</param>
/// <param name="Count">Number of shards.</param>
public readonly record struct Shard(int Index, int Count)
{
    /// <summary>The whole benchmark.</summary>
    public static Shard All => new(0, 1);

    /// <summary>Environment variables of a Kubernetes Indexed Job.</summary>
    public const string IndexVariable = "JOB_COMPLETION_INDEX", CountVariable = "JOB_COMPLETIONS";

    /// <summary>Parses <c>i/N</c> (0 ≤ i &lt; N).</summary>
    /// <exception cref="FormatException">Not of that form.</exception>
    public static Shard Parse(string text)
    {
        var parts = text.Split('/');
        if (parts.Length != 2
            || !int.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out var i)
            || !int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out var n)
            || n < 1 || i >= n)
            throw new FormatException($"a shard is 'i/N' with 0 <= i < N, got '{text}'");
        return new Shard(i, n);
    }

    /// <summary>The shard from <c>JOB_COMPLETION_INDEX</c> and <c>JOB_COMPLETIONS</c>, or null when they are not set.</summary>
    /// <exception cref="FormatException">They are set but not valid.</exception>
    public static Shard? FromEnvironment(Func<string, string?>? getVariable = null)
    {
        getVariable ??= Environment.GetEnvironmentVariable;
        var index = getVariable(IndexVariable);
        var count = getVariable(CountVariable);
        if (string.IsNullOrEmpty(index) && string.IsNullOrEmpty(count)) return null;
        if (string.IsNullOrEmpty(index) || string.IsNullOrEmpty(count))
            throw new FormatException($"{IndexVariable} and {CountVariable} must be set together");
        return Parse($"{index}/{count}");
    }

    /// <summary>
    /// This shard's slice, as LLaVA's <c>get_chunk</c> cuts it: chunks of ceil(len / N) consecutive items (the last
    /// ones may be shorter or empty).
    /// </summary>
    public IReadOnlyList<T> Slice<T>(IReadOnlyList<T> items)
    {
        if (Count == 1) return items;
        int size = (items.Count + Count - 1) / Count;
        int start = Math.Min(items.Count, Index * size);
        int end = Math.Min(items.Count, start + size);
        return items.Skip(start).Take(end - start).ToList();
    }

    /// <inheritdoc/>
    public override string ToString() => $"{Index}/{Count}";
}
