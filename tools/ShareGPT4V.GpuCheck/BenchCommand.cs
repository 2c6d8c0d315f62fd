using System.Diagnostics;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using ShareGPT4V.Checkpoints;
using ShareGPT4V.Conversation;
using ShareGPT4V.Cuda;
using ShareGPT4V.Devices;
using ShareGPT4V.Generation;
using ShareGPT4V.Preprocessing;
using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.GpuCheck;

/// <summary>
/// Pipeline timings on a device: load, vision, prefill and decode per batch size (median of --repeat runs after a
/// warm-up), device memory in use as the driver sees it (sampled), host anonymous memory during the load, the
/// measured copy bandwidth and the decode roofline it implies. Optionally writes the exact inputs for the
/// transformers side of the comparison (scripts/gpu/hf_side_by_side.py).
/// </summary>
internal static class BenchCommand
{
    public static JsonObject Run(Args opts)
    {
        var modelPath = opts.Get("model") ?? throw new ArgumentException("--model DIR is required");
        var imagePath = opts.Get("image") ?? throw new ArgumentException("--image FILE is required");
        var deviceText = opts.Get("device", "cuda:0");
        var batches = opts.GetInts("batches", "1,8");
        int maxNew = opts.GetInt("max-new-tokens", 128), repeat = opts.GetInt("repeat", 3);
        var promptText = opts.Get("prompt", MultimodalPipeline.DefaultCaptionPrompt);
        var log = new ConsoleLogger();

        var provider = new CudaDeviceProvider(new CudaOptions { LibTorchDirectory = opts.Get("libtorch-dir") });
        int? cudaIndex = null;
        using var sampler = new MemorySampler();
        var result = new JsonObject { ["model"] = modelPath, ["device_option"] = deviceText, ["max_new_tokens"] = maxNew, ["repeat"] = repeat };

        var sw = Stopwatch.StartNew();
        sampler.Reset();
        var pipeline = MultimodalPipeline.Load(new PipelineOptions
        {
            ModelPath = modelPath, VisionTowerPath = opts.Get("vision-tower"), Device = deviceText, DType = opts.Get("dtype", "auto"),
            MaxBatchSize = batches.Max(), ContextLength = opts.Get("context") is { } ctx ? int.Parse(ctx) : null, DeviceProvider = provider,
        }, logger: log);
        var load = sw.Elapsed;
        if (pipeline.Placement.Device.type == DeviceType.CUDA)
        {
            cudaIndex = pipeline.Placement.Device.index < 0 ? 0 : pipeline.Placement.Device.index;
            sampler.Watch(cudaIndex.Value);
        }
        var loadHost = sampler.PeakRssAnon;
        var estimate = pipeline.Placement.Estimate!;
        result["placement"] = pipeline.Placement.Description;
        result["dtype"] = DTypeChoice.Name(pipeline.Placement.DType);
        result["native"] = NativeLibTorchReport.Current().Summary;
        result["load_s"] = load.TotalSeconds;
        result["load_peak_host_anon_bytes"] = loadHost;
        result["weight_bytes"] = estimate.WeightBytes;
        result["estimate"] = estimate.ToString();
        Console.WriteLine($"loaded in {load.TotalSeconds:F1} s on {pipeline.Placement.Description}");
        Console.WriteLine($"host anonymous memory peak during load: {Gib(loadHost)} (weights {Gib(estimate.WeightBytes)})");

        if (opts.Get("dump-inputs") is { } dump) DumpInputs(pipeline, promptText, imagePath, dump);

        double bandwidth = cudaIndex is int idx ? CopyBandwidth(new Device(DeviceType.CUDA, idx)) : 0;
        if (bandwidth > 0) Console.WriteLine($"device copy bandwidth: {bandwidth / 1e12:F2} TB/s (read + write)");
        result["copy_bandwidth_bytes_per_s"] = bandwidth;

        var prompt = pipeline.BuildPrompt(new[] { new ChatMessage(ChatRole.User, promptText, 1) });
        var image = ImageInput.FromFile(imagePath);
        var rows = new JsonArray();
        var table = new List<string> { $"{"batch",5} {"vision ms",10} {"prefill ms",11} {"decode tok/s/row",17} {"tok/s total",12} {"roofline tok/s",15} {"prompt",7}" };
        foreach (int b in batches)
        {
            var requests = Enumerable.Range(0, b).Select(_ => new PromptRequest(prompt, new[] { image })).ToList();
            pipeline.GenerateBatchAsync(requests, new GenerationOptions { MaxNewTokens = Math.Min(8, maxNew), StopAtEndOfSequence = false }, null)
                .GetAwaiter().GetResult(); // warm-up: kernels, cuBLAS handles, the KV cache allocation
            var runs = new List<GenerationResult>();
            for (int i = 0; i < repeat; i++)
                runs.Add(pipeline.GenerateBatchAsync(requests, new GenerationOptions { MaxNewTokens = maxNew, StopAtEndOfSequence = false }, null)
                    .GetAwaiter().GetResult()[0]);
            double vision = Median(runs.Select(r => r.Timings.Vision.TotalMilliseconds));
            double prefill = Median(runs.Select(r => r.Timings.Prefill.TotalMilliseconds));
            double decode = Median(runs.Select(r => r.Timings.Decode.TotalSeconds));
            double perRow = (maxNew - 1) / decode;
            int promptTokens = runs[0].PromptTokens;
            // Each decode step reads the weights once for all rows and each row's cached keys and values.
            double avgPos = promptTokens + maxNew / 2.0;
            double bytesPerStep = estimate.DecodeWeightBytesPerStep + b * avgPos * estimate.KvBytesPerPositionPerRow;
            double roofline = bandwidth > 0 ? bandwidth / bytesPerStep : 0;
            rows.Add(new JsonObject
            {
                ["batch"] = b, ["prompt_tokens"] = promptTokens, ["vision_ms"] = vision, ["prefill_ms"] = prefill,
                ["decode_s"] = decode, ["decode_tokens_per_s_per_row"] = perRow, ["decode_tokens_per_s_total"] = perRow * b,
                ["roofline_tokens_per_s_per_row"] = roofline, ["bytes_per_decode_step"] = bytesPerStep,
                ["runs_decode_s"] = new JsonArray(runs.Select(r => (JsonNode)JsonValue.Create(r.Timings.Decode.TotalSeconds)).ToArray()),
                ["runs_vision_ms"] = new JsonArray(runs.Select(r => (JsonNode)JsonValue.Create(r.Timings.Vision.TotalMilliseconds)).ToArray()),
                ["runs_prefill_ms"] = new JsonArray(runs.Select(r => (JsonNode)JsonValue.Create(r.Timings.Prefill.TotalMilliseconds)).ToArray()),
                ["greedy_ids_row0"] = new JsonArray(runs[0].TokenIds.Select(t => (JsonNode)JsonValue.Create(t)).ToArray()),
            });
            table.Add($"{b,5} {vision,10:F1} {prefill,11:F1} {perRow,17:F1} {perRow * b,12:F1} {roofline,15:F1} {promptTokens,7}");
        }
        result["runs"] = rows;
        result["device_used_peak_bytes"] = sampler.PeakDeviceUsed;
        result["device_used_before_load_bytes"] = sampler.DeviceUsedAtStart;
        pipeline.Dispose();
        Thread.Sleep(200);
        long afterDispose = cudaIndex is int i2 ? sampler.SampleDeviceUsed(i2) : 0;
        result["device_used_after_dispose_bytes"] = afterDispose;
        table.Add($"device memory in use (driver view, whole GPU): peak {Gib(sampler.PeakDeviceUsed)}, after dispose {Gib(afterDispose)}");
        Console.WriteLine(string.Join(Environment.NewLine, table));
        result["table"] = string.Join("\n", table);
        result["ok"] = true;
        return result;
    }

