using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.Modeling;

/// <summary>
/// Attention of one new query position per row against the KV cache (a decode step), on <see cref="KernelThreads"/>.
/// libtorch's attention would do too, but it opens an OpenMP parallel region in every layer, and the OpenMP workers
/// keep spinning afterwards on the same cores our mat-vec threads need; with this, a decode step never enters OpenMP.
/// Each job block is one (row, kv head) pair: the keys and values of that head are read once for all the query heads
/// that share them (grouped-query attention). softmax(q·kᵀ · scale + mask) · v in float32, as scaled_dot_product_attention.
/// </summary>
internal static unsafe class DecodeAttention
{
    /// <summary>
    /// True when a step's attention can run here: one query position, float32 on CPU, a float32 or bfloat16 cache (values
    /// of the keys' dtype, widened in registers), and every tensor
    /// under 2 GiB (the span that gives us a tensor's data pointer cannot be longer); otherwise libtorch's attention runs.
    /// </summary>
    public static bool Applies(Tensor q, Tensor keys, Tensor? mask) =>
        !DisabledForTests && MatVec.IsSupported && q.shape[2] == 1 && q.dtype == ScalarType.Float32 && keys.dtype is ScalarType.Float32 or ScalarType.BFloat16
        && q.device_type == DeviceType.CPU && keys.device_type == DeviceType.CPU && keys.is_contiguous() && !q.requires_grad
        && (mask is null || mask.dtype == ScalarType.Float32)
        && FitsSpan(q) && FitsSpan(keys) && (mask is null || FitsSpan(mask));

    /// <summary>The values tensor has the keys' shape; q, keys and the mask are checked here.</summary>
    internal static bool FitsSpan(Tensor t) => t.numel() * t.ElementSize <= int.MaxValue;

    /// <summary>
    /// q [B, H, 1, D]; <paramref name="keys"/> / <paramref name="values"/> the whole cache of the layer
    /// [maxB, kvH, maxS, D] (contiguous), of which positions [0, <paramref name="length"/>) are used; <paramref name="mask"/>
    /// null or additive [B, length] (contiguous). Returns [B, H, 1, D].
    /// </summary>
    public static Tensor Run(Tensor q, Tensor keys, Tensor values, long length, Tensor? mask) =>
        Run(q, keys, values, null, null, length, mask);

    /// <summary>
    /// As <see cref="Run(Tensor, Tensor, Tensor, long, Tensor?)"/> for rows in cache slots: row r reads slot
    /// <paramref name="slots"/>[r] over positions [0, <paramref name="lengths"/>[r]), unmasked. Each row is computed
    /// exactly as it would be alone.
    /// </summary>
    public static Tensor RunSlots(Tensor q, Tensor keys, Tensor values, int[] slots, long[] lengths) =>
        Run(q, keys, values, slots, lengths, lengths.Max(), null);

    private static Tensor Run(Tensor q, Tensor keys, Tensor values, int[]? slots, long[]? lengths, long length, Tensor? mask)
    {
        long b = q.shape[0], heads = q.shape[1], d = q.shape[3];
        long kvHeads = keys.shape[1], maxS = keys.shape[2];
        using var qc = q.contiguous();
        var output = torch.empty(q.shape, ScalarType.Float32);
        var job = new Job
        {
            Q = (float*)Pointer(qc), K = Pointer(keys), V = Pointer(values), O = (float*)Pointer(output),
            Bf16 = keys.dtype == ScalarType.BFloat16,
            Mask = mask is null ? null : (float*)Pointer(mask),
            Rows = b, Heads = heads, KvHeads = kvHeads, Groups = heads / kvHeads, D = d, MaxS = maxS, Length = length,
            RowSlots = slots, RowLengths = lengths,
            Scale = (float)(1.0 / Math.Sqrt(d)),
        };
        KernelThreads.Shared.Run(job, torch.get_num_threads());
        return output;
    }

    /// <summary>Set on a test's thread to run the portable attention path (the one GPUs take) instead of this kernel.</summary>
    [ThreadStatic] internal static bool DisabledForTests;

    private static void* Pointer(Tensor t) => Unsafe.AsPointer(ref MemoryMarshal.GetReference(t.bytes));

    private sealed class Job : BlockJob
    {
        public float* Q, O, Mask;
        public void* K, V; // float32, or bfloat16 when Bf16
        public bool Bf16;
        public long Rows, Heads, KvHeads, Groups, D, MaxS, Length;
        public int[]? RowSlots;
        public long[]? RowLengths;
        public float Scale;

        public override long BlockCount => Rows * KvHeads;

