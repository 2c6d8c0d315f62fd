using System.Text.Encodings.Web;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using ShareGPT4V.Checkpoints;
using ShareGPT4V.CommandLineTools;
using ShareGPT4V.Conversation;
using ShareGPT4V.Cuda;
using ShareGPT4V.Generation;
using ShareGPT4V.Hub;

namespace ShareGPT4V.Cli;

/// <summary>What caption and chat share: loading the pipeline, generation options, and JSON answers.</summary>
internal static class Shared
{
    /// <summary>Values --dtype accepts when a model is loaded (case-insensitive).</summary>
    public static readonly string[] DTypes = { "auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16", "half", "q8_0", "q4_0" };

    public static readonly OptionSpec[] ModelOptions =
    {
        new("model", "DIR|REPO|FILE", "model folder: llava-hf, or the LLM folder of an original LLaVA / ShareGPT4V checkpoint; or a hub id " +
            "(e.g. Lin-Chen/ShareGPT4V-7B), fetched into the hub cache with its vision tower (HF_ENDPOINT, HF_TOKEN, HF_HOME, " +
            "HF_HUB_OFFLINE apply); or a llama.cpp LLM .gguf file (then --mmproj is required) (required)"),
        new("mmproj", "FILE", "the mmproj .gguf (CLIP tower and projector) of a GGUF model"),
        new("revision", "R", "hub branch, tag or commit for a hub id (default main)"),
        new("vision-tower", "DIR|REPO", "CLIP tower folder or hub id, when mm_vision_tower cannot be found next to the model"),
        new("template", "NAME", "conversation template (default: the checkpoint's own); raw = the prompt as written, <image> marking " +
            "where the image goes. Others: " + string.Join(", ", ConversationTemplates.Names.Where(n => n != "raw")), Choices: ConversationTemplates.Names),
        new("dtype", "NAME", "auto (default: float32 on the CPU, where it is fastest; bfloat16 on a GPU that has it, else float16; " +
            "a GGUF model keeps its tensors as stored), float32, bfloat16 or float16; q8_0 or q4_0 block-quantize the language model " +
            "at load (CPU)", Choices: DTypes),
        new("device", "NAME", "cpu (default), cuda:N, cuda (the GPU with the most free memory) or auto (a GPU when CUDA works, else the CPU)",
            Choices: new[] { "cpu", "cuda", "cuda:0", "auto" }),
        new("libtorch-dir", "DIR", "run on this libtorch, e.g. a PyTorch install's site-packages/torch/lib for CUDA (default: the " +
            "SHAREGPT4V_LIBTORCH_DIR variable; see docs/cuda.md)"),
        new("threads", "N", "libtorch CPU threads"),
        new("context-length", "N", "context window in tokens (default: the model's)"),
    };

    public static readonly OptionSpec[] GenerationOptionSpecs =
    {
        new("max-new-tokens", "N", "longest answer in tokens (default 512)"),
        new("temperature", "T", "0 = greedy (default, the reference protocol); > 0 samples"),
        new("top-p", "P", "nucleus sampling mass, in (0, 1] (default 1 = off)"),
        new("top-k", "K", "keep the K likeliest tokens (default 0 = off; transformers samples with 50)"),
        new("min-p", "P", "drop tokens below P x the likeliest token's probability (default off)"),
        new("repetition-penalty", "R", "1 = off (default); > 1 discourages the ids seen so far (llava-hf checkpoints: prompt and answer; " +
            "original-layout checkpoints: the answer only, as LLaVA does)"),
        new("no-repeat-ngram-size", "K", "never repeat an n-gram of K ids among those ids (default 0 = off)"),
        new("num-beams", "B", "beam search with B beams (default 1 = off; needs --temperature 0, one prompt at a time; the answer is " +
            "printed when the search ends)"),
        new("length-penalty", "L", "beam search: score = log-probability / length^L (default 1)"),
        OptionSpec.Flag("early-stopping", "beam search: stop once B hypotheses have finished"),
        new("seed", "S", "makes sampling reproducible"),
        new("stop", "TEXT", "stop when TEXT is generated (repeatable)", Repeatable: true),
    };