    private static void DumpInputs(MultimodalPipeline p, string promptText, string imagePath, string path)
    {
        var folder = p.Folder;
        var pre = folder.PreprocessorConfigPath is { } f ? PreprocessorConfig.Load(f)
            : new PreprocessorConfig { ShortestEdge = folder.Config.Vision.ImageSize, CropHeight = folder.Config.Vision.ImageSize, CropWidth = folder.Config.Vision.ImageSize };
        var processor = new ClipImageProcessor(pre, ImageAspectModes.FromConfigValue(folder.Config.ImageAspectRatio));
        var prompt = p.BuildPrompt(new[] { new ChatMessage(ChatRole.User, promptText, 1) });
        var ids = p.Tokenizer.EncodePrompt(prompt, p.Config.ImageTokenIndex);
        // transformers' processor expands the image token to one per image position.
        var expanded = ids.SelectMany(id => id == p.Config.ImageTokenIndex ? Enumerable.Repeat((long)id, p.Config.ImageSeqLength) : new[] { (long)id }).ToArray();
        using var idsT = torch.tensor(expanded).unsqueeze(0);
        using var pixels = PreprocessedImage.Stack(new[] { processor.Preprocess(imagePath) });
        SafeTensorsWriter.Write(path, new Dictionary<string, Tensor> { ["input_ids"] = idsT, ["pixel_values"] = pixels });
        Console.WriteLine($"wrote {expanded.Length} input ids and pixels [{string.Join(",", pixels.shape)}] to {path}");
    }

