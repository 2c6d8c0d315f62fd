using ShareGPT4V.Configuration;

namespace ShareGPT4V.Bench;

/// <summary>
/// Work and memory traffic of each stage, counted from the model's dimensions: the FLOPs of the matmuls
/// (2 per multiply-add; element-wise work is left out) and the bytes a decode step must read.
/// </summary>
internal static class ModelCost
{
    /// <summary>FLOPs of encoding one image: patch convolution, the CLIP layers up to the selected one, the projector.</summary>
    public static double VisionFlops(LlavaConfig c)
    {
        var v = c.Vision;
        double patches = v.NumPatches, t = patches + 1, h = v.HiddenSize;
        double flops = 2 * patches * (v.NumChannels * v.PatchSize * v.PatchSize) * h;
        int n = v.NumHiddenLayers + 1;
        int layers = c.VisionFeatureLayer < 0 ? n + c.VisionFeatureLayer : c.VisionFeatureLayer;
        double perLayer = 2 * t * 4 * h * h        // q, k, v, out projections
                        + 2 * t * 2 * h * v.IntermediateSize // fc1, fc2
                        + 4 * t * t * h;           // QKᵀ and attention × V
        flops += layers * perLayer;
        double tokens = c.ImageSeqLength, th = c.Text.HiddenSize;
        flops += 2 * tokens * (h * th + (c.ProjectorDepth - 1) * th * th);
        return flops;
    }

    /// <summary>FLOPs of a prefill of <paramref name="tokens"/> positions in one row (causal attention counted once), logits for the last position only.</summary>
    public static double PrefillFlops(LlamaConfig c, long tokens)
    {
        double t = tokens, h = c.HiddenSize, q = (double)c.NumAttentionHeads * c.HeadDim, kv = (double)c.NumKeyValueHeads * c.HeadDim;
        double perLayer = 2 * t * (h * q + 2 * h * kv + q * h)
                        + 2 * t * 3 * h * c.IntermediateSize
                        + 2 * t * t * q; // QKᵀ and attention × V over the causal half
        return c.NumHiddenLayers * perLayer + 2 * h * c.VocabSize;
    }

    /// <summary>
    /// Bytes one decode step of <paramref name="batch"/> rows reads at cache length <paramref name="position"/>: every
    /// language-model weight once (the embedding table only for the looked-up rows, unless the LM head reuses it), plus
    /// the keys and values cached so far.
    /// </summary>
    public static double DecodeBytesPerStep(LlavaModel model, int batch, long position)
    {
        var c = model.Config.Text;
        double bytes = 0;
        long embedBytes = 0, embedRow = 0;
        foreach (var (name, p) in model.LanguageModel.named_parameters())
        {
            long size = p.numel() * p.ElementSize;
            if (name.EndsWith("embed_tokens.weight", StringComparison.Ordinal))
            {
                embedBytes = size;
                embedRow = p.shape[1] * p.ElementSize;
                continue;
            }
            bytes += size;
        }
        bytes += c.TieWordEmbeddings ? embedBytes : batch * embedRow;
        double kvElement = ShareGPT4V.Checkpoints.SafeTensorsFile.ElementSize(model.LanguageModel.DType);
        bytes += 2.0 * c.NumHiddenLayers * batch * c.NumKeyValueHeads * c.HeadDim * (position + 1) * kvElement;
        return bytes;
    }

    /// <summary>Bytes of every parameter of the model as held in memory.</summary>
    public static long WeightBytes(LlavaModel model) => model.parameters().Sum(p => p.numel() * p.ElementSize);
}