    /// <summary>
    /// Checks the model options before anything loads, so a bad command line exits with 2 and a plain message: the
    /// model must be a folder, a hub id or a .gguf file; the template and dtype must be known.
    /// </summary>
    /// <summary>
    /// --model names an existing folder (or, where the command takes them, a hub id or a llama.cpp .gguf file):
    /// a file or a folder that does not exist is a bad command line.
    /// </summary>
    public static string CheckModelPath(CommandLine cl, bool hubId, bool gguf)
    {
        var model = cl.Required("model");
        string also = (hubId, gguf) switch
        {
            (true, true) => " (or a hub id, or a llama.cpp .gguf file)",
            (true, false) => " (or a hub id)",
            _ => "",
        };
        if (File.Exists(model) && !(gguf && model.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase)))
            throw new UsageException($"--model must be a model folder{also}, not a file: '{model}'");
        if (!File.Exists(model) && !Directory.Exists(model) && !(hubId && HuggingFaceHub.IsRepoId(model)))
            throw new UsageException($"--model: the model folder '{model}' does not exist" +
                (hubId ? " (give a model folder, or a hub id such as Lin-Chen/ShareGPT4V-7B)" : ""));
        return model;
    }

    public static void CheckModelOptions(CommandLine cl)
    {
        CheckModelPath(cl, hubId: true, gguf: true);
        if (cl.Value("template") is { } t && !ConversationTemplates.TryGet(t, out _))
            throw new UsageException($"--template must be one of {string.Join(", ", ConversationTemplates.Names)}, got '{t}'");
        if (cl.Value("dtype") is { } d && !DTypes.Contains(d.Trim().ToLowerInvariant()))
            throw new UsageException($"--dtype must be one of auto, float32, bfloat16, float16, q8_0, q4_0, got '{d}'");
        if (cl.Value("device") is { } device)
        {
            try { Devices.DeviceRequest.Parse(device, "--device"); }
            catch (DeviceException e) { throw new UsageException(e.Message); }
        }
    }

    public static MultimodalPipeline Load(CommandLine cl, GenerationOptions generation, int? maxBatchSize = null, Preprocessing.ImageAspectMode? aspect = null,
        PromptOverflow? overflow = null)
    {
        CheckModelOptions(cl);
        // An external libtorch goes in before anything touches TorchSharp; the CUDA provider resolves cuda, cuda:N and
        // auto (and refuses, saying why, when CUDA cannot be used); cpu never probes for a GPU.
        var libtorch = cl.Value("libtorch-dir")
            ?? (Environment.GetEnvironmentVariable(CudaOptions.LibTorchDirectoryVariable) is { Length: > 0 } env ? env : null);
        if (libtorch is not null) NativeLibTorch.Load(libtorch);
        var options = new PipelineOptions
        {
            ModelPath = cl.Required("model"),
            VisionTowerPath = cl.Value("vision-tower"),
            MmprojPath = cl.Value("mmproj"),
            Template = cl.Value("template"),
            DType = cl.Value("dtype") ?? "auto",
            Device = cl.Value("device") ?? "cpu",
            DeviceProvider = new CudaDeviceProvider(new CudaOptions { LibTorchDirectory = libtorch }),
            Threads = cl.Int("threads", 1, 1024),
            ContextLength = cl.Int("context-length", 1, 1 << 24),
            Generation = generation,
            Overflow = overflow ?? PromptOverflow.Refuse,
            // Beam search keeps one cache row per beam: room for them is part of the memory the device is checked for.
            MaxBatchSize = Math.Max(maxBatchSize ?? new PipelineOptions().MaxBatchSize, generation.NumBeams),
            ImageAspect = aspect,
            Hub = new HubOptions { Revision = cl.Value("revision"), Progress = DownloadCommand.ProgressBar() },
        };
        var bar = new ConsoleProgress("loading");
        var pipeline = MultimodalPipeline.Load(options, new SyncProgress<LoadProgress>(p =>
            bar.Report(p.BytesLoaded, p.BytesTotal, $"{p.TensorsLoaded}/{p.TensorsTotal} tensors")), new StderrLogger());
        bar.Done();
        return pipeline;
    }

    public static GenerationOptions Generation(CommandLine cl)
    {
        var d = new GenerationOptions();
        var options = new GenerationOptions
        {
            MaxNewTokens = cl.Int("max-new-tokens", 0, 1 << 20) ?? d.MaxNewTokens,
            Temperature = cl.Double("temperature", 0, 100) ?? d.Temperature,
            TopP = cl.Double("top-p", 0, 1, minExclusive: true) ?? d.TopP,
            TopK = cl.Int("top-k", 0, 1 << 24) ?? d.TopK,
            MinP = cl.Double("min-p", 0, 1) ?? d.MinP,
            RepetitionPenalty = cl.Double("repetition-penalty", 0, 100, minExclusive: true) ?? d.RepetitionPenalty,
            NoRepeatNGramSize = cl.Int("no-repeat-ngram-size", 0, 1 << 20) ?? d.NoRepeatNGramSize,
            NumBeams = cl.Int("num-beams", 1, GenerationOptions.MaxBeams) ?? d.NumBeams,
            LengthPenalty = cl.Double("length-penalty", -100, 100) ?? d.LengthPenalty,
            EarlyStopping = cl.Flag("early-stopping"),
            Seed = cl.Int("seed", int.MinValue, int.MaxValue),
            StopStrings = cl.All("stop").Count > 0 ? cl.All("stop").ToList() : d.StopStrings,
        };
        // Combinations the library refuses (beam search with sampling) are command-line errors.
        if (options.IsBeamSearch && options.Temperature != 0)
            throw new UsageException("--num-beams above 1 needs --temperature 0 (beam search with sampling is not supported)");
        return options;
    }

    /// <summary>
    /// A one-shot answer that does not fit the context window, explained with the command's own options (the library's
    /// message names library options); null when <paramref name="e"/> is another prompt error.
    /// </summary>
    public static PromptException? ContextOverflow(PromptException e, MultimodalPipeline pipeline, string prompt, int images, GenerationOptions generation)
    {
        int used = pipeline.CountPromptTokens(prompt, images), context = pipeline.ContextLength, asked = generation.MaxNewTokens;
        if (used + asked <= context) return null;
        return new PromptException(used >= context
            ? $"The prompt takes {used} tokens (image tokens included), more than the context window of {context}: shorten --prompt or give fewer --image"
            : $"The prompt takes {used} tokens and --max-new-tokens asks for {asked}: {used + asked} exceeds the context window of {context} (give --max-new-tokens {context - used} or less)", e);
    }

    private static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping, // keep non-ASCII text readable; this is not HTML
        DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull,
    };

    /// <summary>One answer as a single JSON line.</summary>
    public static string ToJson(GenerationResult r, string? image = null) => JsonSerializer.Serialize(new
    {
        image,
        text = r.Text,
        token_ids = r.TokenIds,
        finish_reason = r.FinishReason.ToString(),
        prompt_tokens = r.PromptTokens,
        generated_tokens = r.GeneratedTokens,
        timings_ms = new
        {
            preprocess = r.Timings.Preprocess.TotalMilliseconds,
            vision = r.Timings.Vision.TotalMilliseconds,
            prefill = r.Timings.Prefill.TotalMilliseconds,
            decode = r.Timings.Decode.TotalMilliseconds,
            time_to_first_token = r.Timings.TimeToFirstToken.TotalMilliseconds,
            total = r.Timings.Total.TotalMilliseconds,
        },
    }, Json);

    public static string ErrorJson(string image, Exception e) => JsonSerializer.Serialize(new { image, error = e.Message, error_type = e.GetType().Name }, Json);
}

/// <summary>Warnings on stderr (e.g. <c>--device auto</c> falling back to the CPU); stdout stays the answers.</summary>
internal sealed class StderrLogger : ILogger
{
    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
    public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Warning;
    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        if (IsEnabled(logLevel)) Console.Error.WriteLine($"{logLevel.ToString().ToLowerInvariant()}: {formatter(state, exception)}");
    }
}