    /// <summary>Device-to-device copy of 2 GiB, bytes read plus written per second (median of 10 after warm-up).</summary>
    private static double CopyBandwidth(Device device)
    {
        using var scope = NewDisposeScope();
        long n = 1L << 30; // float16 elements: 2 GiB per buffer
        var src = torch.randn(n, ScalarType.Float16, device);
        var dst = torch.empty(n, ScalarType.Float16, device);
        for (int i = 0; i < 3; i++) dst.copy_(src);
        torch.cuda.synchronize(device);
        var times = new List<double>();
        for (int i = 0; i < 10; i++)
        {
            var sw = Stopwatch.StartNew();
            dst.copy_(src);
            torch.cuda.synchronize(device);
            times.Add(sw.Elapsed.TotalSeconds);
        }
        return 2.0 * n * 2 / Median(times);
    }

    private static double Median(IEnumerable<double> xs)
    {
        var s = xs.OrderBy(x => x).ToArray();
        return s.Length == 0 ? 0 : s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }

    internal static string Gib(long bytes) => $"{bytes / (1024.0 * 1024 * 1024):F2} GiB";
}

/// <summary>Samples device memory in use (driver view) and host anonymous memory every 20 ms, keeping the peaks.</summary>
internal sealed class MemorySampler : IDisposable
{
    private readonly Thread _thread;
    private volatile bool _stop;
    private int _device = -1;
    private long _peakDevice, _peakRss, _startDevice = -1;

    public MemorySampler()
    {
        _thread = new Thread(Loop) { IsBackground = true, Name = "memory sampler" };
        _thread.Start();
    }

    public long PeakDeviceUsed => Interlocked.Read(ref _peakDevice);
    public long PeakRssAnon => Interlocked.Read(ref _peakRss);
    public long DeviceUsedAtStart => Interlocked.Read(ref _startDevice);

    public void Reset() => Interlocked.Exchange(ref _peakRss, 0);

    public void Watch(int device)
    {
        Interlocked.Exchange(ref _startDevice, SampleDeviceUsed(device));
        _device = device;
    }

    public long SampleDeviceUsed(int device)
    {
        var (free, total) = CudaDriver.GetMemoryInfo(device);
        return total - free;
    }

    private void Loop()
    {
        while (!_stop)
        {
            long rss = RssAnon();
            if (rss > Interlocked.Read(ref _peakRss)) Interlocked.Exchange(ref _peakRss, rss);
            if (_device >= 0)
            {
                long used = SampleDeviceUsed(_device);
                if (used > Interlocked.Read(ref _peakDevice)) Interlocked.Exchange(ref _peakDevice, used);
            }
            Thread.Sleep(20);
        }
    }

    private static long RssAnon()
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith("RssAnon:", StringComparison.Ordinal))
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
        return 0;
    }

    public void Dispose()
    {
        _stop = true;
        _thread.Join();
    }
}

/// <summary>Writes log entries to the console (the app carries no logging package).</summary>
internal sealed class ConsoleLogger : ILogger
{
    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
    public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Information;
    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        if (IsEnabled(logLevel)) Console.WriteLine($"[{logLevel}] {formatter(state, exception)}");
    }
}
