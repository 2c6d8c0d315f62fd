using ShareGPT4V.Preprocessing;
using TorchSharp;

namespace ShareGPT4V.Generation;

/// <summary>
/// One image of a request to the <see cref="GenerationEngine"/>: its preprocessed pixels, or a way to make them, and
/// the key of its embedding in the engine's image cache (null: never cached).
/// </summary>
internal sealed class EngineImage
{
    private readonly Func<PreprocessedImage>? _load;
    private PreprocessedImage? _pixels;

    /// <summary>An image whose pixels are known.</summary>
    public EngineImage(PreprocessedImage pixels, string? cacheKey = null)
    {
        _pixels = pixels ?? throw new ArgumentNullException(nameof(pixels));
        CacheKey = cacheKey;
    }

    /// <summary>An image given as pixels [3, H, W] or [1, 3, H, W] (float32, preprocessed already; copied).</summary>
    public EngineImage(torch.Tensor pixels, string? cacheKey = null)
    {
        ArgumentNullException.ThrowIfNull(pixels);
        using var scope = torch.NewDisposeScope();
        var t = (pixels.dim() == 4 ? pixels.squeeze(0) : pixels).to(torch.ScalarType.Float32).cpu().contiguous();
        if (t.dim() != 3 || t.shape[0] != 3) throw new ArgumentException($"Pixels must have shape [3, H, W], got [{string.Join(", ", pixels.shape)}]", nameof(pixels));
        _pixels = new PreprocessedImage(t.data<float>().ToArray(), (int)t.shape[1], (int)t.shape[2], Array.Empty<byte>());
        CacheKey = cacheKey;
    }

    /// <summary>
    /// An image preprocessed only when its embedding is not in the cache: <paramref name="load"/> runs on the engine's
    /// thread, at most once.
    /// </summary>
    public EngineImage(string cacheKey, Func<PreprocessedImage> load)
    {
        CacheKey = cacheKey ?? throw new ArgumentNullException(nameof(cacheKey));
        _load = load ?? throw new ArgumentNullException(nameof(load));
    }

    /// <summary>Identifies the image's embedding: a hash of the encoded bytes and of the preprocessing settings.</summary>
    public string? CacheKey { get; }

    internal PreprocessedImage Pixels => _pixels ??= _load!();
}

/// <summary>One sequence to generate: prompt ids (with image placeholders), its images, options and callbacks.</summary>
internal sealed class SequenceRequest
{
    /// <summary>Prompt token ids; the model's image placeholder marks each image (see <see cref="LlavaModel.BuildInputs"/>).</summary>
    public required IReadOnlyList<int> PromptIds { get; init; }
    /// <summary>The images, in the order of their placeholders.</summary>
    public IReadOnlyList<EngineImage> Images { get; init; } = Array.Empty<EngineImage>();
    /// <summary>Sampling, lengths and stop conditions.</summary>
    public GenerationOptions Options { get; init; } = new();
    /// <summary>Stop strings besides <see cref="GenerationOptions.StopStrings"/> (the template's).</summary>
    public IReadOnlyList<string> ExtraStopStrings { get; init; } = Array.Empty<string>();
    /// <summary>Receives each piece of the answer's text once it can no longer change (on the engine's thread).</summary>
    public Action<string>? OnText { get; init; }
    /// <summary>Receives the logits [vocab] (float32) each token is sampled from, by step; for checks against goldens.</summary>
    public Action<int, torch.Tensor>? OnStepLogits { get; init; }
    /// <summary>Stops the sequence at its next step and frees its slot.</summary>
    public CancellationToken CancellationToken { get; init; }
    /// <summary>Time already spent on the caller's side (image decoding), reported in the timings.</summary>
    public TimeSpan PreprocessTime { get; init; }
    /// <summary>Started when the request was made: time to first token and total time count from here (null: from admission).</summary>
    public System.Diagnostics.Stopwatch? Started { get; init; }
    /// <summary>Whether this sequence may reuse and feed the engine's KV prefix cache (multi-turn chat).</summary>
    public bool UsePrefixCache { get; init; } = true;
}

/// <summary>Counters of the engine's caches (monotonic, except the byte and entry figures).</summary>
public sealed record EngineCounters
{
    /// <summary>Images whose embedding came from the cache.</summary>
    public long ImageCacheHits { get; init; }
    /// <summary>Images encoded by the vision tower.</summary>
    public long ImageCacheMisses { get; init; }
    /// <summary>Image embeddings held now (one tensor each).</summary>
    public int ImageCacheEntries { get; init; }
    /// <summary>Bytes of image embeddings held now.</summary>
    public long ImageCacheBytes { get; init; }
    /// <summary>Prefills that reused a cached KV prefix.</summary>
    public long PrefixCacheHits { get; init; }
    /// <summary>Prompt positions whose keys and values were copied from the prefix cache instead of computed.</summary>
    public long PrefixTokensReused { get; init; }
    /// <summary>Conversations' KV prefixes held now (two tensors per layer each).</summary>
    public int PrefixCacheEntries { get; init; }
    /// <summary>Bytes of KV prefixes held now.</summary>
    public long PrefixCacheBytes { get; init; }
    /// <summary>Prefix entries dropped to stay within the budget.</summary>
    public long PrefixCacheEvictions { get; init; }
}