        protected override void RunBlock(long block)
        {
            if (Bf16) RunBlock<ushort, MatVec.BFloat16Load>(block);
            else RunBlock<float, MatVec.Float32Load>(block);
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private void RunBlock<T, TLoad>(long block) where T : unmanaged where TLoad : struct, MatVec.IWeightLoad<T>
        {
            long row = block / KvHeads, g = block % KvHeads;
            long slot = RowSlots is null ? row : RowSlots[row];
            T* k = (T*)K + (slot * KvHeads + g) * MaxS * D;
            T* v = (T*)V + (slot * KvHeads + g) * MaxS * D;
            float* mask = Mask == null ? null : Mask + row * Length;
            int length = (int)(RowLengths is null ? Length : RowLengths[row]);
            Span<float> scoreSpan = length <= 4096 ? stackalloc float[length] : new float[length];
            fixed (float* scores = scoreSpan)
            {
                for (long h = g * Groups; h < (g + 1) * Groups; h++)
                {
                    float* q = Q + (row * Heads + h) * D;
                    Scores<T, TLoad>(q, k, D, length, Scale, mask, scores);
                    float sum = ExpInPlace(scores, length, Max(scores, length));
                    float* o = O + (row * Heads + h) * D;
                    float inv = 1 / sum;
                    if (D % 64 == 0) WeightedSum<T, TLoad>(scores, inv, v, D, length, o);
                    else
                    {
                        new Span<float>(o, (int)D).Clear();
                        for (int s = 0; s < length; s++) Axpy<T, TLoad>(scores[s] * inv, v + s * D, o, D);
                    }
                }
            }
        }
    }

    /// <summary>scores[s] = q·k[s] × scale (+ mask[s]), four keys at a time so one reduction serves four dot products.</summary>
    private static void Scores<T, TLoad>(float* q, T* k, long d, int length, float scale, float* mask, float* scores)
        where T : unmanaged where TLoad : struct, MatVec.IWeightLoad<T>
    {
        int s = 0;
        if (d % 8 == 0)
        {
            for (; s + 4 <= length; s += 4)
            {
                T* k0 = k + s * d, k1 = k0 + d, k2 = k1 + d, k3 = k2 + d;
                Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
                for (long i = 0; i < d; i += 8)
                {
                    var qv = Avx.LoadVector256(q + i);
                    a0 = Fma.MultiplyAdd(TLoad.Load(k0 + i), qv, a0);
                    a1 = Fma.MultiplyAdd(TLoad.Load(k1 + i), qv, a1);
                    a2 = Fma.MultiplyAdd(TLoad.Load(k2 + i), qv, a2);
                    a3 = Fma.MultiplyAdd(TLoad.Load(k3 + i), qv, a3);
                }
                // Pairwise adds leave [Σa0, Σa1, Σa2, Σa3] split over the two 128-bit halves.
                var t = Avx.HorizontalAdd(Avx.HorizontalAdd(a0, a1), Avx.HorizontalAdd(a2, a3));
                var sums = Sse.Multiply(Sse.Add(t.GetLower(), t.GetUpper()), Vector128.Create(scale));
                if (mask != null) sums = Sse.Add(sums, Sse.LoadVector128(mask + s));
                Sse.Store(scores + s, sums);
            }
        }
        for (; s < length; s++)
            scores[s] = Dot<T, TLoad>(q, k + s * d, d) * scale + (mask != null ? mask[s] : 0);
    }

    private static float Max(float* x, int n)
    {
        int i = 0;
        var m = Vector256.Create(float.NegativeInfinity);
        for (; i + 8 <= n; i += 8) m = Avx.Max(m, Avx.LoadVector256(x + i));
        float r = float.NegativeInfinity;
        for (int j = 0; j < 8; j++) r = Math.Max(r, m.GetElement(j));
        for (; i < n; i++) r = Math.Max(r, x[i]);
        return r;
    }

    /// <summary>x[i] = exp(x[i] - max) in place; returns the sum.</summary>
    private static float ExpInPlace(float* x, int n, float max)
    {
        int i = 0;
        var m = Vector256.Create(max);
        var acc = Vector256<float>.Zero;
        for (; i + 8 <= n; i += 8)
        {
            var e = Exp(Avx.Subtract(Avx.LoadVector256(x + i), m));
            Avx.Store(x + i, e);
            acc = Avx.Add(acc, e);
        }
        float sum = Vector256.Sum(acc);
        for (; i < n; i++)
        {
            float e = MathF.Exp(x[i] - max);
            x[i] = e;
            sum += e;
        }
        return sum;
    }

