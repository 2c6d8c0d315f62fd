using TorchSharp;

namespace ShareGPT4V.Tests.Checkpoints;

internal static class TensorAssert
{
    /// <summary>Same dtype, same shape and the same bytes (bit-identical, so -0.0 and NaN payloads count).</summary>
    public static bool BitEqual(torch.Tensor a, torch.Tensor b)
    {
        if (a.dtype != b.dtype || !a.shape.SequenceEqual(b.shape)) return false;
        using var ca = a.contiguous();
        using var cb = b.contiguous();
        return ca.bytes.SequenceEqual(cb.bytes);
    }
}
