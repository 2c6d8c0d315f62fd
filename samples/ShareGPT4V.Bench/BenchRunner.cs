using System.Diagnostics;
using ShareGPT4V.Checkpoints;
using ShareGPT4V.Configuration;
using ShareGPT4V.Conversation;
using ShareGPT4V.Generation;
using ShareGPT4V.Preprocessing;
using ShareGPT4V.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.Bench;

/// <summary>
/// One benchmark run through the library's lower-level API, so every stage is timed on its own: load, image
/// preprocessing, vision tower + projector (all images of the batch in one call), prefill, then greedy decoding one
/// token per step. The machine's limits are measured afterwards in the same process, so the ratios compare like with like.
/// </summary>
public static class BenchRunner
{
    public static BenchResult Run(BenchOptions o, TextWriter log)
    {
        if (!File.Exists(o.Image)) throw new ImageInputException("Image file not found", o.Image);
        torch.set_num_threads(o.Threads);
        var device = ParseDevice(o.Device);
        double? loadAvgStart = ProcessStats.LoadAverage1();

        double? cachedPercent = Directory.Exists(o.Model) ? PageCache.ResidentPercent(o.Model) : null;
        // The machine's limits before anything is loaded (the buffers used are far smaller than the model, so they do
        // not move the peak RSS); measured again after the run.
        MachineReading? before = null;
        if (!o.SkipLimits)
        {
            var cfg = ModelFolder.Open(o.Model).Config;
            var tok = LlavaTokenizer.Load(o.Model);
            var promptIds = tok.EncodePrompt(new ConversationBuilder(o.Template).AddUser(o.Prompt, 1).BuildPrompt(), cfg.ImageTokenIndex);
            int expected = promptIds.Count(x => x != cfg.ImageTokenIndex) + promptIds.Count(x => x == cfg.ImageTokenIndex) * cfg.ImageSeqLength;
            before = MeasureLimits(o, cfg, expected, device, log);
        }

        // Load: config, tokenizer, image processor and weights, until the model is ready to run.
        var sw = Stopwatch.StartNew();
        var folder = ModelFolder.Open(o.Model);
        var tokenizer = LlavaTokenizer.Load(folder.ModelPath);
        var pre = folder.PreprocessorConfigPath is { } p
            ? PreprocessorConfig.Load(p)
            : new PreprocessorConfig { ShortestEdge = folder.Config.Vision.ImageSize, CropHeight = folder.Config.Vision.ImageSize, CropWidth = folder.Config.Vision.ImageSize };
        var processor = new ClipImageProcessor(pre, ImageAspectModes.FromConfigValue(folder.Config.ImageAspectRatio));
        using var model = ModelLoader.Load(folder, new LoadOptions { DType = o.ScalarType, Device = device });
        double loadSeconds = sw.Elapsed.TotalSeconds;
        double rssLoad = ProcessStats.RssBytes() / Mib;
        log.WriteLine($"loaded {folder.ModelPath} in {loadSeconds:F2} s");

        var prompt = new ConversationBuilder(o.Template).AddUser(o.Prompt, 1).BuildPrompt();
        var ids = tokenizer.EncodePrompt(prompt, folder.Config.ImageTokenIndex).Select(x => (long)x).ToArray();
        var rows = Enumerable.Range(0, o.Batch).Select(_ => ids).ToList();

        using var noGrad = torch.no_grad();
        using var scope = NewDisposeScope();

        sw.Restart();
        var images = Enumerable.Range(0, o.Batch).Select(_ => processor.Preprocess(o.Image)).ToList();
        var pixels = PreprocessedImage.Stack(images).to(device);
        double preprocessMs = sw.Elapsed.TotalMilliseconds;

        // Vision and prefill run --repeat times (each from scratch); the medians are reported, so a burst of other
        // work on the machine during one repetition does not decide the figure.
        Tensor imageEmbeddings = null!;
        var visionRuns = new List<double>();
        var cpuVision = ProcessStats.SampleCpu();
        for (int r = 0; r < o.Repeat; r++)
        {
            if (r > 0) imageEmbeddings.Dispose();
            sw.Restart();
            imageEmbeddings = model.EncodeImages(pixels);
            Sync(imageEmbeddings);
            visionRuns.Add(sw.Elapsed.TotalMilliseconds);
            log.WriteLine($"vision tower + projector: {visionRuns[^1]:F0} ms");
        }
        double visionMs = MachineLimits.Median(visionRuns);
        double? otherVision = ProcessStats.OtherCpuPercent(cpuVision, ProcessStats.SampleCpu());
        double rssVision = ProcessStats.RssBytes() / Mib;

        sw.Restart();
        using var inputs = model.BuildInputs(rows, imageEmbeddings);
        double inputsMs = sw.Elapsed.TotalMilliseconds;
        int promptTokens = (int)inputs.Length;
        using var cache = model.CreateCache(o.Batch, promptTokens + o.MaxNewTokens + 1);
        using var generator = new TokenGenerator(model, cache);

        Tensor logits = null!;
        var prefillRuns = new List<double>();
        var cpuPrefill = ProcessStats.SampleCpu();
        for (int r = 0; r < o.Repeat; r++)
        {
            if (r > 0) logits.Dispose();
            sw.Restart();
            logits = generator.Prefill(inputs); // each prefill starts the cache over
            Sync(logits);
            prefillRuns.Add(sw.Elapsed.TotalMilliseconds);
            log.WriteLine($"prefill of {promptTokens} tokens: {prefillRuns[^1]:F0} ms");
        }
        double prefillMs = MachineLimits.Median(prefillRuns);
        double? otherPrefill = ProcessStats.OtherCpuPercent(cpuPrefill, ProcessStats.SampleCpu());
        double rssPrefill = ProcessStats.RssBytes() / Mib;
        sw.Restart();
        var next = Argmax(logits);
        // Time to first token: every stage of one request up to the first sampled id (medians where repeated).
        double ttftMs = preprocessMs + visionMs + inputsMs + prefillMs + sw.Elapsed.TotalMilliseconds;

        // Greedy decoding without an early stop, one step per token; RSS sampled after each step.
        var stepMs = new List<double>();
        var cpuDecode = ProcessStats.SampleCpu();
        double? rssAt100 = null;
        for (int token = 1; token < o.MaxNewTokens; token++)
        {
            sw.Restart();
            using (NewDisposeScope())
                next = Argmax(generator.DecodeOneToken(next));
            stepMs.Add(sw.Elapsed.TotalMilliseconds);
            if (token + 1 == 100) rssAt100 = ProcessStats.RssBytes() / Mib;
            if (token % 50 == 0) log.WriteLine($"decoded {token + 1} tokens, last step {stepMs[^1]:F1} ms");
        }
        double? otherDecode = ProcessStats.OtherCpuPercent(cpuDecode, ProcessStats.SampleCpu());
        double rssEnd = ProcessStats.RssBytes() / Mib;
        double peakRss = ProcessStats.PeakRssBytes() / Mib;
        var measured = stepMs.Skip(Math.Min(o.WarmupTokens, Math.Max(0, stepMs.Count - 1))).ToList();
        double stepMedian = measured.Count > 0 ? MachineLimits.Median(measured) : double.NaN;
        double decodeTokensPerSecond = o.Batch * 1000.0 / stepMedian;
        double decodeBytes = ModelCost.DecodeBytesPerStep(model, o.Batch, promptTokens + o.MaxNewTokens / 2);

        // The limits again, after the run: the machine is shared, so each figure is the better of the two readings
        // (other work can only lower a reading, never raise it), and both readings are reported.
        MachineReading? after = o.SkipLimits ? null : MeasureLimits(o, model.Config, promptTokens, device, log);
        double? bandwidth = Best(before?.BandwidthGBs, after?.BandwidthGBs);
        double? fmaPeak = Best(before?.FmaPeakGFlops, after?.FmaPeakGFlops);
        double? gemm = Best(before?.GemmGFlops, after?.GemmGFlops);
        double? matvec = Best(before?.MatVecGBs, after?.MatVecGBs);
        var t = model.Config.Text;
        string? gemmShape = o.SkipLimits ? null : $"{(long)promptTokens * o.Batch}x{t.HiddenSize} by {t.HiddenSize}->{t.IntermediateSize}";

        double visionFlops = ModelCost.VisionFlops(model.Config) * o.Batch;
        double prefillFlops = ModelCost.PrefillFlops(model.Config.Text, promptTokens) * o.Batch;
        double weightsMb = ModelCost.WeightBytes(model) / Mib;
        double cacheMb = cache.Bytes / Mib;
        double visionGFlops = visionFlops / visionMs / 1e6;
        double prefillGFlops = prefillFlops / prefillMs / 1e6;
        return new BenchResult
        {
            Model = folder.ModelPath,
            Device = o.Device,
            DType = o.DType,
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
            PeakRssOverWeightsAndCache = peakRss / (weightsMb + cacheMb),
            RssAfterLoadMb = rssLoad,
            RssAfterVisionMb = rssVision,
            RssAfterPrefillMb = rssPrefill,
            RssAtToken100Mb = rssAt100,
            RssEndMb = rssEnd,
            RssGrowthPercent = rssAt100 is double r100 ? (rssEnd - r100) / r100 * 100 : null,
            BandwidthGBs = bandwidth,
            FmaPeakGFlops = fmaPeak,
            FmaVectorBits = o.SkipLimits ? null : MachineLimits.FmaVectorBits,
            GemmGFlops = gemm,
            GemmShape = gemmShape,
            MatVecGBs = matvec,
            LimitsBefore = before,
            LimitsAfter = after,
            DecodeBytesPerStep = decodeBytes,
            DecodeBandwidthRatio = bandwidth is double bw ? decodeBytes * (decodeTokensPerSecond / o.Batch) / (bw * 1e9) : null,
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

    /// <summary>One reading of the machine's limits at the run's thread count.</summary>
    public sealed record MachineReading
    {
        [System.Text.Json.Serialization.JsonPropertyName("bandwidth_gbs")] public double BandwidthGBs { get; init; }
        [System.Text.Json.Serialization.JsonPropertyName("fma_peak_gflops")] public double FmaPeakGFlops { get; init; }
        [System.Text.Json.Serialization.JsonPropertyName("gemm_gflops")] public double GemmGFlops { get; init; }
        [System.Text.Json.Serialization.JsonPropertyName("matvec_gbs")] public double? MatVecGBs { get; init; }
    }

    private static MachineReading MeasureLimits(BenchOptions o, LlavaConfig config, int promptTokens, Device device, TextWriter log)
    {
        log.WriteLine("measuring the machine's limits");
        var t = config.Text;
        return new MachineReading
        {
            BandwidthGBs = MachineLimits.ReadBandwidthGBs(o.Threads, o.BandwidthBytes),
            FmaPeakGFlops = MachineLimits.FmaPeakGFlops(o.Threads, o.FmaSeconds),
            GemmGFlops = MachineLimits.GemmGFlops((long)promptTokens * o.Batch, t.HiddenSize, t.IntermediateSize, o.ScalarType, device),
            MatVecGBs = device.type == DeviceType.CPU ? MachineLimits.MatVecGBs(o.BandwidthBytes, o.ScalarType) : null,
        };
    }

    private static double? Best(double? a, double? b) => a is null ? b : b is null ? a : Math.Max(a.Value, b.Value);

    private const double Mib = 1 << 20;

    private static long[] Argmax(Tensor logits)
    {
        using var am = logits.argmax(-1);
        using var onCpu = am.cpu();
        var result = onCpu.data<long>().ToArray();
        logits.Dispose();
        return result;
    }

    /// <summary>Waits for queued device work, so a stage's time includes it (CPU work is synchronous already).</summary>
    private static void Sync(Tensor t)
    {
        if (t.device.type != DeviceType.CPU) t.cpu().Dispose();
    }

    private static Device ParseDevice(string device)
    {
        try { return new Device(device); }
        catch (Exception e) when (e is ArgumentException or FormatException or InvalidOperationException)
        {
            throw new DeviceException($"Device '{device}' given as --device is not a valid device string (use 'cpu' or 'cuda:N')", e);
        }
    }
}
