using ShareGPT4V.Devices;
using ShareGPT4V.Generation;
using ShareGPT4V.Preprocessing;

namespace ShareGPT4V;

/// <summary>What to do when a prompt plus the requested new tokens do not fit the context window.</summary>
public enum PromptOverflow
{
    /// <summary>Refuse the request with a <see cref="PromptException"/> naming the limit.</summary>
    Refuse,
    /// <summary>Generate fewer new tokens so the request fits (a prompt that alone does not fit is still refused).</summary>
    ClampNewTokens,
}

/// <summary>Options of a <see cref="MultimodalPipeline"/>: where the model is and how to run it.</summary>
public sealed record PipelineOptions
{
    /// <summary>
    /// Folder of the model (llava-hf folder, or the LLM folder of an original LLaVA / ShareGPT4V checkpoint), a Hugging
    /// Face hub id such as <c>Lin-Chen/ShareGPT4V-7B</c>, fetched into the hub cache as from_pretrained does (see <see cref="Hub"/>),
    /// or a llama.cpp LLM GGUF file (then <see cref="MmprojPath"/> names its mmproj GGUF).
    /// </summary>
    public string ModelPath { get; init; } = "";
    /// <summary>The mmproj GGUF (CLIP tower and projector) of a GGUF model; required when <see cref="ModelPath"/> is a GGUF file.</summary>
    public string? MmprojPath { get; init; }
    /// <summary>CLIP tower folder or hub id; overrides <c>mm_vision_tower</c> of an original-layout config.</summary>
    public string? VisionTowerPath { get; init; }
    /// <summary>Hub settings for hub ids (revision, cache, token, offline, download progress); null = the HF_* environment.</summary>
    public ShareGPT4V.Hub.HubOptions? Hub { get; init; }
    /// <summary>
    /// <c>cpu</c> (default), <c>cuda:N</c>, <c>cuda</c> (the CUDA device with the most free memory) or <c>auto</c> (CUDA
    /// when it works, else the CPU). CUDA needs <see cref="DeviceProvider"/> from the ShareGPT4V.Cuda package.
    /// </summary>
    public string Device { get; init; } = "cpu";
    /// <summary>
    /// <c>auto</c> (default: float32 on the CPU; on CUDA bfloat16 where the GPU supports it, else float16; a GGUF
    /// model keeps each tensor as stored), or <c>float32</c>, <c>bfloat16</c>, <c>float16</c>, or <c>q8_0</c> /
    /// <c>q4_0</c>: the language model's matrices block-quantized at load (CPU only; see <see cref="Checkpoints.LoadOptions.Quantization"/>).
    /// </summary>
    public string DType { get; init; } = "auto";
    /// <summary>Run on the CPU (with a logged warning) when CUDA was asked for but cannot be used; otherwise refuse.</summary>
    public bool AllowCpuFallback { get; init; }
    /// <summary>Decides the device and dtype at load; null = <see cref="CpuDeviceProvider"/> (CPU only).</summary>
    public IDeviceProvider? DeviceProvider { get; init; }
    /// <summary>Conversation template name; null picks the checkpoint's own (vicuna_v1 family or llava_hf).</summary>
    public string? Template { get; init; }
    /// <summary>Defaults for requests that pass no generation options.</summary>
    public GenerationOptions Generation { get; init; } = new();
    /// <summary>
    /// How non-square images are made square; null (default) follows the checkpoint's <c>image_aspect_ratio</c>.
    /// Evaluation sets it per benchmark: some reference scripts pad, others resize and crop whatever the config says.
    /// </summary>
    public Preprocessing.ImageAspectMode? ImageAspect { get; init; }
    /// <summary>Limits applied when decoding images.</summary>
    public ImageLoadOptions ImageLimits { get; init; } = ImageLoadOptions.Default;
    /// <summary>Context window in tokens (prompt, image tokens and output); null = the model's max_position_embeddings.</summary>
    public int? ContextLength { get; init; }
    /// <summary>What to do when a request does not fit the context window.</summary>
    public PromptOverflow Overflow { get; init; } = PromptOverflow.Refuse;
    /// <summary>Prompt texts longer than this many characters are refused before tokenization.</summary>
    public int MaxPromptCharacters { get; init; } = 1_000_000;
    /// <summary>
    /// Sequence slots: the most requests (or batch rows) that decode together. The KV cache is allocated once for this
    /// many rows of the whole context; further requests wait for a free slot.
    /// </summary>
    public int MaxBatchSize { get; init; } = 8;
    /// <summary>Budget in bytes of the image embedding cache (keyed by the image bytes' hash and preprocessing settings); 0 = off.</summary>
    public long ImageCacheBytes { get; init; } = 128L << 20;
    /// <summary>
    /// Budget in bytes of the KV prefix cache: finished conversations' keys and values, so the next turn prefills only
    /// its new tokens; 0 = off. Held on the model's device, beside the KV cache.
    /// </summary>
    public long PrefixCacheBytes { get; init; } = 256L << 20;
    /// <summary>Requests that may wait for the inference thread; callers beyond this wait (asynchronously) for room.</summary>
    public int MaxQueueLength { get; init; } = 64;
    /// <summary>
    /// libtorch intra-op threads. Null leaves libtorch's setting alone; a value is applied process-wide (libtorch has one pool).
    /// </summary>
    public int? Threads { get; init; }

