using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.Modeling;

/// <summary>How a model's weights are stored, tensor by tensor: the per-tensor choice of a quantized load, for logs and reports.</summary>
internal static class WeightStorage
{
    /// <summary>The storage name of one parameter: <c>q8_0</c>, <c>q4_0</c>, or its dtype (<c>float32</c> …).</summary>
    public static string Of(Tensor parameter) =>
        parameter is QuantizedWeight q ? QuantizationFormats.Name(q.Format) : Devices.DTypeChoice.Name(parameter.dtype);

    /// <summary>Bytes a parameter's storage takes (blocks for a quantized matrix).</summary>
    public static long Bytes(Tensor parameter) => parameter.numel() * parameter.ElementSize;

    /// <summary>
    /// One line per part (language model, vision tower and projector): tensors and MiB per storage, and the storage of
    /// the token embeddings and the LM head.
    /// </summary>
    public static string Describe(nn.Module model)
    {
        var parts = new SortedDictionary<string, SortedDictionary<string, (int Count, long Bytes)>>(StringComparer.Ordinal);
        string? embed = null, head = null;
        foreach (var (name, p) in model.named_parameters())
        {
            string part = name.StartsWith("language_model.", StringComparison.Ordinal) ? "language model" : "vision + projector";
            string s = Of(p);
            if (name.EndsWith("embed_tokens.weight", StringComparison.Ordinal)) embed = s;
            if (name.EndsWith("lm_head.weight", StringComparison.Ordinal)) head = s;
            if (!parts.TryGetValue(part, out var byStorage)) parts[part] = byStorage = new(StringComparer.Ordinal);
            var (c, b) = byStorage.TryGetValue(s, out var x) ? x : (0, 0L);
            byStorage[s] = (c + 1, b + Bytes(p));
        }
        var lines = parts.Select(kv => $"{kv.Key}: " + string.Join(", ", kv.Value.Select(s => $"{s.Key} {s.Value.Count} tensors {s.Value.Bytes / 1048576.0:F1} MiB")));
        return string.Join("; ", lines) + $"; embed_tokens {embed ?? "-"}, lm_head {head ?? "tied"}";
    }
}
