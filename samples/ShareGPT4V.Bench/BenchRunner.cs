using System.Diagnostics;
using ShareGPT4V.Checkpoints;
using ShareGPT4V.Configuration;
using ShareGPT4V.Conversation;
using ShareGPT4V.Cuda;
using ShareGPT4V.Devices;
using ShareGPT4V.Generation;
using ShareGPT4V.Preprocessing;
using ShareGPT4V.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.Bench;

/// <summary>
/// One benchmark run through the library's lower-level API, so every stage is timed on its own: load, image
/// preprocessing, vision tower + projector (all images of the batch in one call), prefill, then greedy decoding one
/// token per step. The machine's limits are measured in the same process, so the ratios compare like with like. The
/// device comes from an <see cref="IDeviceProvider"/> (the CUDA provider by default: cpu, cuda, cuda:N, auto), which
/// applies the dtype policy and refuses a device that cannot hold the model before any weight is read. On a GPU every
/// stage's time includes waiting for the device, and the device memory the driver reports is sampled throughout.
/// </summary>
internal static class BenchRunner
{
    public static BenchResult Run(BenchOptions o, TextWriter log, IDeviceProvider? provider = null)
    {
        if (!File.Exists(o.Image)) throw new ImageInputException("Image file not found", o.Image);
        provider ??= new CudaDeviceProvider(new CudaOptions { LibTorchDirectory = o.LibTorchDir });
        double? loadAvgStart = ProcessStats.LoadAverage1();
        double? cachedPercent = Directory.Exists(o.Model) ? PageCache.ResidentPercent(o.Model) : null;

        // The placement first, from the configuration alone: a CUDA libtorch must be loaded before TorchSharp's first
        // use, and a device that cannot hold the weights and this run's KV cache is refused before anything is read.
        var cfg = ModelFolder.Open(o.Model).Config;
        var promptIds = LlavaTokenizer.Load(o.Model).EncodePrompt(new ConversationBuilder(o.Template).AddUser(o.Prompt, 1).BuildPrompt(), cfg.ImageTokenIndex);
        int expected = promptIds.Count(x => x != cfg.ImageTokenIndex) + promptIds.Count(x => x == cfg.ImageTokenIndex) * cfg.ImageSeqLength;
        // The engine's KV cache: one slot per concurrent request, each long enough for a second turn when asked for.
        int slots = Math.Max(o.Batch, o.Concurrency.DefaultIfEmpty(1).Max());
        int context = Math.Min(cfg.Text.MaxPositionEmbeddings, o.SecondTurn ? 2 * (expected + o.MaxNewTokens) + 64 : expected + o.MaxNewTokens);
        var placement = provider.Resolve(new DeviceResolutionRequest
        {
            Device = o.Device, DType = o.Quantization is null ? o.DType : "float32", Config = cfg, Positions = context + 1, Batch = slots,
        }, new TextWriterLogger(log));
        var device = placement.Device;
        var dtype = placement.DType;
        bool cuda = device.type == DeviceType.CUDA;
        log.WriteLine($"device: {placement.Description}");
        torch.set_num_threads(o.Threads);

        // The machine's limits before anything is loaded (the buffers used are far smaller than the model, so they do
        // not move the peak RSS); measured again after the run. On a GPU they are read once, after the run: the GPU
        // machine runs one job at a time, and the copy test's buffers would stay in libtorch's cache and count as the
        // run's device memory.
        MachineReading? before = o.SkipLimits || cuda ? null : MeasureLimits(o, cfg, expected, device, dtype, log);
        using var deviceMemory = cuda ? new DeviceMemorySampler(device.index < 0 ? 0 : device.index) : null;

        // Load: config, tokenizer, image processor and weights, until the model is ready to run.
        var sw = Stopwatch.StartNew();
        var folder = ModelFolder.Open(o.Model);
        var tokenizer = LlavaTokenizer.Load(folder.ModelPath);
        var pre = folder.PreprocessorConfigPath is { } p
            ? PreprocessorConfig.Load(p)
            : new PreprocessorConfig { ShortestEdge = folder.Config.Vision.ImageSize, CropHeight = folder.Config.Vision.ImageSize, CropWidth = folder.Config.Vision.ImageSize };
        var processor = new ClipImageProcessor(pre, ImageAspectModes.FromConfigValue(folder.Config.ImageAspectRatio));
        using var model = ModelLoader.Load(folder, new LoadOptions { DType = dtype, Device = device, Quantization = o.Quantization });
        Sync(device);
        double loadSeconds = sw.Elapsed.TotalSeconds;
        if (o.Quantization is not null) log.WriteLine($"weight storage: {ShareGPT4V.Modeling.WeightStorage.Describe(model)}");
        double rssLoad = ProcessStats.RssBytes() / Mib;
        log.WriteLine($"loaded {folder.ModelPath} in {loadSeconds:F2} s");

        var prompt = new ConversationBuilder(o.Template).AddUser(o.Prompt, 1).BuildPrompt();
        var ids = tokenizer.EncodePrompt(prompt, folder.Config.ImageTokenIndex).Select(x => (long)x).ToArray();

        using var noGrad = torch.no_grad();
        using var scope = NewDisposeScope();

        sw.Restart();
        var images = Enumerable.Range(0, o.Batch).Select(_ => processor.Preprocess(o.Image)).ToList();
        var pixels = PreprocessedImage.Stack(images).to(device);
        Sync(device);
        double preprocessMs = sw.Elapsed.TotalMilliseconds;
        if (o.DumpInputs is { } dump) DumpInputs(dump, ids, images[0], folder.Config, log);

        // Vision and prefill run --repeat times (each from scratch); the medians are reported, so a burst of other
        // work on the machine during one repetition (or a GPU's first-call set-up) does not decide the figure.
        Tensor imageEmbeddings = null!;
        var visionRuns = new List<double>();
        var cpuVision = ProcessStats.SampleCpu();
        for (int r = 0; r < o.Repeat; r++)
        {
            if (r > 0) imageEmbeddings.Dispose();
            sw.Restart();
            imageEmbeddings = model.EncodeImages(pixels);
            Sync(device);
            visionRuns.Add(sw.Elapsed.TotalMilliseconds);
            log.WriteLine($"vision tower + projector: {visionRuns[^1]:F0} ms");
        }
        double visionMs = MachineLimits.Median(visionRuns);
        double? otherVision = ProcessStats.OtherCpuPercent(cpuVision, ProcessStats.SampleCpu());
        double rssVision = ProcessStats.RssBytes() / Mib;

        // From here on, the generation engine users call: each request takes a slot and is prefilled alone (its image
        // embedding from the engine's image cache after the first), then every decode step advances all rows together.
        using var engine = new GenerationEngine(model, tokenizer, new EngineOptions
        {
            MaxBatchSize = slots, ContextLength = context, PrefixCacheBytes = o.SecondTurn ? 256L << 20 : 0,
        });
        var imageKey = GenerationEngine.ImageKey(File.ReadAllBytes(o.Image), "bench");
        var intIds = ids.Select(x => (int)x).ToArray();
        SequenceRequest Request(int maxNew, bool prefix = false) => new()
        {
            PromptIds = intIds, Images = new[] { new EngineImage(images[0], imageKey) },
            Options = new GenerationOptions { MaxNewTokens = maxNew, StopAtEndOfSequence = false }, UsePrefixCache = prefix,
        };
        var cpuPrefill = ProcessStats.SampleCpu();
        var prefillRuns = new List<double>();
        var sequences = new List<EngineSequence>();
        for (int r = 0; r < o.Repeat; r++)
        {
            engine.CancelAll();
            sequences.Clear();
            double total = 0;
            for (int row = 0; row < o.Batch; row++)
            {
                var seq = engine.Admit(Request(o.MaxNewTokens)); // the first admission encodes the image; the rest hit the cache
                sequences.Add(seq);
                total += seq.PrefillTime.TotalMilliseconds;
            }
            prefillRuns.Add(total);
            log.WriteLine($"prefill of {o.Batch} x {sequences[0].PromptTokens} tokens: {total:F0} ms");
        }
        int promptTokens = sequences[0].PromptTokens;
        double prefillMs = MachineLimits.Median(prefillRuns);
        double? otherPrefill = ProcessStats.OtherCpuPercent(cpuPrefill, ProcessStats.SampleCpu());
        double rssPrefill = ProcessStats.RssBytes() / Mib;
        // Time to first token: every stage up to the first sampled id of every row (medians where repeated); the rows
        // are prefilled one after another, so the last one's first token comes after all the prefills.
        double ttftMs = preprocessMs + visionMs + prefillMs;

        // Greedy decoding without an early stop, one engine step per token; RSS sampled after each step.
        var stepMs = new List<double>();
        var cpuDecode = ProcessStats.SampleCpu();
        double? rssAt100 = null;
        for (int token = 1; token < o.MaxNewTokens; token++)
        {
            sw.Restart();
            engine.Step(); // reading the logits back waits for the device
            stepMs.Add(sw.Elapsed.TotalMilliseconds);
            if (token + 1 == 100) rssAt100 = ProcessStats.RssBytes() / Mib;
            if (token % 50 == 0) log.WriteLine($"decoded {token + 1} tokens, last step {stepMs[^1]:F1} ms");
        }
        var tokenIds = sequences[0].Result!.TokenIds.Select(x => (long)x).ToList();
        double? otherDecode = ProcessStats.OtherCpuPercent(cpuDecode, ProcessStats.SampleCpu());
        double rssEnd = ProcessStats.RssBytes() / Mib;
        double peakRss = ProcessStats.PeakRssBytes() / Mib;
        deviceMemory?.Stop();
        double? deviceBeforeMb = deviceMemory?.BeforeBytes / Mib, devicePeakMb = deviceMemory?.PeakBytes / Mib;
        var measured = stepMs.Skip(Math.Min(o.WarmupTokens, Math.Max(0, stepMs.Count - 1))).ToList();
        double stepMedian = measured.Count > 0 ? MachineLimits.Median(measured) : double.NaN;
        double decodeTokensPerSecond = o.Batch * 1000.0 / stepMedian;
        double decodeBytes = ModelCost.DecodeBytesPerStep(model, o.Batch, promptTokens + o.MaxNewTokens / 2);
        var concurrency = o.Concurrency.Select(c => MeasureConcurrency(engine, c, () => Request(o.MaxNewTokens), o, log)).ToList();
        SecondTurnReading? secondTurn = o.SecondTurn ? MeasureSecondTurn(engine, tokenizer, o, images[0], imageKey, preprocessMs, log) : null;

        // The limits again, after the run: the machine is shared, so each figure is the better of the two readings
        // (other work can only lower a reading, never raise it), and both readings are reported.
        MachineReading? after = o.SkipLimits ? null : MeasureLimits(o, model.Config, promptTokens, device, dtype, log);
        double? bandwidth = Best(before?.BandwidthGBs, after?.BandwidthGBs);
        double? fmaPeak = Best(before?.FmaPeakGFlops, after?.FmaPeakGFlops);
        double? gemm = Best(before?.GemmGFlops, after?.GemmGFlops);
        double? matvec = Best(before?.MatVecGBs, after?.MatVecGBs);
        var t = model.Config.Text;
        string? gemmShape = o.SkipLimits ? null : $"{(long)promptTokens * o.Batch}x{t.HiddenSize} by {t.HiddenSize}->{t.IntermediateSize}";

        double visionFlops = ModelCost.VisionFlops(model.Config) * o.Batch;
        double prefillFlops = ModelCost.PrefillFlops(model.Config.Text, promptTokens) * o.Batch;
        double weightsMb = ModelCost.WeightBytes(model) / Mib;
        double cacheMb = engine.Cache.Bytes / Mib;
        double visionGFlops = visionFlops / visionMs / 1e6;
        double prefillGFlops = prefillFlops / prefillMs / 1e6;
        return new BenchResult
        {
            Model = folder.ModelPath,
            Device = cuda ? $"cuda:{Math.Max(0, device.index)}" : "cpu",
            Placement = placement.Description,
            LibTorch = ShareGPT4V.Cuda.NativeLibTorchReport.Current().Summary,
            OpenMPSpin = ShareGPT4V.Devices.OpenMPSpin.Applied,
            DType = o.Quantization is { } q ? ShareGPT4V.Modeling.QuantizationFormats.Name(q) : BenchOptions.ShortName(dtype),
            Threads = o.Threads,
            Batch = o.Batch,
            PromptTokens = promptTokens,
            NewTokens = o.MaxNewTokens,
            Repeat = o.Repeat,
            LoadSeconds = loadSeconds,
            CheckpointCachedPercent = cachedPercent,
            PreprocessMs = preprocessMs,
            VisionMs = visionMs,
            PrefillMs = prefillMs,
            PrefillTokensPerSecond = promptTokens * o.Batch * 1000.0 / prefillMs,
            TimeToFirstTokenMs = ttftMs,
            DecodeTokensPerSecond = decodeTokensPerSecond,
            DecodeStepMsMedian = stepMedian,
            DecodeStepsMeasured = measured.Count,
            PeakRssMb = peakRss,
            WeightsMb = weightsMb,
            KvCacheMb = cacheMb,
            // On a GPU the weights and the cache live in device memory: the device ratio replaces the host one.
            PeakRssOverWeightsAndCache = cuda ? null : peakRss / (weightsMb + cacheMb),
            DeviceMemBeforeMb = deviceBeforeMb,
            DeviceMemPeakMb = devicePeakMb,
            DevicePeakOverWeightsAndCache = devicePeakMb is double peakMb ? (peakMb - deviceBeforeMb!.Value) / (weightsMb + cacheMb) : null,
            RssAfterLoadMb = rssLoad,
            RssAfterVisionMb = rssVision,
            RssAfterPrefillMb = rssPrefill,
            RssAtToken100Mb = rssAt100,
            RssEndMb = rssEnd,
            RssGrowthPercent = rssAt100 is double r100 ? (rssEnd - r100) / r100 * 100 : null,
            BandwidthGBs = bandwidth,
            FmaPeakGFlops = fmaPeak,
            FmaVectorBits = o.SkipLimits || cuda ? null : MachineLimits.FmaVectorBits,
            GemmGFlops = gemm,
            GemmShape = gemmShape,
            MatVecGBs = matvec,
            LimitsBefore = before,
            LimitsAfter = after,
            DecodeBytesPerStep = decodeBytes,
            DecodeBandwidthRatio = bandwidth is double bw ? decodeBytes * (decodeTokensPerSecond / o.Batch) / (bw * 1e9) : null,
            DecodeRooflineTokensPerSecond = bandwidth is double bw2 ? o.Batch * bw2 * 1e9 / decodeBytes : null,
            TokenIds = tokenIds,
            Concurrency = concurrency.Count > 0 ? concurrency : null,
            SecondTurn = secondTurn,
            VisionGFlop = visionFlops / 1e9,
            VisionGFlops = visionGFlops,
            VisionFmaRatio = fmaPeak is double f1 ? visionGFlops / f1 : null,
            PrefillGFlop = prefillFlops / 1e9,
            PrefillGFlops = prefillGFlops,
            PrefillFmaRatio = fmaPeak is double f2 ? prefillGFlops / f2 : null,
            OtherCpuVisionPercent = otherVision,
            OtherCpuPrefillPercent = otherPrefill,
            OtherCpuDecodePercent = otherDecode,
            LoadAverageStart = loadAvgStart,
            LoadAverageEnd = ProcessStats.LoadAverage1(),
        };
    }

