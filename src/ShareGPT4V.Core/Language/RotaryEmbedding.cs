using System.Runtime.Intrinsics;
using ShareGPT4V.Checkpoints;
using ShareGPT4V.Modeling;
using ShareGPT4V.Configuration;
using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.Language;

/// <summary>
/// Rotary position embeddings as transformers' LLaMA computes them: inverse frequencies θ^(-2i/d) in float32, the
/// angle position × frequency, [cos, cos] / [sin, sin] halves, and rotate_half. Supports the <c>linear</c>,
/// <c>dynamic</c> (NTK) and <c>llama3</c> scalings.
/// </summary>
internal sealed class RotaryEmbedding : IDisposable
{
    private readonly LlamaConfig _c;
    private readonly Tensor _invFreq; // [d/2] float32, CPU
    private readonly Dictionary<DeviceType, Tensor> _onDevice = new();

    public RotaryEmbedding(LlamaConfig c)
    {
        _c = c;
        _invFreq = ComputeInvFreq(c, c.RopeTheta);
        if (c.RopeScaling is { Type: "linear" } lin)
        {
            using var factor = lin.Factor.ToScalar(); // held for the call: see HeldScalars
            var scaled = _invFreq.div(factor);
            _invFreq.Dispose();
            _invFreq = scaled;
        }
        else if (c.RopeScaling is { Type: "llama3" } l3)
        {
            var scaled = Llama3(_invFreq, l3);
            _invFreq.Dispose();
            _invFreq = scaled;
        }
        _invFreq.DetachFromDisposeScope();
    }

    private static Tensor ComputeInvFreq(LlamaConfig c, double theta)
    {
        using var scope = NewDisposeScope();
        using var held = new HeldScalars();
        var exponents = HeldScalars.Arange(0, c.HeadDim, step: 2).to(ScalarType.Float32).div(held.Int(c.HeadDim));
        var inv = torch.pow(torch.tensor((float)theta), exponents).reciprocal();
        return inv.MoveToOuterDisposeScope();
    }

    private static Tensor Llama3(Tensor invFreq, RopeScaling s)
    {
        using var scope = NewDisposeScope();
        using var k = new HeldScalars();
        double lowWavelen = s.OriginalMaxPositionEmbeddings / s.LowFreqFactor;
        double highWavelen = s.OriginalMaxPositionEmbeddings / s.HighFreqFactor;
        var wavelen = invFreq.reciprocal().mul(k[2 * Math.PI]);
        var llama = torch.where(wavelen.gt(k[lowWavelen]), invFreq.div(k[s.Factor]), invFreq);
        // smooth = (original / wavelen - low) / (high - low)
        var smooth = wavelen.reciprocal().mul(k[s.OriginalMaxPositionEmbeddings]).add(k[-s.LowFreqFactor], HeldScalars.One)
            .div(k[s.HighFreqFactor - s.LowFreqFactor]);
        // (1 - smooth) * llama / factor + smooth * llama
        var smoothed = smooth.neg().add(HeldScalars.One, HeldScalars.One).mul(llama).div(k[s.Factor]).add(smooth.mul(llama), HeldScalars.One);
        var isMedium = wavelen.ge(k[highWavelen]).logical_and(wavelen.le(k[lowWavelen]));
        return torch.where(isMedium, smoothed, llama).MoveToOuterDisposeScope();
    }

    /// <summary>cos and sin of shape [B, T, head_dim] in <paramref name="dtype"/>, for position ids [B, T].</summary>
    public (Tensor Cos, Tensor Sin) Get(Tensor positionIds, ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        Tensor inv;
        if (_c.RopeScaling is { Type: "dynamic" } dyn)
        {
            // NTK-aware scaling: once the sequence outgrows the trained length, the base grows with it.
            long seqLen = positionIds.max().item<long>() + 1;
            if (seqLen > _c.MaxPositionEmbeddings)
            {
                double d = _c.HeadDim;
                double theta = _c.RopeTheta * Math.Pow(dyn.Factor * seqLen / _c.MaxPositionEmbeddings - (dyn.Factor - 1), d / (d - 2));
                inv = ComputeInvFreq(_c, theta).to(positionIds.device);
            }
            else inv = InvFreqOn(positionIds.device);
        }
        else inv = InvFreqOn(positionIds.device);
        var freqs = positionIds.to(ScalarType.Float32).unsqueeze(-1) * inv; // [B, T, d/2]
        var emb = torch.cat(new[] { freqs, freqs }, -1);
        var cos = emb.cos().to(dtype);
        var sin = emb.sin().to(dtype);
        return (cos.MoveToOuterDisposeScope(), sin.MoveToOuterDisposeScope());
    }

