using System.Text.Json;
using ShareGPT4V.Evaluation;
using Xunit;

namespace ShareGPT4V.Tests.Evaluation;

/// <summary>
/// The oracle eval fixtures: synthetic annotations and awkward answers scored by the official scripts run unchanged
/// (expected.json). Every metric must come out of the CLI exactly (integers equal, floats within 1e-6).
/// </summary>
public class ScorerFixtureTests
{
    public static TheoryData<string> Fixtures => new() { "pope", "sqa", "textvqa", "mme", "seed", "gqa", "mmbench" };

    internal static string Dir(string benchmark) => Tests.Fixtures.Path(Path.Combine("eval", benchmark));

    internal static JsonElement Expected(string benchmark) =>
        JsonDocument.Parse(File.ReadAllText(Path.Combine(Dir(benchmark), "expected.json"))).RootElement;

    internal static void AssertMetrics(JsonElement expected, JsonElement actual, string path = "")
    {
        if (expected.ValueKind == JsonValueKind.Object)
        {
            Assert.True(actual.ValueKind == JsonValueKind.Object, $"{path}: expected an object, got {actual.ValueKind}");
            foreach (var p in expected.EnumerateObject())
            {
                Assert.True(actual.TryGetProperty(p.Name, out var a), $"missing metric {path}.{p.Name}");
                AssertMetrics(p.Value, a, $"{path}.{p.Name}");
            }
            return;
        }
        Assert.True(actual.ValueKind == JsonValueKind.Number, $"{path}: expected a number, got {actual.ValueKind}");
        if (expected.TryGetInt64(out var ei) && !expected.GetRawText().Contains('.'))
            Assert.True(actual.TryGetInt64(out var ai) && ai == ei, $"{path}: expected {ei}, got {actual.GetRawText()}");
        else
        {
            double e = expected.GetDouble(), a = actual.GetDouble();
            Assert.True(Math.Abs(e - a) <= 1e-6, $"{path}: expected {e:R}, got {a:R}");
        }
    }

    [Theory]
    [MemberData(nameof(Fixtures))]
    public void TheCliReproducesTheOfficialScriptsMetrics(string benchmark)
    {
        var expected = Expected(benchmark);
        var r = EvalCli.Run("eval", "score", "--benchmark", benchmark,
            "--answers", Path.Combine(Dir(benchmark), expected.GetProperty("answers").GetString()!),
            "--annotations", Path.Combine(Dir(benchmark), expected.GetProperty("annotations").GetString()!), "--json");
        Assert.True(r.ExitCode == 0, r.Err);
        var lines = r.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines); // one JSON object on stdout, logs on stderr
        AssertMetrics(expected.GetProperty("metrics"), JsonDocument.Parse(lines[0]).RootElement);
    }

    [Theory]
    [MemberData(nameof(Fixtures))]
    public void TheLibraryReportsTheSameMetricsAndHeadline(string benchmark)
    {
        var expected = Expected(benchmark);
        var report = Benchmarks.Get(benchmark).Score(Path.Combine(Dir(benchmark), expected.GetProperty("answers").GetString()!),
            Path.Combine(Dir(benchmark), expected.GetProperty("annotations").GetString()!));
        AssertMetrics(expected.GetProperty("metrics"), JsonDocument.Parse(report.ToJson()).RootElement);
        Assert.NotNull(report.Headline);
        Assert.Equal(0, report.SkippedLines); // the fixtures hold no unknown ids and no duplicate lines
    }
}
