using System.Runtime.Intrinsics;
using ShareGPT4V.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;
using TorchSharp.Modules;
using TorchSharp.Utils;

namespace ShareGPT4V.Modeling;

/// <summary>
/// y = x Wᵀ + b, with the weight named <c>{prefix}.weight</c> as in the checkpoints. The weight may be stored in a
/// narrower dtype than x (bfloat16 / float16 weights with float32 activations on CPU).
/// </summary>
internal sealed class Linear : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "weight")] private readonly Parameter _weight;
    [ComponentName(Name = "bias")] private readonly Parameter? _bias;

    public long InFeatures { get; }
    public long OutFeatures { get; }
    public Tensor Weight => _weight;
    public Tensor? Bias => _bias;

    public Linear(string prefix, long inFeatures, long outFeatures, bool hasBias, WeightSource w) : base(nameof(Linear))
    {
        InFeatures = inFeatures;
        OutFeatures = outFeatures;
        _weight = w.MatrixParam(prefix + ".weight", outFeatures, inFeatures);
        if (hasBias) _bias = w.Param(prefix + ".bias", outFeatures);
        RegisterComponents();
    }

    /// <summary>A linear layer over existing tensors (the layer takes ownership), e.g. for measurements.</summary>
    public static Linear FromTensors(Tensor weight, Tensor? bias, ScalarType? computeType = null)
    {
        var source = new GivenWeights(computeType ?? ComputePrecision.For(weight.dtype, weight.device)) { ["w.weight"] = weight };
        if (bias is not null) source["w.bias"] = bias;
        return weight is QuantizedWeight q
            ? new Linear("w", q.Columns, q.Rows, bias is not null, source)
            : new Linear("w", weight.shape[1], weight.shape[0], bias is not null, source);
    }

    /// <summary>
    /// Training: a low-rank update added to this layer's output (LoRA), or null. Kept apart from the weight so the
    /// weight stays frozen and shared; merging folds it into the weight.
    /// </summary>
    internal Func<Tensor, Tensor>? Adapter { get; set; }

    /// <summary>
    /// Set by the loader on the vision tower and projector of a quantized model that it stored in bfloat16 on a CPU
    /// that multiplies bfloat16 natively (<see cref="QuantKernels.Bf16Gemm"/>): their GEMMs then run in bfloat16 with
    /// float32 accumulation. Layers the user stored in bfloat16 keep float32 compute.
    /// </summary>
    internal bool GemmInBf16 { get; set; }

    public override Tensor forward(Tensor x)
    {
        if (GemmInBf16 && Adapter is null && _weight.dtype == ScalarType.BFloat16 && x.dtype == ScalarType.Float32
            && x.device_type == DeviceType.CPU && !MatVec.Applies(x, _weight, _bias))
        {
            // The activations cast once, the output rounded to bfloat16 by the GEMM and widened, the bias in float32.
            using var bscope = NewDisposeScope();
            var yb = nn.functional.linear(x.to(ScalarType.BFloat16), _weight).to(ScalarType.Float32);
            if (_bias is not null) yb.add_(_bias.to(ScalarType.Float32), HeldScalars.One);
            return yb.MoveToOuterDisposeScope();
        }
        if (Adapter is null) return Apply(x, _weight, _bias);
        using var scope = NewDisposeScope();
        return HeldScalars.Add(Apply(x, _weight, _bias), Adapter(x)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Several layers that read the same input (q/k/v, gate/up), computed together: for the few-row inputs of a decode
    /// step they run as one kernel job, the fused projection, while the weights stay separate tensors named as in the
    /// checkpoint (no concatenated copy, so memory-mapped weights stay mapped).
    /// </summary>
    public static Tensor[] ForwardMany(Tensor x, params Linear[] layers)
    {
        bool fused = true;
        foreach (var l in layers) fused &= l.Adapter is null && MatVec.Applies(x, l._weight, l._bias);
        if (fused)
        {
            var parts = new (Tensor, Tensor?)[layers.Length];
            for (int i = 0; i < layers.Length; i++) parts[i] = (layers[i]._weight, layers[i]._bias);
            return MatVec.Run(x, parts);
        }
        return layers.Select(l => l.forward(x)).ToArray();
    }

    /// <summary>linear(x, weight, bias) in x's dtype, whatever dtype the weight is stored in.</summary>
    internal static Tensor Apply(Tensor x, Tensor weight, Tensor? bias, long widenedSliceBytes = 16L << 20)
    {
        if (MatVec.Applies(x, weight, bias)) return MatVec.Run(x, new[] { (weight, bias) })[0];
        if (weight is QuantizedWeight q) return ApplyQuantized(x, q, bias, widenedSliceBytes);
        if (Autocast.Applies(x) && weight.dtype == ScalarType.Float32) return Autocast.Linear(x, weight, bias);

        if (weight.dtype == x.dtype && (bias is null || bias.dtype == x.dtype))
            return nn.functional.linear(x, weight, bias);
        // A GEMM over half-precision weights: CPU half-precision GEMMs are far slower than widening, so widen a slice
        // of output rows at a time (about 16 MiB of float32: small next to the layer, and still in cache when the GEMM
        // reads it) into a reused scratch, and let each slice's GEMM write its columns of the output in place.
        long rows = weight.shape[0], inFeatures = weight.shape[1];
        long step = PanelRows(rows, inFeatures, widenedSliceBytes);
        using var scope = NewDisposeScope();
        var x2 = x.reshape(-1, inFeatures);
        var y = torch.empty(new[] { x2.shape[0], rows }, x.dtype, x.device);
        for (long off = 0; off < rows; off += step)
        {
            long n = Math.Min(step, rows - off);
            using var slice = weight.narrow(0, off, n);
            using var w = Widen(slice, x.dtype);
            using var columns = y.narrow(1, off, n); // row-major with leading dimension `rows`: BLAS writes it directly
            columns.addmm_(x2, w.t(), 0, 1); // beta and alpha go to libtorch as floats, not Scalars
        }
        if (bias is not null) y.add_(bias.to(x.dtype), HeldScalars.One);
        return y.reshape(x.shape[..^1].Append(rows).ToArray()).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// silu(x·Wgᵀ) ⊙ (x·Wuᵀ) for a prompt-sized x over two block-quantized weights, in the GEMM dtype the down projection
    /// reads. The GEMMs are <see cref="ApplyQuantized"/>'s, panel for panel into the same column slices, so the products
    /// have the same bits; each panel's columns are then widened, combined in float32 (SiLU and product, as the
    /// general path does) and rounded back in place. The general path holds the gate and up outputs in float32 and a
    /// rounded copy (about 70 MB at 7B for 625 tokens, the prefill's peak); this holds them in bfloat16 only. Null when
    /// the layers are not of that kind.
    /// </summary>
    internal static Tensor? GatedProduct(Tensor x, Linear gate, Linear up, long widenedSliceBytes = 16L << 20)
    {
        if (gate._weight is not QuantizedWeight g || up._weight is not QuantizedWeight u || gate.Adapter is not null || up.Adapter is not null
            || gate._bias is not null || up._bias is not null || g.Rows != u.Rows || g.Columns != u.Columns
            || x.device_type != DeviceType.CPU || x.dtype != ScalarType.Float32 || x.requires_grad || MatVec.Applies(x, g, null)
            || x.shape[^1] != g.Columns || !QuantKernels.Bf16Gemm)
            return null;
        long rows = g.Rows, inFeatures = g.Columns;
        long step = PanelRows(rows, inFeatures, widenedSliceBytes);
        using var scope = NewDisposeScope();
        var bf = ScalarType.BFloat16;
        var x2 = x.reshape(-1, inFeatures).to(bf);
        var gy = torch.empty(new[] { x2.shape[0], rows }, bf);
        var uy = torch.empty(new[] { x2.shape[0], rows }, bf);
        for (long off = 0; off < rows; off += step)
        {
            long n = Math.Min(step, rows - off);
            using var panelScope = NewDisposeScope();
            var gc = gy.narrow(1, off, n);
            var uc = uy.narrow(1, off, n);
            QuantizedPanel(x2, g, off, n, gc);
            QuantizedPanel(x2, u, off, n, uc);
            var a = nn.functional.silu(gc.to(ScalarType.Float32), inplace: true);
            a.mul_(uc.to(ScalarType.Float32));
            gc.copy_(a);
        }
        uy.Dispose();
        return gy.reshape(x.shape[..^1].Append(rows).ToArray()).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// A GEMM over a block-quantized weight: dequantize a panel of output rows at a time (as <see cref="Apply"/>
    /// widens half-precision slices) into the reused scratch, and let each panel's GEMM write its output columns.
    /// </summary>
    private static Tensor ApplyQuantized(Tensor x, QuantizedWeight weight, Tensor? bias, long widenedSliceBytes)
    {
        long rows = weight.Rows, inFeatures = weight.Columns;
        if (x.shape[^1] != inFeatures)
            throw new ArgumentException($"Input has {x.shape[^1]} features, the weight {inFeatures}");
        long step = PanelRows(rows, inFeatures, widenedSliceBytes);
        using var scope = NewDisposeScope();
        // bfloat16 where the CPU multiplies it natively (QuantKernels.Bf16Gemm): panels and activations in bfloat16,
        // float32 accumulation inside the GEMM, the output back to float32.
        var gemm = QuantKernels.Bf16Gemm && x.device_type == DeviceType.CPU ? ScalarType.BFloat16 : ScalarType.Float32;
        var x2 = x.reshape(-1, inFeatures).to(gemm);
        var y = torch.empty(new[] { x2.shape[0], rows }, gemm, x.device);
        for (long off = 0; off < rows; off += step)
        {
            long n = Math.Min(step, rows - off);
            using var columns = y.narrow(1, off, n);
            QuantizedPanel(x2, weight, off, n, columns);
        }
        if (gemm != ScalarType.Float32)
        {
            using var narrow = y; // freed now, not with the scope: a long prompt's MLP output is tens of megabytes
            y = narrow.to(ScalarType.Float32);
        }
        if (bias is not null) y.add_(bias.to(ScalarType.Float32), HeldScalars.One);
        return y.to(x.dtype).reshape(x.shape[..^1].Append(rows).ToArray()).MoveToOuterDisposeScope();
    }

    /// <summary>Output rows per widened or dequantized panel: about <paramref name="sliceBytes"/> of float32, a multiple of 64.</summary>
    private static long PanelRows(long rows, long inFeatures, long sliceBytes) =>
        Math.Min(rows, Math.Max(64, sliceBytes / (inFeatures * 4) / 64 * 64));

    /// <summary>
    /// columns = x2 · W[off, off + n)ᵀ: the panel dequantized into this thread's scratch in x2's dtype, and the GEMM
    /// writing the output's column slice in place (its leading dimension is the whole output's).
    /// </summary>
    private static void QuantizedPanel(Tensor x2, QuantizedWeight weight, long off, long n, Tensor columns)
    {
        using var w = Scratch(n * weight.Columns, x2.dtype).view(n, weight.Columns);
        QuantKernels.DequantizePanel(weight, off, n, w, torch.get_num_threads());
        columns.addmm_(x2, w.t(), 0, 1);
    }

    // Per-thread float32 scratch the weight slices are widened into. Reusing it matters: a fresh 16 MiB block per slice
    // would be served from the C heap and, freed between small long-lived allocations, keep the heap from shrinking
    // (peak RSS grew by a gigabyte over a few bf16 prefills). Grows to the largest slice a thread has widened.
    [ThreadStatic] private static Tensor? _widened;

    /// <summary>The first <paramref name="need"/> elements of this thread's scratch (a view the caller disposes).</summary>
    private static Tensor Scratch(long need, ScalarType dtype)
    {
        if (_widened is null || _widened.dtype != dtype || _widened.numel() < need)
        {
            _widened?.Dispose();
            using (NewDisposeScope()) _widened = torch.empty(need, dtype).DetachFromDisposeScope();
        }
        return _widened.narrow(0, 0, need);
    }

    private static Tensor Widen(Tensor slice, ScalarType dtype)
    {
        if (slice.device_type != DeviceType.CPU) return slice.to(dtype);
        using var flat = Scratch(slice.numel(), dtype);
        var w = flat.view(slice.shape);
        w.copy_(slice);
        return w;
    }
}

/// <summary>LayerNorm over the last dimension with weight and bias.</summary>
internal sealed class LayerNorm : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "weight")] private readonly Parameter _weight;
    [ComponentName(Name = "bias")] private readonly Parameter _bias;
    private readonly long[] _shape;
    private readonly double _eps;

    public LayerNorm(string prefix, long dim, double eps, WeightSource w) : base(nameof(LayerNorm))
    {
        _shape = new[] { dim };
        _eps = eps;
        _weight = w.Param(prefix + ".weight", dim);
        _bias = w.Param(prefix + ".bias", dim);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => nn.functional.layer_norm(x, _shape, _weight, _bias, _eps);
}

/// <summary>LLaMA's RMSNorm: normalise in float32, scale by the weight in the input's dtype (as transformers does).</summary>
internal sealed class RmsNorm : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "weight")] private readonly Parameter _weight;
    private readonly Scalar _eps; // held for the module's life: see HeldScalars
    private readonly float _epsF;
    private readonly long _dim;

    /// <summary>The weight's data when the decode fast path may read it (a float32 CPU weight that no one trains).</summary>
    private unsafe float* FastWeight => _weight.dtype == ScalarType.Float32 && _weight.device_type == DeviceType.CPU && !_weight.requires_grad
        ? (float*)MappedMemory.Address(_weight) : null;

    public RmsNorm(string prefix, long dim, double eps, WeightSource w) : base(nameof(RmsNorm))
    {
        _eps = eps.ToScalar();
        _epsF = (float)eps;
        _dim = dim;
        _weight = w.Param(prefix + ".weight", dim);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        if (NormRows(x) is { } fast) return fast;
        using var scope = NewDisposeScope();
        var dtype = x.dtype;
        var h = x.to(ScalarType.Float32);
        var variance = h.pow(HeldScalars.Two).mean(new long[] { -1 }, keepdim: true);
        h = h * torch.rsqrt(variance.add(_eps, HeldScalars.One));
        return (_weight * h.to(dtype)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// A decode step's rows (a few float32 rows on the CPU, no autograd) in one loop: the general path's seven libtorch
    /// calls cost more than the arithmetic at this size. Same formula; the sum of squares is taken in float64, so it
    /// can differ from libtorch's float32 sum in the last bit. Null when x is not of that kind.
    /// </summary>
    private unsafe Tensor? NormRows(Tensor x)
    {
        float* w = FastWeight;
        if (w == null || x.dtype != ScalarType.Float32 || x.device_type != DeviceType.CPU || x.requires_grad
            || !x.is_contiguous() || torch.is_grad_enabled())
            return null;
        var shape = x.shape;
        long dim = _dim, n = x.numel();
        if (shape.Length == 0 || shape[^1] != dim || n > 64 * dim) return null;
        var y = torch.empty(shape, ScalarType.Float32);
        float* xp = (float*)MappedMemory.Address(x), yp = (float*)MappedMemory.Address(y);
        for (long r = 0; r < n / dim; r++)
        {
            float* xr = xp + r * dim, yr = yp + r * dim;
            long j = 0;
            var acc0 = Vector256<double>.Zero;
            var acc1 = Vector256<double>.Zero;
            for (; j + 8 <= dim; j += 8)
            {
                var (lo, hi) = Vector256.Widen(Vector256.Load(xr + j));
                acc0 += lo * lo;
                acc1 += hi * hi;
            }
            double sum = Vector256.Sum(acc0 + acc1);
            for (; j < dim; j++) sum += (double)xr[j] * xr[j];
            float inv = 1f / MathF.Sqrt((float)(sum / dim) + _epsF);
            var invs = Vector256.Create(inv);
            for (j = 0; j + 8 <= dim; j += 8) (Vector256.Load(w + j) * (Vector256.Load(xr + j) * invs)).Store(yr + j);
            for (; j < dim; j++) yr[j] = w[j] * (xr[j] * inv);
        }
        return y;
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing) _eps.Dispose();
        base.Dispose(disposing);
    }
}

/// <summary>A lookup table, <c>{prefix}.weight</c> of shape [num, dim], kept in the storage dtype (callers convert the rows they look up).</summary>
internal sealed class Embedding : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "weight")] private readonly Parameter _weight;
    public Tensor Weight => _weight;
    public long NumEmbeddings { get; }

    public Embedding(string prefix, long num, long dim, WeightSource w) : base(nameof(Embedding))
    {
        NumEmbeddings = num;
        _weight = w.MatrixParam(prefix + ".weight", num, dim);
        RegisterComponents();
    }

    /// <summary>Ids of any shape → embeddings of shape ids.shape + [dim]. Ids must be in range (checked by callers).</summary>
    public override Tensor forward(Tensor ids)
    {
        if (_weight is QuantizedWeight q) return q.Lookup(ids);
        using var scope = NewDisposeScope();
        var flat = _weight.index_select(0, ids.reshape(-1));
        var shape = ids.shape.Append(_weight.shape[1]).ToArray();
        return flat.reshape(shape).MoveToOuterDisposeScope();
    }
}