    /// <summary>
    /// One reading of the machine's limits at the run's thread count. On a GPU: the device's copy bandwidth (bytes read
    /// plus written) and the prefill-shaped GEMM on the device; the FMA loop and the decode kernel are CPU-only (null).
    /// </summary>
    public sealed record MachineReading
    {
        [System.Text.Json.Serialization.JsonPropertyName("bandwidth_gbs")] public double BandwidthGBs { get; init; }
        [System.Text.Json.Serialization.JsonPropertyName("fma_peak_gflops")] public double? FmaPeakGFlops { get; init; }
        [System.Text.Json.Serialization.JsonPropertyName("gemm_gflops")] public double GemmGFlops { get; init; }
        [System.Text.Json.Serialization.JsonPropertyName("matvec_gbs")] public double? MatVecGBs { get; init; }
    }

    private static MachineReading MeasureLimits(BenchOptions o, LlavaConfig config, int promptTokens, Device device, ScalarType dtype, TextWriter log)
    {
        log.WriteLine("measuring the machine's limits");
        var t = config.Text;
        double gemm = MachineLimits.GemmGFlops((long)promptTokens * o.Batch, t.HiddenSize, t.IntermediateSize, dtype, device);
        if (device.type == DeviceType.CUDA)
            return new MachineReading { BandwidthGBs = DeviceLimits.CopyGBs(device, o.BandwidthBytes), GemmGFlops = gemm };
        return new MachineReading
        {
            BandwidthGBs = MachineLimits.ReadBandwidthGBs(o.Threads, o.BandwidthBytes),
            FmaPeakGFlops = MachineLimits.FmaPeakGFlops(o.Threads, o.FmaSeconds),
            GemmGFlops = gemm,
            MatVecGBs = MachineLimits.MatVecGBs(o.BandwidthBytes, dtype),
        };
    }