    /// <summary>Checks every option; throws <see cref="ModelConfigurationException"/> naming the first one out of range.</summary>
    public void Validate()
    {
        if (string.IsNullOrWhiteSpace(ModelPath)) throw new ModelConfigurationException("ModelPath is required", null, nameof(ModelPath));
        if (Modeling.QuantizationFormats.TryParse(DType) is null) DTypeChoice.Parse(DType, nameof(DType));
        else if (!string.Equals(Device.Trim(), "cpu", StringComparison.OrdinalIgnoreCase))
            throw new ModelConfigurationException($"DType '{DType}' (block quantization) runs on the CPU only; Device is '{Device}'", null, nameof(DType));
        DeviceRequest.Parse(Device, nameof(Device));
        if (ContextLength is <= 0) throw new ModelConfigurationException("ContextLength must be positive", null, nameof(ContextLength));
        if (MaxBatchSize <= 0) throw new ModelConfigurationException("MaxBatchSize must be positive", null, nameof(MaxBatchSize));
        if (ImageCacheBytes < 0) throw new ModelConfigurationException("ImageCacheBytes must be >= 0", null, nameof(ImageCacheBytes));
        if (PrefixCacheBytes < 0) throw new ModelConfigurationException("PrefixCacheBytes must be >= 0", null, nameof(PrefixCacheBytes));
        if (MaxQueueLength <= 0) throw new ModelConfigurationException("MaxQueueLength must be positive", null, nameof(MaxQueueLength));
        if (MaxPromptCharacters <= 0) throw new ModelConfigurationException("MaxPromptCharacters must be positive", null, nameof(MaxPromptCharacters));
        if (Threads is <= 0) throw new ModelConfigurationException("Threads must be positive", null, nameof(Threads));
        try { Generation.Validate(); }
        catch (ArgumentOutOfRangeException e) { throw new ModelConfigurationException(e.Message, null, "Generation." + e.ParamName, e); }
        if (Generation.NumBeams > MaxBatchSize)
            throw new ModelConfigurationException($"Generation.NumBeams ({Generation.NumBeams}) needs one cache row per beam: raise MaxBatchSize ({MaxBatchSize}) to at least that", null, "Generation.NumBeams");
        if (ImageLimits is null) throw new ModelConfigurationException("ImageLimits must not be null", null, nameof(ImageLimits));
        try { ImageLimits.Validate(); }
        catch (ArgumentOutOfRangeException e) { throw new ModelConfigurationException(e.Message, null, "ImageLimits." + e.ParamName, e); }
    }
}
