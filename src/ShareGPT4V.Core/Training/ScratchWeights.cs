using ShareGPT4V.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.Training;

/// <summary>
/// Random initial weights for training from scratch, as transformers initialises LLaVA's parts: every matrix,
/// embedding, convolution and position or class embedding from N(0, 0.02²) (<c>initializer_range</c>), norm weights
/// one, biases zero. Each tensor draws from its own generator seeded by the run's seed and the tensor's name, so the
/// result does not depend on construction order.
/// </summary>
internal sealed class ScratchWeights : WeightSource
{
    private const double Std = 0.02;
    private readonly int _seed;

    public ScratchWeights(int seed) => _seed = seed;

    public override Tensor Take(string name, long[] shape, bool largeMatrix)
    {
        bool bias = name.EndsWith(".bias", StringComparison.Ordinal);
        bool norm = shape.Length == 1 && name.EndsWith(".weight", StringComparison.Ordinal)
            && (name.Contains("norm", StringComparison.Ordinal) || name.Contains("layrnorm", StringComparison.Ordinal));
        if (bias) return torch.zeros(shape, ScalarType.Float32);
        if (norm) return torch.ones(shape, ScalarType.Float32);
        using var g = new torch.Generator(unchecked((ulong)((long)_seed * 1_000_003L + Fnv1a(name))));
        return torch.randn(shape, ScalarType.Float32, generator: g).mul_(Std);
    }

    /// <summary>FNV-1a of the name (stable across processes, unlike string.GetHashCode).</summary>
    private static long Fnv1a(string s)
    {
        ulong h = 0xCBF29CE484222325UL;
        foreach (char ch in s) { h ^= ch; h *= 0x100000001B3UL; }
        return (long)(h >> 1);
    }
}
