using ShareGPT4V.Checkpoints;
using ShareGPT4V.Hub;

namespace ShareGPT4V.Cli;

/// <summary><c>convert</c>: any checkpoint the library reads (PyTorch .bin, safetensors) → safetensors in a chosen layout.</summary>
internal static class ConvertCommand
{
    public static VerbSpec Verb => new("convert", "rewrite a checkpoint (PyTorch .bin or safetensors) as safetensors, in either layout")
    {
        Details = """
        usage: sharegpt4v convert --model DIR --output DIR [--layout same|llava-hf|original] [options]

        Rewrites a model as sharded safetensors, one tensor at a time in its stored dtype (bit-identical), with its
        config, tokenizer and preprocessor files. The checkpoint is checked against the model first: one that would
        not load is not converted. The output folder must not exist or be empty.

        """,
        Options =
        [
            new("model", "DIR|REPO", "model folder (llava-hf, or the LLM folder of an original checkpoint), or a hub id fetched into the hub cache with its vision tower (required)"),
            new("revision", "R", "hub branch, tag or commit for a hub id (default main)"),
            new("vision-tower", "DIR|REPO", "CLIP tower folder or hub id, when mm_vision_tower cannot be found next to the model"),
            new("output", "DIR", "where to write (required). llava-hf: the model folder. original: a folder holding the LLM folder and the tower folder side by side"),
            new("layout", "NAME", "same (default), llava-hf, or original", Choices: new[] { "same", "llava-hf", "original" }),
            new("max-shard-size", "SIZE", "largest shard, e.g. 2GB or 500MB (default 5GB)"),
            new("llm-folder", "NAME", "original layout: name of the LLM folder (default: the source's)"),
            new("tower-folder", "NAME", "original layout: name of the tower folder (default: the source's, or clip-vision-tower)"),
            new("format", "NAME", "safetensors (default), or gguf: llama.cpp's LLaVA pair, llm-TYPE.gguf and mmproj-f32|f16.gguf, written into --output (--dtype f32, f16, q8_0 or q4_0; default f32)"),
            new("dtype", "q8_0|q4_0", "write the language model's matrices block-quantized (llama.cpp's Q8_0 / Q4_0 blocks; the LM head Q8_0), llava-hf layout; the folder loads with the blocks memory-mapped"),
        ],
        Run = RunAsync,
    };

    public static async Task<int> RunAsync(CommandLine cl, CancellationToken cancellationToken)
    {
        bool gguf = (cl.Value("format") ?? "safetensors") == "gguf";
        Shared.CheckModelPath(cl, hubId: !gguf, gguf: false);
        if ((cl.Value("format") ?? "safetensors") is var format && format != "safetensors")
        {
            if (format != "gguf") throw new UsageException($"--format must be safetensors or gguf, got '{format}'");
            var type = (cl.Value("dtype") ?? "f32").ToLowerInvariant() switch
            {
                "f32" or "fp32" or "float32" => Checkpoints.Gguf.GgufTensorType.F32,
                "f16" or "fp16" or "float16" => Checkpoints.Gguf.GgufTensorType.F16,
                "q8_0" => Checkpoints.Gguf.GgufTensorType.Q8_0,
                "q4_0" => Checkpoints.Gguf.GgufTensorType.Q4_0,
                var other => throw new UsageException($"--dtype for gguf must be f32, f16, q8_0 or q4_0, got '{other}'"),
            };
            var sw = System.Diagnostics.Stopwatch.StartNew();
            var r = Checkpoints.Gguf.GgufExporter.Export(cl.Required("model"), cl.Required("output"), type, cl.Value("vision-tower"));
            Console.WriteLine($"Wrote {r.LlmPath} and {r.MmprojPath} in {sw.Elapsed.TotalSeconds:F1} s.");
            Console.WriteLine($"Load it with --model {r.LlmPath} --mmproj {r.MmprojPath}.");
            return 0;
        }
        var layout = (cl.Value("layout") ?? "same") switch
        {
            "same" => TargetLayout.Same,
            "llava-hf" or "hf" => TargetLayout.LlavaHf,
            "original" or "llava" => TargetLayout.Original,
            var other => throw new UsageException($"--layout must be same, llava-hf or original, got '{other}'"),
        };
        Modeling.QuantizationFormat? quantization = null;
        if (cl.Value("dtype") is { } d)
            quantization = d.Trim().ToLowerInvariant() switch
            {
                "q8_0" => Modeling.QuantizationFormat.Q8_0,
                "q4_0" => Modeling.QuantizationFormat.Q4_0,
                _ => throw new UsageException($"--dtype must be q8_0 or q4_0, got '{d}'"),
            };
        if (quantization is not null && layout == TargetLayout.Same) layout = TargetLayout.LlavaHf;
        // A hub id (and the tower it names) is fetched into the hub cache first.
        var (modelPath, towerPath) = await HuggingFaceHub.ResolveModelAsync(cl.Required("model"), cl.Value("vision-tower"),
            new HubOptions { Revision = cl.Value("revision"), Progress = DownloadCommand.ProgressBar() }, cancellationToken);
        var options = new ModelConversionOptions
        {
            Quantization = quantization,
            Layout = layout,
            VisionTowerPath = towerPath,
            MaxShardBytes = cl.Size("max-shard-size") ?? new ModelConversionOptions().MaxShardBytes,
            LanguageModelFolderName = cl.Value("llm-folder"),
            VisionTowerFolderName = cl.Value("tower-folder"),
        };
        var bar = new ConsoleProgress("converting");
        var started = System.Diagnostics.Stopwatch.StartNew();
        var result = ModelConverter.Convert(modelPath, cl.Required("output"), options,
            new SyncProgress<CheckpointWriteProgress>(p => bar.Report(p.BytesDone, p.TotalBytes, $"{p.TensorsDone}/{p.TensorCount} {Path.GetFileName(p.File)}")));
        bar.Done();
        Console.WriteLine($"Wrote {result.Tensors} tensors ({result.Bytes / 1e6:F1} MB) in {started.Elapsed.TotalSeconds:F1} s as {result.Layout}.");
        Console.WriteLine(result.Layout == Configuration.CheckpointLayout.Original
            ? $"Load it with --model {result.ModelPath} (its CLIP tower is {result.VisionTowerPath})."
            : $"Load it with --model {result.ModelPath}.");
        return 0;
    }
}
