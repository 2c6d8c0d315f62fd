using System.Globalization;

namespace ShareGPT4V.Server;

/// <summary>Thrown for a command line the server cannot start with; the message is printed with the usage text.</summary>
public sealed class ServerUsageException(string message) : Exception(message);

/// <summary>How the server runs: the model, where it listens, and the limits every request is held to.</summary>
public sealed record ServerOptions
{
    /// <summary>Model folder, or a llama.cpp LLM <c>.gguf</c> file (as <see cref="PipelineOptions.ModelPath"/>).</summary>
    public string ModelPath { get; init; } = "";
    /// <summary>llama.cpp <c>mmproj</c> GGUF of the vision tower and projector, with a <c>.gguf</c> <see cref="ModelPath"/>.</summary>
    public string? MmprojPath { get; init; }
    /// <summary>Weight storage: auto, fp32, bf16, fp16, q8_0 or q4_0 (as <see cref="PipelineOptions.DType"/>).</summary>
    public string DType { get; init; } = "auto";
    /// <summary>The id clients send as <c>model</c>; default: the model folder's name.</summary>
    public string? ModelName { get; init; }
    /// <summary>Addresses to listen on (ASP.NET Core's <c>--urls</c> syntax, ';'-separated); null = the host's default.</summary>
    public string? Urls { get; init; }
    /// <summary>When set, every /v1 request needs <c>Authorization: Bearer KEY</c>.</summary>
    public string? ApiKey { get; init; }
    /// <summary>Conversation template name; null = the checkpoint's own.</summary>
    public string? Template { get; init; }
    /// <summary>libtorch threads; null = libtorch's default.</summary>
    public int? Threads { get; init; }
    /// <summary>Context window in tokens; null = the model's.</summary>
    public int? ContextLength { get; init; }
    /// <summary>Rows the engine may run together.</summary>
    public int MaxBatchSize { get; init; } = 8;
    /// <summary>Budget of the engine's image embedding cache in bytes; null = the library's default, 0 = off.</summary>
    public long? ImageCacheBytes { get; init; }
    /// <summary>Budget of the engine's KV prefix cache (multi-turn reuse) in bytes; null = the library's default, 0 = off.</summary>
    public long? PrefixCacheBytes { get; init; }
    /// <summary>Requests admitted at once (running or waiting); more get 429 with Retry-After.</summary>
    public int MaxQueue { get; init; } = 64;
    /// <summary>Largest request body in bytes (413 beyond).</summary>
    public long MaxBodyBytes { get; init; } = 32L * 1024 * 1024;
    /// <summary>Largest encoded image in bytes.</summary>
    public long MaxImageBytes { get; init; } = 16L * 1024 * 1024;
    /// <summary>Largest image in pixels (width * height, read from the header before decoding).</summary>
    public long MaxImagePixels { get; init; } = 40L * 1000 * 1000;
    /// <summary>Most images in one request.</summary>
    public int MaxImagesPerRequest { get; init; } = 4;
    /// <summary>Largest prompt in tokens (image tokens included); null = the context window.</summary>
    public int? MaxPromptTokens { get; init; }
    /// <summary>Default and ceiling of <c>max_tokens</c>.</summary>
    public int MaxTokens { get; init; } = 512;
    /// <summary>Most choices (<c>n</c>) in one request.</summary>
    public int MaxChoices { get; init; } = 4;
    /// <summary>Wall-clock limit of one request, queueing included.</summary>
    public TimeSpan RequestTimeout { get; init; } = TimeSpan.FromMinutes(5);
    /// <summary>
    /// URL prefixes that <c>image_url</c> may name besides <c>data:</c> URLs (<c>https://images.example/</c>,
    /// <c>file:///srv/images/</c>); empty = data URLs only.
    /// </summary>
    public IReadOnlyList<string> AllowedImageUrlPrefixes { get; init; } = Array.Empty<string>();
    /// <summary>OTLP endpoint the metrics are exported to; null = not exported (still observable in-process).</summary>
    public string? OtlpEndpoint { get; init; }
    /// <summary>Console logs as JSON lines (for log collectors) instead of text.</summary>
    public bool JsonLogs { get; init; }

