using ShareGPT4V.Configuration;
using TorchSharp;

namespace ShareGPT4V.Devices;

/// <summary>
/// What a model will take in device memory, computed from its configuration alone (nothing is loaded): the weights
/// exactly, the static KV cache exactly, and an approximate activation workspace for one prefill of the whole context.
/// </summary>
public sealed record MemoryEstimate
{
    /// <summary>The element type of the weights.</summary>
    public required torch.ScalarType DType { get; init; }
    /// <summary>Rows the KV cache holds (the pipeline's MaxBatchSize).</summary>
    public required int Batch { get; init; }
    /// <summary>Positions per row the KV cache holds.</summary>
    public required int Positions { get; init; }

    /// <summary>Parameters of the CLIP vision tower.</summary>
    public required long VisionParameters { get; init; }
    /// <summary>Parameters of the projector from image features to the language model's embeddings.</summary>
    public required long ProjectorParameters { get; init; }
    /// <summary>Parameters of the language model, its embedding table included.</summary>
    public required long LanguageParameters { get; init; }
    /// <summary>Parameters of the input embedding table (read one row per token, not whole, by a decode step).</summary>
    public required long EmbeddingParameters { get; init; }
    /// <summary>All parameters of the model.</summary>
    public long Parameters => VisionParameters + ProjectorParameters + LanguageParameters;

    /// <summary>Bytes per weight element.</summary>
    public required int ElementSize { get; init; }
    /// <summary>Bytes of all weights.</summary>
    public long WeightBytes => Parameters * ElementSize;
    /// <summary>Bytes of the KV cache for <see cref="Batch"/> rows of <see cref="Positions"/> positions.</summary>
    public required long KvCacheBytes { get; init; }
    /// <summary>Activations of a prefill of <see cref="Positions"/> tokens for <see cref="Batch"/> rows (approximate).</summary>
    public required long WorkspaceBytes { get; init; }
    /// <summary>Weights, KV cache and workspace together: what the device must have free.</summary>
    public long TotalBytes => WeightBytes + KvCacheBytes + WorkspaceBytes;

    /// <summary>
    /// Weight bytes one decode step must read: the language model without its input embedding table (unless the
    /// output projection is tied to it). Divided into the memory bandwidth it gives the decode roofline.
    /// </summary>
    public required long DecodeWeightBytesPerStep { get; init; }

    /// <summary>KV-cache bytes per position and row: what a decode step reads per cached position of each row.</summary>
    public required long KvBytesPerPositionPerRow { get; init; }

    /// <summary>One line for logs and error messages.</summary>
    public override string ToString() =>
        $"weights {Gib(WeightBytes)} ({DTypeChoice.Name(DType)}) + KV cache {Gib(KvCacheBytes)} (batch {Batch} x {Positions} positions)"
        + $" + workspace {Gib(WorkspaceBytes)} = {Gib(TotalBytes)}";

    /// <summary>A byte count as GiB with two decimals, e.g. <c>5.21 GiB</c>.</summary>
    public static string Gib(long bytes) => $"{bytes / (1024.0 * 1024 * 1024):F2} GiB";
}

/// <summary>Computes <see cref="MemoryEstimate"/>s; the parameter counts follow the modules in Vision/ and Language/.</summary>
internal static class MemoryEstimator
{
    public static MemoryEstimate Estimate(LlavaConfig config, torch.ScalarType dtype, int positions, int batch)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (positions <= 0) throw new ArgumentOutOfRangeException(nameof(positions), "positions must be positive");
        if (batch <= 0) throw new ArgumentOutOfRangeException(nameof(batch), "batch must be positive");
        int e = ElementSize(dtype);
        var v = config.Vision;
        var t = config.Text;

        long vh = v.HiddenSize, vi = v.IntermediateSize, tokens = v.NumPatches + 1;
        long visionLayer = 4 * (vh * vh + vh) + 4 * vh + (vi * vh + vi) + (vh * vi + vh);
        long vision = vh                                        // class_embedding
                      + vh * v.NumChannels * v.PatchSize * v.PatchSize // patch_embedding (no bias)
                      + tokens * vh                             // position_embedding
                      + 2 * vh                                  // pre_layrnorm
                      + v.NumHiddenLayers * visionLayer
                      + 2 * vh;                                 // post_layernorm

        long th = t.HiddenSize, ti = t.IntermediateSize, hd = t.HeadDim;
        long q = t.NumAttentionHeads * hd, kv = t.NumKeyValueHeads * hd;
        long projector = vh * th + th + (config.ProjectorDepth - 1) * (th * th + th);
        long attn = th * q + 2 * th * kv + q * th + (t.AttentionBias ? q + 2 * kv + th : 0);
        long mlp = 3 * th * ti + (t.MlpBias ? 2 * ti + th : 0);
        long embed = (long)t.VocabSize * th;
        long language = embed + t.NumHiddenLayers * (attn + mlp + 2 * th) + th + (t.TieWordEmbeddings ? 0 : embed);

        long kvCache = 2L * t.NumHiddenLayers * batch * t.NumKeyValueHeads * positions * hd * e;

        // Prefill peak, per decoder layer: residual, normed input, q/k/v, the three MLP intermediates, the additive
        // mask [B, 1, T, T] and the last-position logits (model dtype and their float32 copy). The vision tower runs
        // one image per row: its layer activations plus, should attention take the math path, the score matrix.
        long b = batch, T = positions;
        long lmActs = b * T * (3 * th + q + 2 * kv + 3 * ti) * e + b * T * T * e + b * (long)t.VocabSize * (e + 4);
        long visionActs = b * tokens * (4 * vh + vi) * e + b * v.NumAttentionHeads * tokens * tokens * e;

        return new MemoryEstimate
        {
            DType = dtype, Batch = batch, Positions = positions, ElementSize = e,
            VisionParameters = vision, ProjectorParameters = projector, LanguageParameters = language, EmbeddingParameters = embed,
            KvCacheBytes = kvCache,
            WorkspaceBytes = Math.Max(lmActs, visionActs),
            DecodeWeightBytesPerStep = (language - (t.TieWordEmbeddings ? 0 : embed)) * e,
            KvBytesPerPositionPerRow = 2L * t.NumHiddenLayers * t.NumKeyValueHeads * hd * e,
        };
    }

    public static int ElementSize(torch.ScalarType t) => t switch
    {
        torch.ScalarType.Float64 => 8,
        torch.ScalarType.Float32 => 4,
        torch.ScalarType.Float16 or torch.ScalarType.BFloat16 => 2,
        _ => throw new ArgumentException($"{t} is not a floating-point type a model can be kept in", nameof(t)),
    };
}
