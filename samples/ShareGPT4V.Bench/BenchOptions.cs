using System.Globalization;
using ShareGPT4V.Devices;
using TorchSharp;

namespace ShareGPT4V.Bench;

/// <summary>Options of a benchmark run (<c>sharegpt4v-bench run ...</c>).</summary>
internal sealed record BenchOptions
{
    public required string Model { get; init; }
    public required string Image { get; init; }
    /// <summary>New tokens per row, the one produced by the prefill included.</summary>
    public int MaxNewTokens { get; init; } = 32;
    /// <summary>Intra-op threads for libtorch and for our own kernels.</summary>
    public int Threads { get; init; } = Environment.ProcessorCount;
    /// <summary>
    /// auto, fp32, bf16 or fp16: the dtype weights are kept in. auto is float32 on the CPU and the CUDA provider's
    /// policy on a GPU (bfloat16 from compute capability 8.0, else float16); see docs/benchmarks.md (Dtypes on CPU).
    /// </summary>
    public string DType { get; init; } = "auto";
    public int Batch { get; init; } = 1;
    public bool Json { get; init; }
    /// <summary>cpu, cuda (the device with the most free memory), cuda:N or auto (CUDA when it works, else the CPU).</summary>
    public string Device { get; init; } = "cpu";
    /// <summary>
    /// The lib folder of a libtorch to run on (a PyTorch install's torch/lib), loaded before TorchSharp starts: how the
    /// bench published without libtorch runs on a GPU machine's own CUDA libtorch. Null = the app's own libtorch.
    /// </summary>
    public string? LibTorchDir { get; init; }
    /// <summary>Writes the exact input ids (image tokens expanded) and pixel values of one row as safetensors, for transformers.</summary>
    public string? DumpInputs { get; init; }
    public string Template { get; init; } = "vicuna_v1";
    public string Prompt { get; init; } = "Describe this image in detail.";
    /// <summary>Times the vision and prefill stages run (medians are reported).</summary>
    public int Repeat { get; init; } = 1;
    /// <summary>Decode steps left out of the median (first calls, caches warming).</summary>
    public int WarmupTokens { get; init; } = 3;
    /// <summary>Bytes streamed by the read-bandwidth kernel (far larger than the last-level cache).</summary>
    public long BandwidthBytes { get; init; } = 1L << 30;
    /// <summary>Seconds the FMA loop runs per trial.</summary>
    public double FmaSeconds { get; init; } = 0.25;
    /// <summary>Numbers of concurrent requests whose aggregate decode speed is measured (--concurrency 1,2,4,8); empty = none.</summary>
    public IReadOnlyList<int> Concurrency { get; init; } = Array.Empty<int>();
    /// <summary>Measure a chat's second-turn time to first token (image and KV prefix reused) against the first turn's.</summary>
    public bool SecondTurn { get; init; }
    /// <summary>Skip the machine-limit measurements (the ratios are then absent).</summary>
    public bool SkipLimits { get; init; }

    /// <summary>The dtype asked for: null for auto (the device provider decides); float32 compute for q8_0 / q4_0.</summary>
    public torch.ScalarType? RequestedDType => Quantization is not null ? torch.ScalarType.Float32 : DTypeChoice.Parse(DType, "--dtype");

    /// <summary>q8_0 / q4_0: the language model block-quantized at load (CPU).</summary>
    public ShareGPT4V.Modeling.QuantizationFormat? Quantization => ShareGPT4V.Modeling.QuantizationFormats.TryParse(DType);

    /// <summary>fp32, bf16 or fp16 (make-checkpoint: the dtype the file stores).</summary>
    public static torch.ScalarType ParseDType(string value, string option) => value switch
    {
        "fp32" or "float32" => torch.ScalarType.Float32,
        "bf16" or "bfloat16" => torch.ScalarType.BFloat16,
        "fp16" or "float16" => torch.ScalarType.Float16,
        _ => throw new ModelConfigurationException($"Unknown dtype '{value}' (expected fp32, bf16 or fp16)", null, option),
    };

    /// <summary>The short name the JSON uses (fp32, bf16, fp16).</summary>
    public static string ShortName(torch.ScalarType t) => t switch
    {
        torch.ScalarType.Float32 => "fp32",
        torch.ScalarType.BFloat16 => "bf16",
        torch.ScalarType.Float16 => "fp16",
        _ => DTypeChoice.Name(t),
    };

    public static readonly OptionSpec LibTorchDirOption = new("libtorch-dir", "DIR",
        "run on this libtorch, e.g. PyTorch's torch/lib (default: the SHAREGPT4V_LIBTORCH_DIR variable)");