    /// <summary>The <c>model</c> id served.</summary>
    public string EffectiveModelName => ModelName ?? (ModelPath.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase)
        ? Path.GetFileNameWithoutExtension(ModelPath)
        : Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(ModelPath))));

    /// <summary>Checks every option; throws <see cref="ServerUsageException"/> naming the one at fault.</summary>
    public void Validate()
    {
        if (string.IsNullOrWhiteSpace(ModelPath)) throw new ServerUsageException("--model is required");
        bool gguf = ModelPath.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase);
        if (gguf ? !File.Exists(ModelPath) : !Directory.Exists(ModelPath))
            throw new ServerUsageException($"--model: the {(gguf ? "file" : "folder")} '{ModelPath}' does not exist");
        if (MmprojPath is not null && !gguf) throw new ServerUsageException("--mmproj goes with a --model that is a .gguf file");
        if (MmprojPath is not null && !File.Exists(MmprojPath)) throw new ServerUsageException($"--mmproj: the file '{MmprojPath}' does not exist");
        if (DType is not ("auto" or "fp32" or "float32" or "bf16" or "bfloat16" or "fp16" or "float16" or "q8_0" or "q4_0"))
            throw new ServerUsageException($"--dtype must be auto, fp32, bf16, fp16, q8_0 or q4_0, got '{DType}'");
        if (ApiKey is { Length: 0 }) throw new ServerUsageException("--api-key must not be empty");
        if (Threads is <= 0) throw new ServerUsageException("--threads must be positive");
        if (ContextLength is <= 0) throw new ServerUsageException("--context-length must be positive");
        if (MaxBatchSize <= 0) throw new ServerUsageException("--max-batch-size must be positive");
        if (MaxQueue <= 0) throw new ServerUsageException("--max-queue must be positive");
        if (ImageCacheBytes < 0) throw new ServerUsageException("--image-cache-bytes must not be negative");
        if (PrefixCacheBytes < 0) throw new ServerUsageException("--prefix-cache-bytes must not be negative");
        if (MaxBodyBytes <= 0) throw new ServerUsageException("--max-body-bytes must be positive");
        if (MaxImageBytes <= 0) throw new ServerUsageException("--max-image-bytes must be positive");
        if (MaxImagePixels <= 0) throw new ServerUsageException("--max-image-pixels must be positive");
        if (MaxImagesPerRequest < 0) throw new ServerUsageException("--max-images must not be negative");
        if (MaxPromptTokens is <= 0) throw new ServerUsageException("--max-prompt-tokens must be positive");
        if (MaxTokens <= 0) throw new ServerUsageException("--max-tokens must be positive");
        if (MaxChoices <= 0) throw new ServerUsageException("--max-n must be positive");
        if (RequestTimeout <= TimeSpan.Zero) throw new ServerUsageException("--request-timeout must be positive");
        foreach (var p in AllowedImageUrlPrefixes)
        {
            if (!Uri.TryCreate(p, UriKind.Absolute, out var u) || u.Scheme is not ("http" or "https" or "file"))
                throw new ServerUsageException($"--allow-image-url '{p}' is not an absolute http, https or file URL prefix");
            if (u.Scheme != "file" && u.AbsolutePath == "/" && !p.EndsWith('/'))
                throw new ServerUsageException($"--allow-image-url '{p}' must end with '/' so that it cannot match other hosts");
        }
        if (OtlpEndpoint is not null && !Uri.TryCreate(OtlpEndpoint, UriKind.Absolute, out _))
            throw new ServerUsageException($"--otlp-endpoint '{OtlpEndpoint}' is not an absolute URL");
    }

    /// <summary>The usage text of <c>sharegpt4v-server</c>.</summary>
    public const string Usage = """
        usage: sharegpt4v-server --model DIR [--urls http://127.0.0.1:PORT] [--api-key KEY] [options]

        OpenAI-compatible chat completions (POST /v1/chat/completions, GET /v1/models), a health probe
        (GET /health: 200 once the model is loaded, 503 before) and a web demo at /.

          --model DIR|FILE          model folder (llava-hf or original layout), or a llama.cpp LLM .gguf file
          --mmproj FILE             llama.cpp mmproj .gguf (vision tower + projector) for a .gguf --model
          --dtype NAME              weight storage: auto (default), fp32, bf16, fp16, q8_0 or q4_0 (quantized at load)
          --urls URLS               where to listen (default http://localhost:5000; ';'-separated)
          --api-key KEY             require "Authorization: Bearer KEY" on /v1 (also SHAREGPT4V_API_KEY)
          --model-name NAME         the model id clients send (default: the folder's name)
          --template NAME           conversation template (default: the checkpoint's own)
          --threads N               libtorch threads
          --context-length N        context window in tokens (default: the model's)
          --max-batch-size N        rows run together (default 8)
          --max-queue N             requests admitted at once; more get 429 (default 64)
          --image-cache-bytes N     image embedding cache budget (default: the library's; 0 = off)
          --prefix-cache-bytes N    KV prefix cache budget, reused by multi-turn requests (default: the library's; 0 = off)
          --max-body-bytes N        largest request body (default 33554432)
          --max-image-bytes N       largest encoded image (default 16777216)
          --max-image-pixels N      largest image width*height (default 40000000)
          --max-images N            most images per request (default 4)
          --max-prompt-tokens N     largest prompt, image tokens included (default: the context window)
          --max-tokens N            default and ceiling of max_tokens (default 512)
          --max-n N                 most choices per request (default 4)
          --request-timeout SECONDS wall-clock limit per request (default 300)
          --allow-image-url PREFIX  let image_url fetch URLs starting with PREFIX (http, https or file; repeatable)
          --otlp-endpoint URL       export metrics over OTLP (gRPC, or http/protobuf when the URL ends in /v1/metrics)
          --log-format text|json    console log format (default text)

        """;

    /// <summary>Parses the command line (<c>--name value</c> or <c>--name=value</c>).</summary>
    public static ServerOptions Parse(IReadOnlyList<string> args)
    {
        var values = new Dictionary<string, List<string>>(StringComparer.Ordinal);
        string[] known =
        {
            "model", "mmproj", "dtype", "urls", "api-key", "model-name", "template", "threads", "context-length", "max-batch-size", "max-queue", "image-cache-bytes", "prefix-cache-bytes",
            "max-body-bytes", "max-image-bytes", "max-image-pixels", "max-images", "max-prompt-tokens", "max-tokens", "max-n",
            "request-timeout", "allow-image-url", "otlp-endpoint", "log-format",
        };
        for (int i = 0; i < args.Count; i++)
        {
            var a = args[i];
            if (!a.StartsWith("--", StringComparison.Ordinal)) throw new ServerUsageException($"Unexpected argument '{a}' (options start with --)");
            string name = a[2..];
            string? value = null;
            int eq = name.IndexOf('=');
            if (eq >= 0) { value = name[(eq + 1)..]; name = name[..eq]; }
            if (!known.Contains(name)) throw new ServerUsageException($"Unknown option --{name}");
            if (value is null)
            {
                if (i + 1 >= args.Count) throw new ServerUsageException($"--{name} needs a value");
                value = args[++i];
            }
            if (!values.TryGetValue(name, out var list)) values[name] = list = new List<string>();
            list.Add(value);
        }
        string? One(string name)
        {
            if (!values.TryGetValue(name, out var l)) return null;
            if (l.Count > 1 && name != "allow-image-url") throw new ServerUsageException($"--{name} was given more than once");
            return l[^1];
        }
        long? Long(string name)
        {
            var v = One(name);
            if (v is null) return null;
            if (!long.TryParse(v, NumberStyles.None, CultureInfo.InvariantCulture, out var n)) throw new ServerUsageException($"--{name} must be a whole number, got '{v}'");
            return n;
        }
        int? Int(string name)
        {
            var n = Long(name);
            if (n is > int.MaxValue) throw new ServerUsageException($"--{name} is too large");
            return (int?)n;
        }
        var format = One("log-format") ?? "text";
        if (format is not ("text" or "json")) throw new ServerUsageException($"--log-format must be text or json, got '{format}'");
        var d = new ServerOptions();
        return new ServerOptions
        {
            ModelPath = One("model") ?? "",
            MmprojPath = One("mmproj"),
            DType = One("dtype") ?? d.DType,
            ModelName = One("model-name"),
            Urls = One("urls"),
            ApiKey = One("api-key") ?? Environment.GetEnvironmentVariable("SHAREGPT4V_API_KEY"),
            Template = One("template"),
            Threads = Int("threads"),
            ContextLength = Int("context-length"),
            MaxBatchSize = Int("max-batch-size") ?? d.MaxBatchSize,
            MaxQueue = Int("max-queue") ?? d.MaxQueue,
            ImageCacheBytes = Long("image-cache-bytes"),
            PrefixCacheBytes = Long("prefix-cache-bytes"),
            MaxBodyBytes = Long("max-body-bytes") ?? d.MaxBodyBytes,
            MaxImageBytes = Long("max-image-bytes") ?? d.MaxImageBytes,
            MaxImagePixels = Long("max-image-pixels") ?? d.MaxImagePixels,
            MaxImagesPerRequest = Int("max-images") ?? d.MaxImagesPerRequest,
            MaxPromptTokens = Int("max-prompt-tokens"),
            MaxTokens = Int("max-tokens") ?? d.MaxTokens,
            MaxChoices = Int("max-n") ?? d.MaxChoices,
            RequestTimeout = Long("request-timeout") is long s ? TimeSpan.FromSeconds(s) : d.RequestTimeout,
            AllowedImageUrlPrefixes = values.TryGetValue("allow-image-url", out var prefixes) ? prefixes : Array.Empty<string>(),
            OtlpEndpoint = One("otlp-endpoint"),
            JsonLogs = format == "json",
        };
    }
}