    private static double? Best(double? a, double? b) => a is null ? b : b is null ? a : Math.Max(a.Value, b.Value);

    private const double Mib = 1 << 20;

    /// <summary>
    /// Aggregate decode speed with <paramref name="count"/> requests in the engine's slots: all admitted, then every
    /// step advances all of them; the median step after the warm-up gives count / step tokens per second.
    /// </summary>
    private static ConcurrencyReading MeasureConcurrency(GenerationEngine engine, int count, Func<SequenceRequest> request, BenchOptions o, TextWriter log)
    {
        engine.CancelAll();
        for (int i = 0; i < count; i++) engine.Admit(request());
        var cpu = ProcessStats.SampleCpu();
        var steps = new List<double>();
        var sw = new Stopwatch();
        for (int token = 1; token < o.MaxNewTokens; token++)
        {
            sw.Restart();
            engine.Step();
            steps.Add(sw.Elapsed.TotalMilliseconds);
        }
        engine.CancelAll();
        var measured = steps.Skip(Math.Min(o.WarmupTokens, Math.Max(0, steps.Count - 1))).ToList();
        double median = measured.Count > 0 ? MachineLimits.Median(measured) : double.NaN;
        log.WriteLine($"{count} concurrent request(s): {median:F1} ms/step, {count * 1000.0 / median:F2} tokens/s");
        return new ConcurrencyReading
        {
            Requests = count, StepMsMedian = median, TokensPerSecond = count * 1000.0 / median,
            OtherCpuPercent = ProcessStats.OtherCpuPercent(cpu, ProcessStats.SampleCpu()),
        };
    }