    /// <summary><c>run</c>: the options of a timed caption.</summary>
    public static VerbSpec RunVerb(Func<CommandLine, CancellationToken, Task<int>>? run = null) => new("run", "time a caption end to end and print the figures (the default verb)")
    {
        Options =
        [
            new("model", "DIR", "model folder (required)"),
            new("image", "FILE", "image to caption (required)"),
            new("max-new-tokens", "N", "new tokens per row, the prefill's included (default 32)"),
            new("threads", "N", "threads for libtorch and the decode kernels (default: all cores)"),
            new("dtype", "NAME", "auto (default), fp32, bf16, fp16, q8_0 or q4_0", Choices: new[] { "auto", "fp32", "bf16", "fp16", "q8_0", "q4_0" }),
            new("batch", "N", "rows generated together (default 1)"),
            new("device", "NAME", "cpu (default), cuda, cuda:N or auto", Choices: new[] { "cpu", "cuda", "cuda:0", "auto" }),
            LibTorchDirOption,
            new("template", "NAME", "conversation template (default vicuna_v1)"),
            new("prompt", "TEXT", "the instruction (default: \"Describe this image in detail.\")"),
            new("warmup-tokens", "N", "decode steps left out of the median (default 3)"),
            new("repeat", "N", "times the vision and prefill stages run; medians are reported (default 1)"),
            new("bandwidth-mib", "N", "MiB streamed by the read-bandwidth measurement (default 1024)"),
            OptionSpec.Flag("skip-limits", "skip the machine-limit measurements (no ratios)"),
            new("dump-inputs", "FILE", "write one row's input ids and pixel values as safetensors, for transformers"),
            new("concurrency", "LIST", "measure the aggregate decode speed at these numbers of concurrent requests, e.g. 1,2,4,8"),
            OptionSpec.Flag("second-turn", "measure a chat's second-turn time to first token against the first turn's"),
            OptionSpec.Flag("json", "print only the JSON line on standard output (the log goes to standard error)"),
        ],
        Run = run,
    };

    /// <summary><c>make-checkpoint</c>: a benchmark-size checkpoint with seeded random weights.</summary>
    public static VerbSpec MakeCheckpointVerb(Func<CommandLine, CancellationToken, Task<int>>? run = null) => new("make-checkpoint", "write a benchmark-size checkpoint with seeded random weights")
    {
        Options =
        [
            new("out", "DIR", "the folder to write (required)"),
            new("preset", "NAME", "bench (default: CLIP ViT-L/336 + a 1.1B LLaMA) or 7b (ShareGPT4V-7B's dimensions)", Choices: new[] { "bench", "7b" }),
            new("llm-layers", "N", "decoder layers of the language model (default: the preset's)"),
            new("seed", "S", "weight seed (default 1)"),
            new("dtype", "NAME", "fp32 (default), bf16 or fp16: the dtype the file stores", Choices: new[] { "fp32", "bf16", "fp16" }),
            OptionSpec.Flag("overwrite", "replace an existing checkpoint in --out"),
            LibTorchDirOption,
        ],
        Run = run,
    };

    /// <summary>The options of a timed caption, from a command line (tests pass the arguments after <c>run</c>).</summary>
    public static BenchOptions Parse(IReadOnlyList<string> args) => From(CommandLineApp.ParseVerb(RunVerb(), args));

    public static BenchOptions From(CommandLine a)
    {
        var o = new BenchOptions
        {
            Model = a.Required("model"),
            Image = a.Required("image"),
            MaxNewTokens = a.Int("max-new-tokens", 32, min: 1, max: 100_000),
            Threads = a.Int("threads", Environment.ProcessorCount, min: 1, max: 1024),
            DType = a.Value("dtype", "auto"),
            Batch = a.Int("batch", 1, min: 1, max: 256),
            Json = a.Flag("json"),
            Device = a.Value("device", "cpu"),
            LibTorchDir = a.Value("libtorch-dir"),
            DumpInputs = a.Value("dump-inputs"),
            Template = a.Value("template", "vicuna_v1"),
            Prompt = a.Value("prompt", "Describe this image in detail."),
            WarmupTokens = a.Int("warmup-tokens", 3, min: 0, max: 100_000),
            Repeat = a.Int("repeat", 1, min: 1, max: 100),
            BandwidthBytes = (long)a.Int("bandwidth-mib", 1024, min: 1, max: 1 << 20) << 20,
            SkipLimits = a.Flag("skip-limits"),
            Concurrency = a.IntList("concurrency", min: 1, max: 256),
            SecondTurn = a.Flag("second-turn"),
        };
        try
        {
            _ = o.RequestedDType; // validates --dtype
            DeviceRequest.Parse(o.Device, "--device"); // the syntax only; the provider decides whether the device can be used
        }
        catch (ShareGPT4VException e) { throw new UsageException(e.Message); }
        return o;
    }
}

/// <summary>Options of <c>sharegpt4v-bench make-checkpoint</c>.</summary>
internal sealed record MakeCheckpointOptions
{
    public required string Out { get; init; }
    public string Preset { get; init; } = "bench";
    public int? LlmLayers { get; init; }
    public ulong Seed { get; init; } = 1;
    public string DType { get; init; } = "fp32";
    public bool Overwrite { get; init; }
    public string? LibTorchDir { get; init; }

    public static MakeCheckpointOptions Parse(IReadOnlyList<string> args) => From(CommandLineApp.ParseVerb(BenchOptions.MakeCheckpointVerb(), args));

    public static MakeCheckpointOptions From(CommandLine a)
    {
        var o = new MakeCheckpointOptions
        {
            Out = a.Required("out"),
            Preset = a.Value("preset", "bench"),
            LlmLayers = a.Has("llm-layers") ? a.Int("llm-layers", 1, min: 1, max: 1000) : null,
            Seed = (ulong)a.Int("seed", 1, min: 0, max: int.MaxValue),
            DType = a.Value("dtype", "fp32"),
            Overwrite = a.Flag("overwrite"),
            LibTorchDir = a.Value("libtorch-dir"),
        };
        try { BenchOptions.ParseDType(o.DType, "--dtype"); }
        catch (ShareGPT4VException e) { throw new UsageException(e.Message); }
        return o;
    }
}