    /// <summary>
    /// e^x for x ≤ 0 (softmax arguments after subtracting the maximum), within about 2 ulp of MathF.Exp: x = n·ln2 + r
    /// with |r| ≤ ln2/2 (ln2 split in two so r is exact), e^r by its Taylor series to r^7, times 2^n through the
    /// exponent bits. Arguments below -87 (e^x under float's normal range) give 0.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Exp(Vector256<float> x)
    {
        var tooSmall = Avx.CompareLessThan(x, Vector256.Create(-87f));
        x = Avx.Max(x, Vector256.Create(-87f));
        var n = Avx.RoundToNearestInteger(Avx.Multiply(x, Vector256.Create(1.44269504088896341f)));
        var r = Fma.MultiplyAddNegated(n, Vector256.Create(0.693359375f), x);   // x - n·ln2 (high part, exact product)
        r = Fma.MultiplyAddNegated(n, Vector256.Create(-2.12194440e-4f), r);     // - n·(ln2 - high part)
        var p = Vector256.Create(1f / 5040);
        p = Fma.MultiplyAdd(p, r, Vector256.Create(1f / 720));
        p = Fma.MultiplyAdd(p, r, Vector256.Create(1f / 120));
        p = Fma.MultiplyAdd(p, r, Vector256.Create(1f / 24));
        p = Fma.MultiplyAdd(p, r, Vector256.Create(1f / 6));
        p = Fma.MultiplyAdd(p, r, Vector256.Create(0.5f));
        p = Fma.MultiplyAdd(p, r, Vector256.Create(1f));
        p = Fma.MultiplyAdd(p, r, Vector256.Create(1f));
        var scale = Avx2.ShiftLeftLogical(Avx2.Add(Avx.ConvertToVector256Int32(n), Vector256.Create(127)), 23).AsSingle();
        return Avx.AndNot(tooSmall, Avx.Multiply(p, scale));
    }

    /// <summary>e^x of each element, exposed for tests.</summary>
    internal static float[] ExpForTest(float[] x)
    {
        var y = (float[])x.Clone();
        fixed (float* p = y)
        {
            int i = 0;
            for (; i + 8 <= y.Length; i += 8) Avx.Store(p + i, Exp(Avx.LoadVector256(p + i)));
            for (; i < y.Length; i++) p[i] = MathF.Exp(p[i]);
        }
        return y;
    }

    private static float Dot<T, TLoad>(float* a, T* b, long n) where T : unmanaged where TLoad : struct, MatVec.IWeightLoad<T>
    {
        long i = 0;
        Vector256<float> acc = default;
        for (; i + 8 <= n; i += 8) acc = Fma.MultiplyAdd(Avx.LoadVector256(a + i), TLoad.Load(b + i), acc);
        float s = Vector256.Sum(acc);
        for (; i < n; i++) s += a[i] * TLoad.At(b, i);
        return s;
    }

    /// <summary>
    /// o = Σ_s (p[s] · inv) · v[s] over 64 columns at a time held in registers: the same fused multiply-adds in the same
    /// order as one <see cref="Axpy"/> per key, without storing and reloading o for every key.
    /// </summary>
    internal static void WeightedSum(float* p, float inv, float* v, long d, int length, float* o) =>
        WeightedSum<float, MatVec.Float32Load>(p, inv, v, d, length, o);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void WeightedSum<T, TLoad>(float* p, float inv, T* v, long d, int length, float* o)
        where T : unmanaged where TLoad : struct, MatVec.IWeightLoad<T>
    {
        for (long c = 0; c < d; c += 64)
        {
            Vector256<float> o0 = default, o1 = default, o2 = default, o3 = default, o4 = default, o5 = default, o6 = default, o7 = default;
            T* vs = v + c;
            for (int s = 0; s < length; s++, vs += d)
            {
                var a = Vector256.Create(p[s] * inv);
                o0 = Fma.MultiplyAdd(a, TLoad.Load(vs), o0);
                o1 = Fma.MultiplyAdd(a, TLoad.Load(vs + 8), o1);
                o2 = Fma.MultiplyAdd(a, TLoad.Load(vs + 16), o2);
                o3 = Fma.MultiplyAdd(a, TLoad.Load(vs + 24), o3);
                o4 = Fma.MultiplyAdd(a, TLoad.Load(vs + 32), o4);
                o5 = Fma.MultiplyAdd(a, TLoad.Load(vs + 40), o5);
                o6 = Fma.MultiplyAdd(a, TLoad.Load(vs + 48), o6);
                o7 = Fma.MultiplyAdd(a, TLoad.Load(vs + 56), o7);
            }
            float* oc = o + c;
            Avx.Store(oc, o0); Avx.Store(oc + 8, o1); Avx.Store(oc + 16, o2); Avx.Store(oc + 24, o3);
            Avx.Store(oc + 32, o4); Avx.Store(oc + 40, o5); Avx.Store(oc + 48, o6); Avx.Store(oc + 56, o7);
        }
    }

    /// <summary>y += alpha · x.</summary>
    internal static void Axpy(float alpha, float* x, float* y, long n) => Axpy<float, MatVec.Float32Load>(alpha, x, y, n);

    private static void Axpy<T, TLoad>(float alpha, T* x, float* y, long n) where T : unmanaged where TLoad : struct, MatVec.IWeightLoad<T>
    {
        long i = 0;
        var a = Vector256.Create(alpha);
        for (; i + 8 <= n; i += 8) Avx.Store(y + i, Fma.MultiplyAdd(a, TLoad.Load(x + i), Avx.LoadVector256(y + i)));
        for (; i < n; i++) y[i] += alpha * TLoad.At(x, i);
    }
}