    /// <summary>
    /// A two-turn chat about the image: the first turn from empty caches, the second with the image embedding and the
    /// first turn's keys and values reused, and the same second turn again from empty caches.
    /// </summary>
    private static SecondTurnReading MeasureSecondTurn(GenerationEngine engine, LlavaTokenizer tokenizer, BenchOptions o,
        PreprocessedImage image, string imageKey, double preprocessMs, TextWriter log)
    {
        var cfg = engine.Model.Config;
        engine.CancelAll();
        engine.ClearCaches();
        const string question = "What else can you see? Answer briefly.";
        SequenceRequest Turn(string prompt, bool reuse) => new()
        {
            PromptIds = tokenizer.EncodePrompt(prompt, cfg.ImageTokenIndex),
            Images = new[] { new EngineImage(image, reuse ? imageKey : null) }, UsePrefixCache = reuse,
            Options = new GenerationOptions { MaxNewTokens = o.MaxNewTokens, StopAtEndOfSequence = false },
        };
        var first = new ConversationBuilder(o.Template).AddUser(o.Prompt, 1);
        var r1 = engine.Run(new[] { Turn(first.BuildPrompt(), reuse: true) })[0];
        double firstMs = preprocessMs + r1.Timings.Vision.TotalMilliseconds + r1.Timings.Prefill.TotalMilliseconds;
        var second = new ConversationBuilder(o.Template).AddUser(o.Prompt, 1).AddAssistant(r1.Text).AddUser(question).BuildPrompt();
        var before = engine.Counters;
        var seq = engine.Admit(Turn(second, reuse: true)); // the image is cached: no preprocessing either
        double secondMs = seq.VisionTime.TotalMilliseconds + seq.PrefillTime.TotalMilliseconds;
        int reused = seq.ReusedPrefixTokens, total = seq.PromptTokens;
        engine.CancelAll();
        engine.ClearCaches();
        var fresh = engine.Admit(Turn(second, reuse: false));
        double freshMs = preprocessMs + fresh.VisionTime.TotalMilliseconds + fresh.PrefillTime.TotalMilliseconds;
        engine.CancelAll();
        log.WriteLine($"second turn: {total} prompt tokens, {reused} reused; time to first token {secondMs:F0} ms (from empty caches {freshMs:F0} ms; first turn {firstMs:F0} ms)");
        return new SecondTurnReading
        {
            FirstTurnTtftMs = firstMs, SecondTurnTtftMs = secondMs, SecondTurnFreshTtftMs = freshMs,
            SecondTurnPromptTokens = total, SecondTurnReusedTokens = reused,
            ImageCacheHits = engine.Counters.ImageCacheHits - before.ImageCacheHits,
        };
    }

