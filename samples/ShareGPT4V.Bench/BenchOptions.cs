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
    /// policy on a GPU (bfloat16 from compute capability 8.0, else float16); see the README's dtype section.
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

    public const string Usage = """
        sharegpt4v-bench run --model DIR --image FILE [--max-new-tokens N] [--threads N] [--dtype auto|fp32|bf16|fp16|q8_0|q4_0]
                             [--batch N] [--device cpu|cuda|cuda:N|auto] [--libtorch-dir DIR] [--template NAME]
                             [--prompt TEXT] [--warmup-tokens N] [--repeat N] [--bandwidth-mib N] [--skip-limits]
                             [--dump-inputs FILE] [--concurrency 1,2,4,8] [--second-turn] [--json]
        sharegpt4v-bench make-checkpoint --out DIR [--llm-layers N] [--seed S] [--dtype fp32|bf16|fp16] [--overwrite]
                             [--libtorch-dir DIR]
        sharegpt4v-bench limits [--threads N] [--bandwidth-mib N] [--libtorch-dir DIR]
        sharegpt4v-bench kernels [--threads N]   (the decode mat-vec kernel per weight storage)
        sharegpt4v-bench quality --model DIR [--dtype q8_0|q4_0|bf16|fp16] [--tokens N] [--threads N]
                             (top-1 agreement and mean KL against float32 on the same weights, teacher-forced)
        --libtorch-dir (default: the SHAREGPT4V_LIBTORCH_DIR variable) runs on another libtorch, e.g. PyTorch's torch/lib.
        """;

    public static BenchOptions Parse(IReadOnlyList<string> args)
    {
        var a = new ArgReader(args, flags: new[] { "--json", "--skip-limits", "--second-turn" });
        var o = new BenchOptions
        {
            Model = a.Required("--model"),
            Image = a.Required("--image"),
            MaxNewTokens = a.Int("--max-new-tokens", 32, min: 1, max: 100_000),
            Threads = a.Int("--threads", Environment.ProcessorCount, min: 1, max: 1024),
            DType = a.String("--dtype", "auto"),
            Batch = a.Int("--batch", 1, min: 1, max: 256),
            Json = a.Flag("--json"),
            Device = a.String("--device", "cpu"),
            LibTorchDir = a.String("--libtorch-dir", null),
            DumpInputs = a.String("--dump-inputs", null),
            Template = a.String("--template", "vicuna_v1"),
            Prompt = a.String("--prompt", "Describe this image in detail."),
            WarmupTokens = a.Int("--warmup-tokens", 3, min: 0, max: 100_000),
            Repeat = a.Int("--repeat", 1, min: 1, max: 100),
            BandwidthBytes = (long)a.Int("--bandwidth-mib", 1024, min: 1, max: 1 << 20) << 20,
            SkipLimits = a.Flag("--skip-limits"),
            Concurrency = a.IntList("--concurrency", min: 1, max: 256),
            SecondTurn = a.Flag("--second-turn"),
        };
        a.EnsureAllUsed();
        _ = o.RequestedDType; // validates --dtype
        DeviceRequest.Parse(o.Device, "--device"); // the syntax only; the provider decides whether the device can be used
        return o;
    }
}

/// <summary>Options of <c>sharegpt4v-bench make-checkpoint</c>.</summary>
internal sealed record MakeCheckpointOptions
{
    public required string Out { get; init; }
    public int LlmLayers { get; init; } = BenchModelSpec.Default.Text.NumHiddenLayers;
    public ulong Seed { get; init; } = 1;
    public string DType { get; init; } = "fp32";
    public bool Overwrite { get; init; }
    public string? LibTorchDir { get; init; }

    public static MakeCheckpointOptions Parse(IReadOnlyList<string> args)
    {
        var a = new ArgReader(args, flags: new[] { "--overwrite" });
        var o = new MakeCheckpointOptions
        {
            Out = a.Required("--out"),
            LlmLayers = a.Int("--llm-layers", BenchModelSpec.Default.Text.NumHiddenLayers, min: 1, max: 1000),
            Seed = (ulong)a.Int("--seed", 1, min: 0, max: int.MaxValue),
            DType = a.String("--dtype", "fp32"),
            Overwrite = a.Flag("--overwrite"),
            LibTorchDir = a.String("--libtorch-dir", null),
        };
        a.EnsureAllUsed();
        BenchOptions.ParseDType(o.DType, "--dtype");
        return o;
    }
}

/// <summary>A minimal <c>--name value</c> parser whose errors name the option at fault.</summary>
internal sealed class ArgReader
{
    private readonly Dictionary<string, string?> _values = new(StringComparer.Ordinal);
    private readonly HashSet<string> _used = new(StringComparer.Ordinal);

    public ArgReader(IReadOnlyList<string> args, IEnumerable<string> flags)
    {
        var flagSet = new HashSet<string>(flags, StringComparer.Ordinal);
        for (int i = 0; i < args.Count; i++)
        {
            var name = args[i];
            if (!name.StartsWith("--", StringComparison.Ordinal))
                throw new ModelConfigurationException($"Unexpected argument '{name}' (options are written --name value)", null, name);
            string? value = null;
            if (!flagSet.Contains(name))
            {
                if (i + 1 >= args.Count) throw new ModelConfigurationException("The option needs a value", null, name);
                value = args[++i];
            }
            if (!_values.TryAdd(name, value))
                throw new ModelConfigurationException("The option is given twice", null, name);
        }
    }

    public string Required(string name) =>
        String(name, null) ?? throw new ModelConfigurationException("The option is required", null, name);

    public string String(string name, string? fallback)
    {
        _used.Add(name);
        return _values.TryGetValue(name, out var v) ? v! : fallback!;
    }

    public bool Flag(string name)
    {
        _used.Add(name);
        return _values.ContainsKey(name);
    }

    public int Int(string name, int fallback, int min, int max)
    {
        _used.Add(name);
        if (!_values.TryGetValue(name, out var v)) return fallback;
        if (!int.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out var n))
            throw new ModelConfigurationException($"'{v}' is not an integer", null, name);
        if (n < min || n > max)
            throw new ModelConfigurationException($"{n} is outside [{min}, {max}]", null, name);
        return n;
    }

    /// <summary>A comma-separated list of integers (empty when the option is absent).</summary>
    public IReadOnlyList<int> IntList(string name, int min, int max)
    {
        _used.Add(name);
        if (!_values.TryGetValue(name, out var v)) return Array.Empty<int>();
        var list = new List<int>();
        foreach (var part in v!.Split(',', StringSplitOptions.TrimEntries))
        {
            if (!int.TryParse(part, NumberStyles.Integer, CultureInfo.InvariantCulture, out var n))
                throw new ModelConfigurationException($"'{part}' is not an integer (expected a list such as 1,2,4,8)", null, name);
            if (n < min || n > max) throw new ModelConfigurationException($"{n} is outside [{min}, {max}]", null, name);
            list.Add(n);
        }
        return list;
    }

    public void EnsureAllUsed()
    {
        var unknown = _values.Keys.Where(k => !_used.Contains(k)).ToList();
        if (unknown.Count > 0)
            throw new ModelConfigurationException($"Unknown option(s): {string.Join(", ", unknown)}", null, unknown[0]);
    }
}
