using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.Modeling;

/// <summary>
/// Mixed precision for training (<c>--dtype bf16</c>), in the spirit of <c>torch.autocast</c>, which TorchSharp does
/// not expose: inside a scope, the matrix products (linear layers, LoRA, attention, the patch convolution) cast their
/// float32 inputs and weights to bfloat16, multiply there, and return float32. Everything else (norms, activations,
/// the loss, the optimizer and its float32 master weights) stays float32, and the casts are differentiable, so the
/// gradients reach the float32 parameters. Unlike <c>torch.autocast</c> the products' outputs come back as float32,
/// so no elementwise op runs in bfloat16. The scope is per thread: the trainer's forward and backward run on one.
/// </summary>
internal static class Autocast
{
    [ThreadStatic] private static ScalarType? _dtype;

    /// <summary>The lower precision the products run in on this thread, or null outside a scope.</summary>
    public static ScalarType? Current => _dtype;

    /// <summary>Runs matrix products in <paramref name="dtype"/> (null: float32) until the returned scope is disposed.</summary>
    public static Scope Enter(ScalarType? dtype)
    {
        var previous = _dtype;
        _dtype = dtype;
        return new Scope(previous);
    }

    public readonly struct Scope(ScalarType? previous) : IDisposable
    {
        public void Dispose() => _dtype = previous;
    }

    /// <summary>Whether a product over this float32 input runs in the lower precision.</summary>
    public static bool Applies(Tensor x) => _dtype is not null && x.dtype == ScalarType.Float32;

    public static Tensor Linear(Tensor x, Tensor weight, Tensor? bias)
    {
        var dt = _dtype!.Value;
        using var scope = NewDisposeScope();
        return nn.functional.linear(x.to(dt), weight.to(dt), bias?.to(dt)).to(x.dtype).MoveToOuterDisposeScope();
    }

    /// <summary>scaled_dot_product_attention in the lower precision when a scope is active, else as it is.</summary>
    public static Tensor Attention(Tensor q, Tensor k, Tensor v, Tensor? mask = null, bool causal = false)
    {
        if (!Applies(q)) return nn.functional.scaled_dot_product_attention(q, k, v, mask, 0.0, causal);
        var dt = _dtype!.Value;
        using var scope = NewDisposeScope();
        // An additive float mask holds float32's lowest value, which bfloat16 would round to -inf: clamp it first.
        var m = mask is null || mask.dtype == ScalarType.Bool ? mask : mask.clamp_min(HeldScalars.Lowest(dt)).to(dt);
        var o = nn.functional.scaled_dot_product_attention(q.to(dt), k.to(dt), v.to(dt), m, 0.0, causal);
        return o.to(q.dtype).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Whether this machine multiplies bfloat16 fast on the CPU: AVX512-BF16 or AMX-BF16 in /proc/cpuinfo. Without
    /// them libtorch's bfloat16 GEMMs are far slower than float32, and the trainer stays in float32.
    /// </summary>
    public static bool CpuHasFastBf16 => ForceCpuBf16 ?? Detected;

    /// <summary>Tests set this to run the bfloat16 path on any CPU (slowly where it has no bf16 instructions).</summary>
    internal static bool? ForceCpuBf16 { get; set; }

    private static readonly bool Detected = DetectCpuBf16();

    private static bool DetectCpuBf16()
    {
        try
        {
            if (!OperatingSystem.IsLinux() || !File.Exists("/proc/cpuinfo")) return false;
            foreach (var line in File.ReadLines("/proc/cpuinfo"))
                if (line.StartsWith("flags", StringComparison.Ordinal))
                {
                    var flags = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                    return flags.Contains("avx512_bf16") || flags.Contains("amx_bf16");
                }
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return false;
    }
}
