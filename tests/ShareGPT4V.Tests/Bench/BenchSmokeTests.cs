using System.Text.Json;
using ShareGPT4V.Bench;
using ShareGPT4V.Checkpoints;
using ShareGPT4V.Configuration;
using TorchSharp;
using Xunit;

namespace ShareGPT4V.Tests.Bench;

/// <summary>
/// The benchmark tool on a tiny checkpoint it makes itself: the maker's output is deterministic, sharded with an index
/// and loads; a run prints every field of the JSON line with sane values. Figures are not judged here (that is what
/// running the bench by hand on the benchmark-size model is for).
/// </summary>
public sealed class BenchSmokeTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "sharegpt4v-bench-test-" + Guid.NewGuid().ToString("N"));

    /// <summary>The benchmark model's structure (GQA, llava-hf layout, LLaMA-2 vocabulary) at toy sizes.</summary>
    internal static readonly BenchModelSpec Tiny = new()
    {
        Vision = new ClipVisionConfig { HiddenSize = 32, IntermediateSize = 64, NumHiddenLayers = 3, NumAttentionHeads = 4, ImageSize = 56, PatchSize = 14 },
        Text = BenchModelSpec.Default.Text with { HiddenSize = 32, IntermediateSize = 64, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDim = 8 },
    };

    public void Dispose()
    {
        if (Directory.Exists(_dir)) Directory.Delete(_dir, recursive: true);
    }

    [Fact]
    public void CheckpointMakerIsDeterministicShardedAndLoads()
    {
        string a = Path.Combine(_dir, "a"), b = Path.Combine(_dir, "b");
        var result = CheckpointMaker.Make(a, Tiny, seed: 42, torch.ScalarType.Float32, maxShardBytes: 5_000_000);
        CheckpointMaker.Make(b, Tiny, seed: 42, torch.ScalarType.Float32, maxShardBytes: 5_000_000);

        Assert.NotNull(result.IndexFile);
        Assert.True(result.Files.Count >= 2, $"{result.Files.Count} shard(s)");
        foreach (var f in result.Files) Assert.True(new FileInfo(f).Length <= 5_000_000 + 64 * 1024, $"{f} is {new FileInfo(f).Length} bytes");
        foreach (var f in Directory.GetFiles(a))
            Assert.True(File.ReadAllBytes(f).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(b, Path.GetFileName(f)))), $"{Path.GetFileName(f)} differs between two runs");

        // Another seed gives other weights; the loader takes the folder as any llava-hf checkpoint.
        var c = Path.Combine(_dir, "c");
        CheckpointMaker.Make(c, Tiny, seed: 43, torch.ScalarType.Float32, maxShardBytes: 5_000_000);
        Assert.False(File.ReadAllBytes(result.Files[0]).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(c, Path.GetFileName(result.Files[0])))));
        using var model = ModelLoader.Load(a);
        Assert.Equal(2, model.Config.Text.NumHiddenLayers);
        Assert.Equal(2, model.Config.Text.NumKeyValueHeads);
        Assert.Equal(32064, model.Config.Text.VocabSize);
        Assert.Equal(CheckpointLayout.LlavaHf, model.Config.Layout);
    }

    [Fact]
    public void BFloat16CheckpointIsWrittenInBFloat16()
    {
        var result = CheckpointMaker.Make(_dir, Tiny, seed: 1, torch.ScalarType.BFloat16);
        using var reader = SafeTensorsFile.Open(Assert.Single(result.Files));
        Assert.All(reader.Names, n => Assert.Equal(torch.ScalarType.BFloat16, reader.GetInfo(n).DType));
    }

    [Fact]
    public void MakerRefusesANonEmptyFolderUnlessAskedToOverwrite()
    {
        Directory.CreateDirectory(_dir);
        File.WriteAllText(Path.Combine(_dir, "notes.txt"), "mine");
        var e = Assert.Throws<ModelConfigurationException>(() => CheckpointMaker.Make(_dir, Tiny, 1, torch.ScalarType.Float32));
        Assert.Contains("--out", e.Message);
        CheckpointMaker.Make(_dir, Tiny, 1, torch.ScalarType.Float32, overwrite: true);
        Assert.True(File.Exists(Path.Combine(_dir, "notes.txt")));
    }

    [Fact]
    public void RunPrintsEveryFieldWithSaneValues()
    {
        CheckpointMaker.Make(_dir, Tiny, seed: 7, torch.ScalarType.Float32);
        var options = BenchOptions.Parse(new[]
        {
            "--model", _dir, "--image", Fixtures.Path("oracle/hf_llama2vocab/image1.png"),
            "--max-new-tokens", "6", "--batch", "2", "--threads", "1", "--warmup-tokens", "1", "--bandwidth-mib", "8", "--repeat", "2", "--json",
        }) with { FmaSeconds = 0.01 };
        var result = BenchRunner.Run(options, TextWriter.Null);
        using var doc = JsonDocument.Parse(result.ToJsonLine());
        var root = doc.RootElement;

        string[] positive =
        {
            "load_s", "preprocess_ms", "vision_ms", "prefill_ms", "prefill_tokens_per_s", "ttft_ms", "decode_tokens_per_s",
            "decode_step_ms_median", "peak_rss_mb", "weights_mb", "kv_cache_mb", "rss_end_mb", "bandwidth_gbs", "fma_peak_gflops",
            "gemm_gflops", "matvec_gbs", "decode_bytes_per_token", "decode_bandwidth_ratio", "vision_gflop", "vision_gflops", "vision_fma_ratio",
            "prefill_gflop", "prefill_gflops", "prefill_fma_ratio", "peak_rss_over_weights_kv",
        };
        foreach (var name in positive)
        {
            Assert.True(root.TryGetProperty(name, out var v), $"missing field {name}");
            Assert.True(v.ValueKind == JsonValueKind.Number && double.IsFinite(v.GetDouble()) && v.GetDouble() > 0, $"{name} = {v}");
        }
        foreach (var reading in new[] { "limits_before", "limits_after" })
            foreach (var name in new[] { "bandwidth_gbs", "fma_peak_gflops", "gemm_gflops", "matvec_gbs" })
                Assert.True(root.GetProperty(reading).GetProperty(name).GetDouble() > 0, $"{reading}.{name}");
        Assert.Equal(Math.Max(root.GetProperty("limits_before").GetProperty("bandwidth_gbs").GetDouble(), root.GetProperty("limits_after").GetProperty("bandwidth_gbs").GetDouble()),
            root.GetProperty("bandwidth_gbs").GetDouble());
        // Stages of a toy model can be shorter than a tick of the CPU counters: then there is no reading (null).
        foreach (var stage in new[] { "vision", "prefill", "decode" })
            if (root.GetProperty($"other_cpu_{stage}_pct") is { ValueKind: JsonValueKind.Number } other)
                Assert.InRange(other.GetDouble(), 0, 100);
        Assert.InRange(root.GetProperty("checkpoint_cached_pct").GetDouble(), 0, 100);
        Assert.Equal(2, root.GetProperty("batch").GetInt32());
        Assert.Equal(6, root.GetProperty("new_tokens").GetInt32());
        Assert.Equal(2, root.GetProperty("repeat").GetInt32());
        Assert.Equal(4, root.GetProperty("decode_steps_measured").GetInt32()); // 5 steps after the prefill, 1 left out as warm-up
        // 16 image patches plus the 49 text tokens of the vicuna_v1 caption prompt (625 = 576 + 49 on the real tower).
        Assert.Equal(16 + 49, root.GetProperty("prompt_tokens").GetInt32());
        Assert.True(root.GetProperty("ttft_ms").GetDouble() >= root.GetProperty("prefill_ms").GetDouble());
        Assert.True(root.GetProperty("peak_rss_mb").GetDouble() >= root.GetProperty("rss_end_mb").GetDouble() * 0.99);
        Assert.Equal(JsonValueKind.Null, root.GetProperty("rss_token100_mb").ValueKind); // fewer than 100 tokens
        Assert.Contains("decode", result.ToTable());
    }

    [Theory]
    [InlineData(new[] { "--image", "x.png" }, "--model")]
    [InlineData(new[] { "--model", "m", "--image", "x.png", "--dtype", "int8" }, "--dtype")]
    [InlineData(new[] { "--model", "m", "--image", "x.png", "--threads", "0" }, "--threads")]
    [InlineData(new[] { "--model", "m", "--image", "x.png", "--batch" }, "--batch")]
    [InlineData(new[] { "--model", "m", "--image", "x.png", "--fast" }, "--fast")]
    public void BadOptionsNameTheOption(string[] args, string option)
    {
        var e = Assert.Throws<ModelConfigurationException>(() => BenchOptions.Parse(args));
        Assert.Contains(option, e.Message);
    }
}
