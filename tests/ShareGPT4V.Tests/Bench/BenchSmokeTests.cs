using ShareGPT4V.CommandLineTools;
using System.Text.Json;
using ShareGPT4V.Bench;
using ShareGPT4V.Checkpoints;
using ShareGPT4V.Configuration;
using ShareGPT4V.Cuda;
using ShareGPT4V.Tests.Cuda;
using TorchSharp;
using Xunit;

namespace ShareGPT4V.Tests.Bench;

/// <summary>
/// The benchmark tool on a tiny checkpoint it makes itself: the maker's output is deterministic, sharded with an index
/// and loads; a run prints every field of the JSON line with sane values; the device provider's refusals come before
/// any weight is read (a fake probe stands in for CUDA). Figures are not judged here (that is what running the bench
/// by hand on the benchmark-size model is for).
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
        var inputs = Path.Combine(_dir, "inputs.safetensors");
        // auto on a machine whose probe finds no CUDA: the provider's CPU fallback, float32 by the CPU's dtype policy.
        var options = BenchOptions.Parse(new[]
        {
            "--model", _dir, "--image", Fixtures.Path("oracle/hf_llama2vocab/image1.png"), "--device", "auto", "--dump-inputs", inputs,
            "--max-new-tokens", "6", "--batch", "2", "--threads", "1", "--warmup-tokens", "1", "--bandwidth-mib", "8", "--repeat", "2", "--json",
        }) with { FmaSeconds = 0.01 };
        var log = new StringWriter();
        var result = BenchRunner.Run(options, log, NoCuda("no CUDA driver in this test"));
        using var doc = JsonDocument.Parse(result.ToJsonLine());
        var root = doc.RootElement;
        Assert.Equal("cpu", root.GetProperty("device").GetString());
        Assert.Equal("fp32", root.GetProperty("dtype").GetString());
        Assert.Contains("CPU fallback", root.GetProperty("placement").GetString());
        Assert.Contains("no CUDA driver in this test", log.ToString()); // the fallback is logged as a warning
        Assert.Contains("libtorch", root.GetProperty("libtorch").GetString());

        string[] positive =
        {
            "load_s", "preprocess_ms", "vision_ms", "prefill_ms", "prefill_tokens_per_s", "ttft_ms", "decode_tokens_per_s",
            "decode_step_ms_median", "peak_rss_mb", "weights_mb", "kv_cache_mb", "rss_end_mb", "bandwidth_gbs", "fma_peak_gflops",
            "gemm_gflops", "matvec_gbs", "decode_bytes_per_token", "decode_bandwidth_ratio", "vision_gflop", "vision_gflops", "vision_fma_ratio",
            "prefill_gflop", "prefill_gflops", "prefill_fma_ratio", "peak_rss_over_weights_kv", "decode_roofline_tokens_per_s",
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
        foreach (var gpuOnly in new[] { "device_mem_before_mb", "device_mem_peak_mb", "device_peak_over_weights_kv" })
            Assert.Equal(JsonValueKind.Null, root.GetProperty(gpuOnly).ValueKind);
        // The roofline is the measured bandwidth over the bytes of a step, for both rows: the ratio is its reciprocal share.
        Assert.Equal(root.GetProperty("decode_tokens_per_s").GetDouble() / root.GetProperty("decode_roofline_tokens_per_s").GetDouble(),
            root.GetProperty("decode_bandwidth_ratio").GetDouble(), 9);
        var ids = root.GetProperty("token_ids").EnumerateArray().Select(x => x.GetInt64()).ToArray();
        Assert.Equal(6, ids.Length);
        Assert.All(ids, id => Assert.InRange(id, 0, Tiny.Text.VocabSize - 1));
        Assert.Contains("decode", result.ToTable());

        // The inputs for transformers: one row, the image token expanded to one id per image position, and its pixels.
        using var dumped = SafeTensorsFile.Open(inputs);
        using var inputIds = dumped.Load("input_ids");
        using var pixels = dumped.Load("pixel_values");
        Assert.Equal(new long[] { 1, 16 + 49 }, inputIds.shape);
        Assert.Equal(16, inputIds.data<long>().ToArray().Count(id => id == 32000));
        Assert.Equal(new long[] { 1, 3, 56, 56 }, pixels.shape);
    }

    private static CudaDeviceProvider NoCuda(string problem) => new(new CudaOptions { Probe = FakeProbe.Unavailable(problem) });

    [Fact]
    public void CudaIsRefusedBeforeAnyWeightIsRead()
    {
        var options = BenchOptions.Parse(new[] { "--model", Fixtures.Path("oracle/hf_llama2vocab"), "--image", Fixtures.Path("oracle/hf_llama2vocab/image1.png"), "--device", "cuda:0" });
        var e = Assert.Throws<DeviceException>(() => BenchRunner.Run(options, TextWriter.Null, NoCuda("the NVIDIA driver's libcuda.so.1 could not be loaded")));
        Assert.Contains("Device 'cuda:0' was requested but CUDA cannot be used", e.Message);
        Assert.Contains("libcuda.so.1", e.Message);
    }

    [Fact]
    public void ADeviceTooSmallForTheRunIsRefusedWithTheFigures()
    {
        // The fit check sees the weights and this run's KV cache (batch x (prompt + new tokens + 1) positions).
        var options = BenchOptions.Parse(new[]
        {
            "--model", Fixtures.Path("oracle/hf_llama2vocab"), "--image", Fixtures.Path("oracle/hf_llama2vocab/image1.png"),
            "--device", "cuda", "--batch", "8", "--max-new-tokens", "100",
        });
        var provider = new CudaDeviceProvider(new CudaOptions { Probe = FakeProbe.With(FakeProbe.Gpu(0, freeGib: 0.5, name: "Small GPU")) });
        var e = Assert.Throws<DeviceException>(() => BenchRunner.Run(options, TextWriter.Null, provider));
        Assert.Contains("will not fit on cuda:0 (Small GPU)", e.Message);
        Assert.Contains("batch 8 x", e.Message);
    }

    [Fact]
    public void OptionsDefaultToTheCpuAndKeepTheDeviceSettings()
    {
        var d = BenchOptions.Parse(new[] { "--model", "m", "--image", "x.png" });
        Assert.Equal("cpu", d.Device);
        Assert.Equal("auto", d.DType);
        Assert.Null(d.RequestedDType);
        Assert.Null(d.LibTorchDir);
        Assert.Null(d.DumpInputs);

        var o = BenchOptions.Parse(new[] { "--model", "m", "--image", "x.png", "--device", "cuda:1", "--dtype", "bf16", "--libtorch-dir", "/opt/torch/lib", "--dump-inputs", "in.safetensors" });
        Assert.Equal("cuda:1", o.Device);
        Assert.Equal(torch.ScalarType.BFloat16, o.RequestedDType);
        Assert.Equal("/opt/torch/lib", o.LibTorchDir);
        Assert.Equal("in.safetensors", o.DumpInputs);
        Assert.Equal("/opt/torch/lib", MakeCheckpointOptions.Parse(new[] { "--out", "o", "--libtorch-dir", "/opt/torch/lib" }).LibTorchDir);
    }

    [Theory]
    [InlineData(new[] { "--image", "x.png" }, "--model")]
    [InlineData(new[] { "--model", "m", "--image", "x.png", "--dtype", "int8" }, "--dtype")]
    [InlineData(new[] { "--model", "m", "--image", "x.png", "--threads", "0" }, "--threads")]
    [InlineData(new[] { "--model", "m", "--image", "x.png", "--batch" }, "--batch")]
    [InlineData(new[] { "--model", "m", "--image", "x.png", "--fast" }, "--fast")]
    [InlineData(new[] { "--model", "m", "--image", "x.png", "--device", "gpu0" }, "--device")]
    [InlineData(new[] { "--model", "m", "--image", "x.png", "--device", "cuda:x" }, "--device")]
    public void BadOptionsNameTheOption(string[] args, string option)
    {
        // The bench's bad command lines are usage errors (exit code 2), naming the option.
        var e = Assert.Throws<UsageException>(() => BenchOptions.Parse(args));
        Assert.Contains(option, e.Message);
    }
}
