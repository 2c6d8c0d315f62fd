using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using ShareGPT4V.Tests.Oracle;
using Xunit;

namespace ShareGPT4V.Tests.Samples;

/// <summary>A folder of images and its unsharded, uninterrupted caption output, made once for the bulk-captioning tests.</summary>
public sealed class CaptionJobFixture : IDisposable
{
    internal GoldenCase Case { get; } = GoldenCase.Get("hf_llama2vocab");
    public string Dir { get; } = Directory.CreateTempSubdirectory("sgpt4v-bulk-").FullName;
    public string Images => Path.Combine(Dir, "images");
    public const int Count = 12;
    public IReadOnlyList<string> Reference { get; }

    public CaptionJobFixture()
    {
        Directory.CreateDirectory(Images);
        for (int i = 0; i < Count; i++)
            File.Copy(Path.Combine(Case.Dir, i % 3 == 0 ? "image2.png" : "image1.png"), Path.Combine(Images, $"img{i:D2}.png"));
        var output = Path.Combine(Dir, "reference.jsonl");
        var r = CaptionJobTests.Cli(null, CaptionJobTests.CaptionArgs(this, output, "--batch-size", "4"));
        Assert.True(r.ExitCode == 0, r.Err);
        Reference = CaptionJobTests.Records(output);
        Assert.Equal(Count, Reference.Count);
    }

    public void Dispose() => Directory.Delete(Dir, recursive: true);
}

/// <summary>
/// Bulk captioning with the CLI as a process: a run killed mid-way and restarted captions every image once, and four
/// shards merged equal the unsharded output.
/// </summary>
public sealed class CaptionJobTests(CaptionJobFixture f) : IClassFixture<CaptionJobFixture>
{
    internal sealed record Run(int ExitCode, string Out, string Err);

    internal static string[] CaptionArgs(CaptionJobFixture f, string output, params string[] more) =>
        new[] { "caption", "--model", f.Case.ModelPath, "--image", f.Images, "--template", "llava_v1", "--max-new-tokens", "24", "--output", output }
            .Concat(more).ToArray();

    private static ProcessStartInfo Start(string[] args, IDictionary<string, string>? env = null) =>
        CliProcess.StartInfo(args, environment: env);

    internal static Run Cli(IDictionary<string, string>? env, params string[] args)
    {
        using var p = Process.Start(Start(args, env))!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(120_000))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail("the CLI did not finish within 2 minutes");
        }
        return new Run(p.ExitCode, stdout.Result, stderr.Result);
    }

    /// <summary>The lines of a caption output without their timings (which differ run to run).</summary>
    internal static List<string> Records(string path) => File.ReadAllLines(path).Where(l => l.Length > 0).Select(l =>
    {
        var o = JsonNode.Parse(l)!.AsObject();
        o.Remove("timings_ms");
        return o.ToJsonString();
    }).ToList();

    [Fact]
    public async Task AKilledRunRestartedCaptionsEveryImageOnce()
    {
        var output = Path.Combine(f.Dir, "killed.jsonl");
        var args = CaptionArgs(f, output, "--batch-size", "1");
        using (var p = Process.Start(Start(args))!)
        {
            _ = p.StandardOutput.ReadToEndAsync();
            _ = p.StandardError.ReadToEndAsync();
            var until = DateTime.UtcNow.AddSeconds(60);
            while (!(File.Exists(output) && File.ReadAllText(output).Count(c => c == '\n') >= 2))
            {
                Assert.False(p.HasExited, "the run ended before it could be killed");
                Assert.True(DateTime.UtcNow < until, "no caption line appeared within 60 s");
                await Task.Delay(5);
            }
            p.Kill(entireProcessTree: true);
            await p.WaitForExitAsync();
        }
        int before = File.ReadAllLines(output).Length;
        Assert.InRange(before, 2, CaptionJobFixture.Count - 1);
        // As if the kill had cut a write short: the restart must drop this and redo that image.
        File.AppendAllText(output, "{\"index\":11,\"image\":\"" + Path.Combine(f.Images, "img11.png").Replace("\\", "\\\\") + "\",\"text\":\"half");

        var r = Cli(null, args);
        Assert.True(r.ExitCode == 0, r.Err);
        Assert.Contains("dropped a partial last line", r.Err);
        Assert.Contains($"resuming, {before} image(s)", r.Err);
        var records = Records(output);
        var images = records.Select(l => JsonDocument.Parse(l).RootElement.GetProperty("image").GetString()).ToList();
        Assert.Equal(images.Distinct().Count(), images.Count); // each image once
        Assert.Equal(f.Reference, records); // and the same captions as an uninterrupted run, in order

        // A finished output resumes to nothing.
        var again = Cli(null, args);
        Assert.True(again.ExitCode == 0, again.Err);
        Assert.Equal(f.Reference, Records(output));
    }

    [Fact]
    public async Task FourShardsMergedEqualTheUnshardedOutput()
    {
        var folder = Path.Combine(f.Dir, "shards");
        Directory.CreateDirectory(folder);
        var pattern = Path.Combine(folder, "captions-{shard}.jsonl");
        // Shards 0-2 by option, shard 3 as a Kubernetes Indexed Job pod sees it; all four at once.
        var runs = Enumerable.Range(0, 4).Select(i => Task.Run(() => i < 3
            ? Cli(null, CaptionArgs(f, pattern, "--shard", $"{i}/4", "--batch-size", "2"))
            : Cli(new Dictionary<string, string> { ["JOB_COMPLETION_INDEX"] = "3", ["JOB_COMPLETIONS"] = "4" }, CaptionArgs(f, pattern, "--batch-size", "2")))).ToArray();
        foreach (var r in await Task.WhenAll(runs)) Assert.True(r.ExitCode == 0, r.Err);
        for (int i = 0; i < 4; i++) Assert.Equal(CaptionJobFixture.Count / 4, Records(Path.Combine(folder, $"captions-{i}.jsonl")).Count);

        var merged = Path.Combine(f.Dir, "merged.jsonl");
        var m = Cli(null, "merge", "--input", folder, "--output", merged);
        Assert.True(m.ExitCode == 0, m.Err);
        Assert.Equal(f.Reference, Records(merged));

        var bad = Cli(null, CaptionArgs(f, pattern, "--shard", "4/4"));
        Assert.Equal(2, bad.ExitCode);
        Assert.Contains("--shard must be i/N", bad.Err);
    }
}
