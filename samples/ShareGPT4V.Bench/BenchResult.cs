using System.Text.Json;
using System.Text.Json.Serialization;

namespace ShareGPT4V.Bench;

/// <summary>
/// One benchmark run as a JSON line. The property names are a contract other tools read: times in the unit their name
/// ends with, rates per second, memory in MiB (2^20 bytes), bandwidth in GB/s (1e9 bytes), FLOP rates in GFLOP/s.
/// Ratios are absent when the machine limits were not measured.
/// </summary>
internal sealed record BenchResult
{
    [JsonPropertyName("model")] public required string Model { get; init; }
    /// <summary>The device the run used (cpu, cuda:N), as the device provider resolved the --device option.</summary>
    [JsonPropertyName("device")] public required string Device { get; init; }
    /// <summary>The provider's account of the placement: the GPU's name and memory, the dtype and why, the memory estimate.</summary>
    [JsonPropertyName("placement")] public required string Placement { get; init; }
    /// <summary>Which libtorch the process loaded (CPU-only or CUDA build, version, folder).</summary>
    [JsonPropertyName("libtorch")] public required string LibTorch { get; init; }
    /// <summary>The OpenMP spin setting libtorch loaded with (null: libgomp's defaults).</summary>
    [JsonPropertyName("openmp_spin")] public string? OpenMPSpin { get; init; }
    [JsonPropertyName("dtype")] public required string DType { get; init; }
    [JsonPropertyName("threads")] public required int Threads { get; init; }
    [JsonPropertyName("batch")] public required int Batch { get; init; }
    [JsonPropertyName("prompt_tokens")] public required int PromptTokens { get; init; }
    [JsonPropertyName("new_tokens")] public required int NewTokens { get; init; }
    /// <summary>How many times vision and prefill ran; their times are medians over the repetitions.</summary>
    [JsonPropertyName("repeat")] public required int Repeat { get; init; }

    [JsonPropertyName("load_s")] public required double LoadSeconds { get; init; }
    /// <summary>Percent of the checkpoint's weight files in the OS page cache before the load (the load target is from cache).</summary>
    [JsonPropertyName("checkpoint_cached_pct")] public double? CheckpointCachedPercent { get; init; }
    [JsonPropertyName("preprocess_ms")] public required double PreprocessMs { get; init; }
    [JsonPropertyName("vision_ms")] public required double VisionMs { get; init; }
    [JsonPropertyName("prefill_ms")] public required double PrefillMs { get; init; }
    [JsonPropertyName("prefill_tokens_per_s")] public required double PrefillTokensPerSecond { get; init; }
    [JsonPropertyName("ttft_ms")] public required double TimeToFirstTokenMs { get; init; }
    /// <summary>Tokens per second over all rows: batch / median step time, steps after the warm-up only.</summary>
    [JsonPropertyName("decode_tokens_per_s")] public required double DecodeTokensPerSecond { get; init; }
    [JsonPropertyName("decode_step_ms_median")] public required double DecodeStepMsMedian { get; init; }
    [JsonPropertyName("decode_steps_measured")] public required int DecodeStepsMeasured { get; init; }

    [JsonPropertyName("peak_rss_mb")] public required double PeakRssMb { get; init; }
    [JsonPropertyName("weights_mb")] public required double WeightsMb { get; init; }
    [JsonPropertyName("kv_cache_mb")] public required double KvCacheMb { get; init; }
    /// <summary>Peak RSS over (weights + KV cache); the target is at most 1.15. Null on a GPU (the weights are not in host memory).</summary>
    [JsonPropertyName("peak_rss_over_weights_kv")] public double? PeakRssOverWeightsAndCache { get; init; }
    /// <summary>
    /// GPU only: device memory in use before the load and at the peak of the run (sampled every 10 ms), as the driver
    /// reports it for the whole device, so the CUDA context and libtorch's cached blocks count; and the growth over
    /// (weights + KV cache).
    /// </summary>
    [JsonPropertyName("device_mem_before_mb")] public double? DeviceMemBeforeMb { get; init; }
    [JsonPropertyName("device_mem_peak_mb")] public double? DeviceMemPeakMb { get; init; }
    [JsonPropertyName("device_peak_over_weights_kv")] public double? DevicePeakOverWeightsAndCache { get; init; }
    /// <summary>RSS after the load, the vision stage and the prefill: where memory is taken.</summary>
    [JsonPropertyName("rss_load_mb")] public required double RssAfterLoadMb { get; init; }
    [JsonPropertyName("rss_vision_mb")] public required double RssAfterVisionMb { get; init; }
    [JsonPropertyName("rss_prefill_mb")] public required double RssAfterPrefillMb { get; init; }
    /// <summary>RSS after token 100 and after the last token, and the growth between them (runs of more than 100 tokens).</summary>
    [JsonPropertyName("rss_token100_mb")] public double? RssAtToken100Mb { get; init; }
    [JsonPropertyName("rss_end_mb")] public required double RssEndMb { get; init; }
    [JsonPropertyName("rss_growth_pct")] public double? RssGrowthPercent { get; init; }