    /// <summary>Waits for the work queued on a GPU, so a stage's time includes it (CPU work is synchronous already).</summary>
    private static void Sync(Device device)
    {
        if (device.type == DeviceType.CUDA) torch.cuda.synchronize(device);
    }

    /// <summary>
    /// The inputs of one row exactly as this run feeds them, for transformers: <c>input_ids</c> [1, T] with the image
    /// token repeated once per image position (as transformers' processor expands it) and <c>pixel_values</c> [1, 3, H, W].
    /// </summary>
    private static void DumpInputs(string path, long[] ids, PreprocessedImage image, LlavaConfig config, TextWriter log)
    {
        var expanded = ids.SelectMany(id => id == config.ImageTokenIndex ? Enumerable.Repeat(id, config.ImageSeqLength) : new[] { id }).ToArray();
        using var idsTensor = torch.tensor(expanded, new long[] { 1, expanded.Length });
        using var pixels = PreprocessedImage.Stack(new[] { image });
        SafeTensorsWriter.Write(path, new Dictionary<string, Tensor> { ["input_ids"] = idsTensor, ["pixel_values"] = pixels });
        log.WriteLine($"wrote {expanded.Length} input ids and pixel values [{string.Join(", ", pixels.shape)}] to {path}");
    }
}

/// <summary>Log entries of the device provider as lines of the bench's log.</summary>
internal sealed class TextWriterLogger(TextWriter writer) : Microsoft.Extensions.Logging.ILogger
{
    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
    public bool IsEnabled(Microsoft.Extensions.Logging.LogLevel logLevel) => logLevel >= Microsoft.Extensions.Logging.LogLevel.Information;
    public void Log<TState>(Microsoft.Extensions.Logging.LogLevel logLevel, Microsoft.Extensions.Logging.EventId eventId, TState state,
        Exception? exception, Func<TState, Exception?, string> formatter)
    {
        if (IsEnabled(logLevel)) writer.WriteLine($"[{logLevel}] {formatter(state, exception)}");
    }
}
