using ShareGPT4V;
using ShareGPT4V.Bench;
using ShareGPT4V.Checkpoints;

// sharegpt4v-bench: `run` times a caption end to end and prints the figures, on the CPU or a CUDA device;
// `make-checkpoint` writes a benchmark-size checkpoint with seeded random weights; `limits` measures only the machine.
// See docs/benchmarks.md, and scripts/gpu/ for the run on a GPU machine. The verbs are parsed by the command-line setup
// the sharegpt4v tool and the GPU check share (samples/Shared); `run` is the default verb (options first).
const string Description = """
    sharegpt4v-bench: time ShareGPT4V / LLaVA-1.5 inference and measure the machine's limits.
    --libtorch-dir (default: the SHAREGPT4V_LIBTORCH_DIR variable) runs on another libtorch, e.g. PyTorch's torch/lib.
    Exit codes: 0 done, 1 error, 2 bad command line.
    """;

VerbSpec[] verbs =
[
    BenchOptions.RunVerb((cl, _) =>
    {
        var options = BenchOptions.From(cl);
        options = options with { LibTorchDir = LoadExternalLibTorch(options.LibTorchDir) };
        var log = options.Json ? Console.Error : Console.Out;
        var result = BenchRunner.Run(options, log);
        if (!options.Json) Console.WriteLine(result.ToTable());
        Console.WriteLine(result.ToJsonLine());
        return Task.FromResult(0);
    }),
    new("kernels", "the decode mat-vec kernel per weight storage")
    {
        Options = [new("threads", "N", "threads (default: all cores)"),
                   new("rows", "LIST", "also time float32 and bfloat16 weights with these batch rows, the kernel pairing rows and not (e.g. 1,2,4,8)")],
        Run = (cl, _) =>
        {
            var rows = cl.Has("rows") ? cl.IntList("rows", min: 1, max: ShareGPT4V.Modeling.MatVec.MaxRows) : [];
            KernelBench.Run(cl.Int("threads", Environment.ProcessorCount, 1, 1024), rows, Console.Out);
            return Task.FromResult(0);
        },
    },
    QualityOptions.Verb((cl, _) =>
    {
        var r = QualityRunner.Run(QualityOptions.From(cl), Console.Error);
        Console.WriteLine(System.Text.Json.JsonSerializer.Serialize(r, new System.Text.Json.JsonSerializerOptions { PropertyNamingPolicy = System.Text.Json.JsonNamingPolicy.SnakeCaseLower }));
        return Task.FromResult(0);
    }),
    new("limits", "only the machine's limits (no model): quick checks of contention before a run")
    {
        Options =
        [
            new("threads", "N", "threads (default: all cores)"),
            new("bandwidth-mib", "N", "MiB streamed by the read-bandwidth measurement (default 1024)"),
            BenchOptions.LibTorchDirOption,
        ],
        Run = (cl, _) =>
        {
            int threads = cl.Int("threads", Environment.ProcessorCount, 1, 1024);
            long bytes = (long)cl.Int("bandwidth-mib", 1024, 1, 1 << 20) << 20;
            LoadExternalLibTorch(cl.Value("libtorch-dir"));
            TorchSharp.torch.set_num_threads(threads);
            Console.WriteLine($"threads {threads}, load average {ProcessStats.LoadAverage1()}");
            Console.WriteLine($"read bandwidth {MachineLimits.ReadBandwidthGBs(threads, bytes):F1} GB/s");
            foreach (int bits in MachineLimits.AvailableFmaWidths)
                Console.WriteLine($"FMA peak ({bits}-bit) {MachineLimits.FmaPeakGFlops(threads, bits: bits):F1} GFLOP/s");
            var t = BenchModelSpec.Default.Text;
            Console.WriteLine($"decode kernel (fp32 weights) {MachineLimits.MatVecGBs(bytes, TorchSharp.torch.ScalarType.Float32):F1} GB/s, (bf16 weights) {MachineLimits.MatVecGBs(bytes, TorchSharp.torch.ScalarType.BFloat16):F1} GB/s");
            Console.WriteLine($"GEMM 625x{t.HiddenSize} by {t.HiddenSize}->{t.IntermediateSize} fp32 {MachineLimits.GemmGFlops(625, t.HiddenSize, t.IntermediateSize, TorchSharp.torch.ScalarType.Float32, TorchSharp.torch.CPU):F1} GFLOP/s");
            return Task.FromResult(0);
        },
    },
    BenchOptions.MakeCheckpointVerb((cl, _) =>
    {
        var options = MakeCheckpointOptions.From(cl);
        LoadExternalLibTorch(options.LibTorchDir);
        var preset = BenchModelSpec.Preset(options.Preset);
        var spec = options.LlmLayers is int layers ? preset.WithLlmLayers(layers) : preset;
        var sw = System.Diagnostics.Stopwatch.StartNew();
        int lastPercent = -1;
        var progress = new SyncProgress<CheckpointWriteProgress>(p =>
        {
            int percent = (int)(100 * p.BytesDone / Math.Max(1, p.TotalBytes));
            if (percent / 10 != lastPercent / 10) Console.Error.WriteLine($"{percent}% ({p.File})");
            lastPercent = percent;
        });
        var result = CheckpointMaker.Make(options.Out, spec, options.Seed, BenchOptions.ParseDType(options.DType, "--dtype"),
            options.Overwrite, progress: progress);
        Console.WriteLine($"wrote {result.TensorCount} tensors, {result.TotalBytes / 1e9:F2} GB in {result.Files.Count} file(s) to {Path.GetFullPath(options.Out)} in {sw.Elapsed.TotalSeconds:F1} s");
        return Task.FromResult(0);
    }),
];

// `sharegpt4v-bench --model ... --image ...` is a run.
if (args.Length > 0 && args[0].StartsWith("--", StringComparison.Ordinal) && args[0] is not ("--help" or "--version")) args = ["run", .. args];
return await CommandLineApp.RunAsync("sharegpt4v-bench", Description, verbs, args, e =>
{
    if (e is not ShareGPT4VException) return null;
    Console.Error.WriteLine($"error: {e.Message}");
    return 1;
}, CancellationToken.None);

/// <summary>
/// Loads the libtorch named by --libtorch-dir (else by SHAREGPT4V_LIBTORCH_DIR) before anything touches TorchSharp: the
/// bench published for a GPU machine carries no libtorch and runs on that machine's own. Returns the folder, or null.
/// </summary>
static string? LoadExternalLibTorch(string? dir)
{
    dir ??= Environment.GetEnvironmentVariable(ShareGPT4V.Cuda.CudaOptions.LibTorchDirectoryVariable) is { Length: > 0 } env ? env : null;
    if (dir is not null) Console.Error.WriteLine(ShareGPT4V.Cuda.NativeLibTorch.Load(dir).Summary);
    return dir;
}

/// <summary>Reports on the calling thread (Progress&lt;T&gt; would post to the thread pool and reorder lines).</summary>
internal sealed class SyncProgress<T>(Action<T> report) : IProgress<T>
{
    public void Report(T value) => report(value);
}