    /// <summary>CPU: a read-only streaming sum over host memory. GPU: a device-to-device copy, bytes read plus written.</summary>
    [JsonPropertyName("bandwidth_gbs")] public double? BandwidthGBs { get; init; }
    [JsonPropertyName("fma_peak_gflops")] public double? FmaPeakGFlops { get; init; }
    [JsonPropertyName("fma_vector_bits")] public int? FmaVectorBits { get; init; }
    [JsonPropertyName("gemm_gflops")] public double? GemmGFlops { get; init; }
    [JsonPropertyName("gemm_shape")] public string? GemmShape { get; init; }

    /// <summary>GB/s at which the decode kernel streams weights of the run's dtype (one-row linear layers over as many bytes as the bandwidth test).</summary>
    [JsonPropertyName("matvec_gbs")] public double? MatVecGBs { get; init; }
    /// <summary>The two readings of the limits (before the load, after the run); the fields above hold the better of each.</summary>
    [JsonPropertyName("limits_before")] public BenchRunner.MachineReading? LimitsBefore { get; init; }
    [JsonPropertyName("limits_after")] public BenchRunner.MachineReading? LimitsAfter { get; init; }
    [JsonPropertyName("decode_bytes_per_token")] public required double DecodeBytesPerStep { get; init; }
    /// <summary>Bytes a decode step reads × steps per second / measured read bandwidth.</summary>
    [JsonPropertyName("decode_bandwidth_ratio")] public double? DecodeBandwidthRatio { get; init; }
    /// <summary>The roofline: tokens per second over all rows if a decode step took only the time to read its bytes at the measured bandwidth.</summary>
    [JsonPropertyName("decode_roofline_tokens_per_s")] public double? DecodeRooflineTokensPerSecond { get; init; }
    [JsonPropertyName("vision_gflop")] public required double VisionGFlop { get; init; }
    [JsonPropertyName("vision_gflops")] public required double VisionGFlops { get; init; }
    [JsonPropertyName("vision_fma_ratio")] public double? VisionFmaRatio { get; init; }
    [JsonPropertyName("prefill_gflop")] public required double PrefillGFlop { get; init; }
    [JsonPropertyName("prefill_gflops")] public required double PrefillGFlops { get; init; }
    [JsonPropertyName("prefill_fma_ratio")] public double? PrefillFmaRatio { get; init; }

    /// <summary>Percent of the machine's CPU used by other processes during each stage (0 = the stage ran alone).</summary>
    [JsonPropertyName("other_cpu_vision_pct")] public double? OtherCpuVisionPercent { get; init; }
    [JsonPropertyName("other_cpu_prefill_pct")] public double? OtherCpuPrefillPercent { get; init; }
    [JsonPropertyName("other_cpu_decode_pct")] public double? OtherCpuDecodePercent { get; init; }
    /// <summary>1-minute load average before and after the run: other work on the machine shows here.</summary>
    [JsonPropertyName("load_avg_start")] public double? LoadAverageStart { get; init; }
    [JsonPropertyName("load_avg_end")] public double? LoadAverageEnd { get; init; }

    /// <summary>--concurrency: aggregate decode speed with 1, 2, 4, 8 ... requests in the engine's slots.</summary>
    [JsonPropertyName("concurrency")] public IReadOnlyList<ConcurrencyReading>? Concurrency { get; init; }
    /// <summary>--second-turn: time to first token of a chat's second turn with the engine's caches, and without.</summary>
    [JsonPropertyName("second_turn")] public SecondTurnReading? SecondTurn { get; init; }

    /// <summary>The greedy ids of row 0, the prefill's included (compared with transformers' on the same weights).</summary>
    [JsonPropertyName("token_ids")] public required IReadOnlyList<long> TokenIds { get; init; }

    // Source-generated serialization: the bench is published trimmed, where reflection-based serialization is off.
    public string ToJsonLine() => JsonSerializer.Serialize(this, Context.BenchResult);

    private static readonly BenchJsonContext Context = new(new JsonSerializerOptions
    {
        DefaultIgnoreCondition = JsonIgnoreCondition.Never,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping, // keep "->" readable
    });