    private Tensor InvFreqOn(Device device)
    {
        if (device.type == DeviceType.CPU) return _invFreq.alias();
        lock (_onDevice)
        {
            if (!_onDevice.TryGetValue(device.type, out var t))
            {
                t = _invFreq.to(device);
                t.DetachFromDisposeScope();
                _onDevice[device.type] = t;
            }
            return t.alias();
        }
    }

    /// <summary>x [B, H, T, d] rotated by cos/sin [B, T, d].</summary>
    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin)
    {
        if (Vector256.IsHardwareAccelerated && ApplyFused(x, cos, sin) is { } fast) return fast;
        using var scope = NewDisposeScope();
        long half = x.shape[^1] / 2;
        var x1 = x.narrow(-1, 0, half);
        var x2 = x.narrow(-1, half, half);
        var rotated = torch.cat(new[] { -x2, x1 }, -1);
        var c = cos.unsqueeze(1);
        var s = sin.unsqueeze(1);
        return HeldScalars.Add(x * c, rotated * s).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The rotation in one loop over float32 CPU tensors: the general path's six libtorch calls cost more than the
    /// arithmetic in a decode step, and over a long prompt they leave four temporaries the size of q each (the prefill's
    /// memory peak). Same products and sum as the general path, so the same float32 bits. Null when the tensors are not
    /// of that kind.
    /// </summary>
    private static unsafe Tensor? ApplyFused(Tensor x, Tensor cos, Tensor sin)
    {
        if (x.dtype != ScalarType.Float32 || cos.dtype != ScalarType.Float32 || sin.dtype != ScalarType.Float32
            || x.device_type != DeviceType.CPU || cos.device_type != DeviceType.CPU || sin.device_type != DeviceType.CPU
            || x.requires_grad || !cos.is_contiguous() || !sin.is_contiguous())
            return null;
        var shape = x.shape; // [B, H, T, D]; cos and sin [B, T, D]
        if (shape.Length != 4 || shape[3] % 16 != 0 || cos.numel() != shape[0] * shape[2] * shape[3] || sin.numel() != cos.numel()
            || x.numel() * sizeof(float) > int.MaxValue)
            return null;
        long b = shape[0], heads = shape[1], t = shape[2], d = shape[3], half = d / 2;
        using var xc = x.contiguous(); // a prefill's q is a transposed view: one copy, still one temporary instead of four
        var y = torch.empty(shape, ScalarType.Float32);
        float* xs = (float*)MappedMemory.Address(xc), cs = (float*)MappedMemory.Address(cos), ss = (float*)MappedMemory.Address(sin);
        float* ys = (float*)MappedMemory.Address(y);
        for (long r = 0; r < b; r++)
            for (long h = 0; h < heads; h++)
                for (long p = 0; p < t; p++)
                {
                    long row = ((r * heads + h) * t + p) * d;
                    float* xo = xs + row, yo = ys + row, c = cs + (r * t + p) * d, s = ss + (r * t + p) * d;
                    for (long j = 0; j < half; j += 8)
                    {
                        var x1 = Vector256.Load(xo + j);
                        var x2 = Vector256.Load(xo + j + half);
                        (x1 * Vector256.Load(c + j) + -x2 * Vector256.Load(s + j)).Store(yo + j);
                        (x2 * Vector256.Load(c + j + half) + x1 * Vector256.Load(s + j + half)).Store(yo + j + half);
                    }
                }
        return y;
    }

    public void Dispose()
    {
        _invFreq.Dispose();
        foreach (var t in _onDevice.Values) t.Dispose();
        _onDevice.Clear();
    }
}
