using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.Modeling;

/// <summary>
/// Scalars that stay alive while libtorch reads them. TorchSharp 0.107 turns a number given to a tensor operation
/// (<c>x + 1e-5</c>, <c>x.pow(2)</c>, <c>fill_(1)</c>, <c>masked_fill(m, v)</c>, <c>torch.arange(n)</c>, and the hidden
/// alpha of <c>a + b</c> and <c>a.add(b)</c>) into a native Scalar that nothing references during the native call, so a
/// garbage collection on another thread can free it mid-call: a corrupt-Scalar error, or a wrong value (measured: about
/// one generation in 750 failed under ordinary load; see the GC pressure tests). Model code passes Scalars from here
/// instead: the shared constants below, or a bag that holds the ones a computation makes until it is disposed.
/// </summary>
internal sealed class HeldScalars : IDisposable
{
    // Static, so always reachable and never finalised.
    public static readonly Scalar Zero = 0.ToScalar();
    public static readonly Scalar One = 1.ToScalar();
    public static readonly Scalar Two = 2.ToScalar();

    private readonly List<Scalar> _made = new();

    /// <summary>A Scalar of <paramref name="value"/> (a double) that lives as long as this bag.</summary>
    public Scalar this[double value]
    {
        get
        {
            var s = value.ToScalar();
            _made.Add(s);
            return s;
        }
    }

    /// <summary>An integer Scalar that lives as long as this bag.</summary>
    public Scalar Int(long value)
    {
        var s = value.ToScalar();
        _made.Add(s);
        return s;
    }

    public void Dispose()
    {
        foreach (var s in _made) s.Dispose();
        _made.Clear();
    }

    /// <summary>a + b without TorchSharp's implicit alpha.</summary>
    public static Tensor Add(Tensor a, Tensor b) => a.add(b, One);

    /// <summary>int64 [start, stop) with step 1 (or <paramref name="step"/>).</summary>
    public static Tensor Arange(long start, long stop, Device? device = null, long step = 1)
    {
        using var s0 = start.ToScalar();
        using var s1 = stop.ToScalar();
        using var ds = step.ToScalar();
        return torch.arange(s0, s1, ds, ScalarType.Int64, device);
    }

    // The lowest finite value of each dtype, for additive attention masks.
    private static readonly Scalar LowestHalf = (-65504.0).ToScalar();
    private static readonly Scalar LowestBFloat16 = (-3.3895313892515355e38).ToScalar();
    private static readonly Scalar LowestFloat = ((double)float.MinValue).ToScalar();
    private static readonly Scalar LowestDouble = double.MinValue.ToScalar();

    public static Scalar Lowest(ScalarType dtype) => dtype switch
    {
        ScalarType.Float16 => LowestHalf,
        ScalarType.BFloat16 => LowestBFloat16,
        ScalarType.Float64 => LowestDouble,
        _ => LowestFloat,
    };
}