    /// <summary>A human-readable summary (the JSON line carries the same figures).</summary>
    public string ToTable()
    {
        static string F(double? v, string fmt) => v is double d ? d.ToString(fmt, System.Globalization.CultureInfo.InvariantCulture) : "-";
        var lines = new List<string?>
        {
            $"model {Model} | {Device} {DType} | {Threads} threads | batch {Batch} | prompt {PromptTokens} tokens | {NewTokens} new tokens",
            $"placement       {Placement}; {LibTorch}; OpenMP {OpenMPSpin ?? "defaults"}",
            $"load            {F(LoadSeconds, "F2")} s   ({F(CheckpointCachedPercent, "F0")}% of the checkpoint was in the page cache)",
            $"preprocess      {F(PreprocessMs, "F1")} ms",
            $"vision+proj     {F(VisionMs, "F0")} ms   {F(VisionGFlops, "F1")} GFLOP/s   {F(VisionFmaRatio * 100, "F0")}% of FMA peak",
            $"prefill         {F(PrefillMs, "F0")} ms   {F(PrefillTokensPerSecond, "F1")} tokens/s   {F(PrefillGFlops, "F1")} GFLOP/s   {F(PrefillFmaRatio * 100, "F0")}% of FMA peak",
            $"time to first   {F(TimeToFirstTokenMs, "F0")} ms",
            $"decode          {F(DecodeTokensPerSecond, "F2")} tokens/s   {F(DecodeStepMsMedian, "F1")} ms/step   {F(DecodeBytesPerStep / 1e9, "F2")} GB/step   {F(DecodeBandwidthRatio * 100, "F0")}% of {(Device == "cpu" ? "read" : "copy")} bandwidth (roofline {F(DecodeRooflineTokensPerSecond, "F1")} tokens/s)",
            DeviceMemPeakMb is null ? null
                : $"device memory   {F(DeviceMemBeforeMb, "F0")} MiB in use before the load, peak {F(DeviceMemPeakMb, "F0")} MiB (driver view, whole device): growth {F(DevicePeakOverWeightsAndCache, "F3")} x (weights + KV cache)",
            $"memory          peak RSS {F(PeakRssMb, "F0")} MiB = {F(PeakRssOverWeightsAndCache, "F3")} x (weights {F(WeightsMb, "F0")} + KV cache {F(KvCacheMb, "F0")} MiB)   RSS after load {F(RssAfterLoadMb, "F0")}, vision {F(RssAfterVisionMb, "F0")}, prefill {F(RssAfterPrefillMb, "F0")}, token 100 {F(RssAtToken100Mb, "F0")} -> end {F(RssEndMb, "F0")} MiB ({F(RssGrowthPercent, "F2")}%)",
            $"machine         {(Device == "cpu" ? "read" : "device copy")} bandwidth {F(BandwidthGBs, "F1")} GB/s   FMA peak {F(FmaPeakGFlops, "F1")} GFLOP/s ({FmaVectorBits}-bit)   GEMM {F(GemmGFlops, "F1")} GFLOP/s ({GemmShape})   decode kernel {F(MatVecGBs, "F1")} GB/s   load avg {F(LoadAverageStart, "F2")} -> {F(LoadAverageEnd, "F2")}",
            $"other work      other processes used {F(OtherCpuVisionPercent, "F0")}% / {F(OtherCpuPrefillPercent, "F0")}% / {F(OtherCpuDecodePercent, "F0")}% of the CPUs during vision / prefill / decode",
        };
        double? single = Concurrency?.FirstOrDefault(c => c.Requests == 1)?.TokensPerSecond;
        foreach (var c in Concurrency ?? Array.Empty<ConcurrencyReading>())
            lines.Add($"concurrent {c.Requests,-4} {F(c.TokensPerSecond, "F2")} tokens/s aggregate   {F(c.StepMsMedian, "F1")} ms/step   {F(c.TokensPerSecond / single, "F2")} x one request   (other processes {F(c.OtherCpuPercent, "F0")}% of the CPUs)");
        if (SecondTurn is { } t)
            lines.Add($"second turn     time to first token {F(t.SecondTurnTtftMs, "F0")} ms ({t.SecondTurnReusedTokens} of {t.SecondTurnPromptTokens} prompt tokens reused)   from empty caches {F(t.SecondTurnFreshTtftMs, "F0")} ms   first turn {F(t.FirstTurnTtftMs, "F0")} ms");
        return string.Join(Environment.NewLine, lines.Where(l => l is not null));
    }
}

/// <summary>Aggregate decode speed at one level of concurrency.</summary>
internal sealed record ConcurrencyReading
{
    [JsonPropertyName("requests")] public required int Requests { get; init; }
    [JsonPropertyName("step_ms_median")] public required double StepMsMedian { get; init; }
    /// <summary>requests / median step time: tokens per second over all requests.</summary>
    [JsonPropertyName("tokens_per_s")] public required double TokensPerSecond { get; init; }
    [JsonPropertyName("other_cpu_pct")] public double? OtherCpuPercent { get; init; }
}

/// <summary>Time to first token of a chat's turns (preprocessing, vision and prefill, up to the first sampled id).</summary>
internal sealed record SecondTurnReading
{
    [JsonPropertyName("first_turn_ttft_ms")] public required double FirstTurnTtftMs { get; init; }
    /// <summary>The second turn with the image embedding and the first turn's KV prefix reused.</summary>
    [JsonPropertyName("second_turn_ttft_ms")] public required double SecondTurnTtftMs { get; init; }
    /// <summary>The same second turn from empty caches (the image encoded, the whole prompt prefilled).</summary>
    [JsonPropertyName("second_turn_fresh_ttft_ms")] public required double SecondTurnFreshTtftMs { get; init; }
    [JsonPropertyName("second_turn_prompt_tokens")] public required int SecondTurnPromptTokens { get; init; }
    [JsonPropertyName("second_turn_reused_tokens")] public required int SecondTurnReusedTokens { get; init; }
    [JsonPropertyName("image_cache_hits")] public required long ImageCacheHits { get; init; }
}

[JsonSerializable(typeof(BenchResult))]
internal sealed partial class BenchJsonContext : JsonSerializerContext;
