using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.Modeling;

/// <summary>
/// y = x Wᵀ + b for a few rows of x: the shape of a decode step, where the whole cost is streaming the weights from
/// memory once. libtorch's GEMV reaches well under the machine's read bandwidth here, so the rows of W are streamed by
/// our own AVX2 kernel on <see cref="KernelThreads"/>, every row of x reusing each weight row while it is in cache.
/// Weights may be float32, bfloat16 or float16 (widened to float32 in registers, so half-precision weights cost half
/// the memory traffic), or block-quantized (<see cref="QuantizedWeight"/>, see <see cref="QuantKernels"/>); x, b and y are float32. Several weights that share one input (q/k/v, gate/up) run as one job,
/// which is how the projections are fused without concatenating their weights. Sums run in a different order than
/// MKL's, so results differ from libtorch's in the last bits only.
/// </summary>
internal static unsafe class MatVec
{
    /// <summary>Most rows of x handled here; from about this many rows on a GEMM reuses weights better.</summary>
    public const int MaxRows = 8;
    private const int RowsPerBlock = 16;

    public static bool IsSupported { get; } = Avx2.IsSupported && Fma.IsSupported;

    /// <summary>Whether float32 and bfloat16 weights are multiplied with two rows of x per load (the default); off, each
    /// row streams the weights from cache on its own. Both give the same bits; the switch exists for the kernel bench.</summary>
    internal static bool PairRows { get; set; } = true;

    /// <summary>True when <c>linear(x, weight, bias)</c> can run here.</summary>
    public static bool Applies(Tensor x, Tensor weight, Tensor? bias)
    {
        if (!IsSupported || x.device_type != DeviceType.CPU || weight.device_type != DeviceType.CPU) return false;
        if (x.dtype != ScalarType.Float32 || x.requires_grad || weight.requires_grad) return false;
        if (weight is QuantizedWeight q)
        {
            if (bias is not null && (bias.dtype != ScalarType.Float32 || bias.device_type != DeviceType.CPU || !bias.is_contiguous() || bias.requires_grad))
                return false;
            if (x.dim() < 1 || x.shape[^1] != q.Columns) return false;
            long n = x.numel() / q.Columns;
            return n >= 1 && n <= MaxRows && q.numel() <= int.MaxValue;
        }
        if (weight.dim() != 2 || !weight.is_contiguous() || weight.dtype is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16))
            return false;
        if (bias is not null && (bias.dtype != ScalarType.Float32 || bias.device_type != DeviceType.CPU || !bias.is_contiguous() || bias.requires_grad))
            return false;
        long inFeatures = weight.shape[1];
        if (x.dim() < 1 || x.shape[^1] != inFeatures || inFeatures == 0) return false;
        long rows = x.numel() / inFeatures;
        // Tensor.bytes, which gives us the data pointer, is limited to 2 GiB.
        return rows >= 1 && rows <= MaxRows && weight.numel() * weight.ElementSize <= int.MaxValue;
    }

    /// <summary>
    /// Computes <c>linear(x, W_k, b_k)</c> for each part (all must pass <see cref="Applies"/> with the same x).
    /// Outputs have x's leading shape; the caller owns them.
    /// </summary>
    public static Tensor[] Run(Tensor x, ReadOnlySpan<(Tensor Weight, Tensor? Bias)> parts) =>
        Run(x, parts, torch.get_num_threads()); // libtorch's thread setting governs our kernels too

    internal static Tensor[] Run(Tensor x, ReadOnlySpan<(Tensor Weight, Tensor? Bias)> parts, int threads)
    {
        long inFeatures = InFeatures(parts[0].Weight);
        using var xc = x.contiguous();
        int rows = (int)(xc.numel() / inFeatures);
        var leading = x.shape[..^1];
        var outputs = new Tensor[parts.Length];
        var job = new Job { Rows = rows, In = inFeatures, Segments = new Segment[parts.Length] };
        fixed (byte* xp = xc.bytes)
        {
            job.X = (float*)xp;
            long blocks = 0;
            for (int k = 0; k < parts.Length; k++)
            {
                var (w, b) = parts[k];
                long outFeatures = w.shape[0];
                outputs[k] = torch.empty(leading.Append(outFeatures).ToArray(), ScalarType.Float32);
                job.Segments[k] = new Segment
                {
                    W = Pointer(w), WType = w.dtype, Out = outFeatures,
                    Quantized = w is QuantizedWeight qw, Format = (w as QuantizedWeight)?.Format ?? default,
                    Interleaved = (w as QuantizedWeight)?.Interleaved ?? false,
                    RowBytes = (w as QuantizedWeight)?.RowBytes ?? 0, Y = (float*)Pointer(outputs[k]),
                    Bias = b is null ? null : (float*)Pointer(b), FirstBlock = blocks,
                };
                blocks += (outFeatures + RowsPerBlock - 1) / RowsPerBlock;
            }
            job.Blocks = blocks;
            // Quantized weights with int8 dot products: x as Q8_0 blocks, once for every part.
            // This thread's buffers, grown as needed: a decode step makes several such calls per layer, so no fresh
            // arrays per call. Run is not re-entered on one thread, and the job ends before it returns.
            sbyte[]? xq = null;
            float[]? xd = null;
            int[]? xs = null;
            if (QuantKernels.Int8Activations && inFeatures % 32 == 0 && job.Segments.Any(g => g.Quantized))
            {
                long xBlocks = rows * inFeatures / 32;
                if (_xq is null || _xq.Length < rows * inFeatures) _xq = new sbyte[rows * inFeatures];
                if (_xd is null || _xd.Length < xBlocks) { _xd = new float[xBlocks]; _xs = new int[xBlocks]; }
                (xq, xd, xs) = (_xq, _xd, _xs);
            }
            fixed (sbyte* q = xq)
            fixed (float* d = xd)
            fixed (int* xsum = xs)
            {
                if (q != null) QuantKernels.QuantizeActivations(job.X, rows, inFeatures, q, d, xsum);
                job.Xq = q;
                job.Xd = d;
                job.Xs = xsum;
                job.QuantVector = QuantKernels.Vector; // the caller's choice, for every helper thread
                KernelThreads.Shared.Run(job, threads);
            }
        }
        return outputs;
    }

    [ThreadStatic] private static sbyte[]? _xq;
    [ThreadStatic] private static float[]? _xd;
    [ThreadStatic] private static int[]? _xs;

    private static long InFeatures(Tensor w) => w is QuantizedWeight q ? q.Columns : w.shape[1];

    private static void* Pointer(Tensor t) => Unsafe.AsPointer(ref MemoryMarshal.GetReference(t.bytes));

    private struct Segment
    {
        public void* W;
        public ScalarType WType;
        public bool Quantized;
        public bool Interleaved;
        public QuantizationFormat Format;
        public long RowBytes;
        public long Out;
        public float* Y;
        public float* Bias;
        public long FirstBlock;
    }

    private sealed class Job : BlockJob
    {
        public float* X;
        public sbyte* Xq; // x as Q8_0 blocks when the int8 path runs
        public float* Xd;
        public int* Xs;
        public bool QuantVector;
        public int Rows;
        public long In;
        public Segment[] Segments = Array.Empty<Segment>();
        public long Blocks;

        public override long BlockCount => Blocks;

        protected override void RunBlock(long block)
        {
            int k = Segments.Length - 1;
            while (Segments[k].FirstBlock > block) k--;
            ref var s = ref Segments[k];
            long r0 = (block - s.FirstBlock) * RowsPerBlock;
            long r1 = Math.Min(s.Out, r0 + RowsPerBlock);
            if (s.Interleaved)
            {
                // Groups of eight rows (blocks start at multiples of 16 and the matrix has whole groups).
                for (long g = r0; g < r1; g += InterleavedBlocks.Rows)
                {
                    byte* group = (byte*)s.W + g * s.RowBytes;
                    for (int m = 0; m < Rows; m++)
                    {
                        float* y = s.Y + m * s.Out + g;
                        if (Xq != null) InterleavedBlocks.DotInt8(s.Format, group, In, Xq + m * In, Xd + m * (In / 32), Xs + m * (In / 32), y, QuantVector);
                        else InterleavedBlocks.Dot(s.Format, group, In, X + m * In, y, QuantVector);
                        if (s.Bias != null)
                            for (int j = 0; j < InterleavedBlocks.Rows; j++) y[j] += s.Bias[g + j];
                    }
                }
                return;
            }
            for (long r = r0; r < r1; r += 4)
            {
                int n = (int)Math.Min(4, r1 - r);
                int m = 0;
                // Two rows of x per pass over four weight rows (DotPair); every (weight row, x row) pair still sums in
                // the single-row order.
                if (n == 4 && PairRows && !s.Quantized && s.WType is ScalarType.Float32 or ScalarType.BFloat16)
                {
                    for (; m + 2 <= Rows; m += 2)
                    {
                        float* ya = s.Y + m * s.Out + r, yb = ya + s.Out;
                        float* xa = X + m * In, xb = xa + In;
                        if (s.WType == ScalarType.Float32) DotPair<float, Float32Load>((float*)s.W + r * In, In, xa, xb, ya, yb);
                        else DotPair<ushort, BFloat16Load>((ushort*)s.W + r * In, In, xa, xb, ya, yb);
                        if (s.Bias != null)
                            for (int j = 0; j < 4; j++) { ya[j] += s.Bias[r + j]; yb[j] += s.Bias[r + j]; }
                    }
                }
                for (; m < Rows; m++)
                {
                    float* y = s.Y + m * s.Out + r;
                    float* x = X + m * In;
                    if (s.Quantized && Xq != null)
                        QuantKernels.DotInt8(s.Format, (byte*)s.W + r * s.RowBytes, s.RowBytes, In, n, Xq + m * In, Xd + m * (In / 32), Xs + m * (In / 32), y, QuantVector);
                    else if (s.Quantized) QuantKernels.Dot(s.Format, (byte*)s.W + r * s.RowBytes, s.RowBytes, In, n, x, y, QuantVector);
                    else switch (s.WType)
                    {
                        case ScalarType.Float32: DotF32((float*)s.W + r * In, In, n, x, y); break;
                        case ScalarType.BFloat16: DotBF16((ushort*)s.W + r * In, In, n, x, y); break;
                        default: DotF16((ushort*)s.W + r * In, In, n, x, y); break;
                    }
                    if (s.Bias != null)
                        for (int j = 0; j < n; j++) y[j] += s.Bias[r + j];
                }
            }
        }
    }

    // Each kernel writes y[j] = dot(W row j, x) for j < rows (rows <= 4 consecutive rows of length n).

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void DotF32(float* w, long n, int rows, float* x, float* y)
    {
        if (rows < 4)
        {
            for (int j = 0; j < rows; j++) y[j] = DotOneF32(w + j * n, x, n);
            return;
        }
        float* w0 = w, w1 = w + n, w2 = w + 2 * n, w3 = w + 3 * n;
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        long i = 0;
        for (; i + 8 <= n; i += 8)
        {
            var xv = Avx.LoadVector256(x + i);
            a0 = Fma.MultiplyAdd(Avx.LoadVector256(w0 + i), xv, a0);
            a1 = Fma.MultiplyAdd(Avx.LoadVector256(w1 + i), xv, a1);
            a2 = Fma.MultiplyAdd(Avx.LoadVector256(w2 + i), xv, a2);
            a3 = Fma.MultiplyAdd(Avx.LoadVector256(w3 + i), xv, a3);
        }
        float s0 = Vector256.Sum(a0), s1 = Vector256.Sum(a1), s2 = Vector256.Sum(a2), s3 = Vector256.Sum(a3);
        for (; i < n; i++)
        {
            s0 += w0[i] * x[i]; s1 += w1[i] * x[i]; s2 += w2[i] * x[i]; s3 += w3[i] * x[i];
        }
        y[0] = s0; y[1] = s1; y[2] = s2; y[3] = s3;
    }

    /// <summary>How the paired kernel reads one weight storage: 8 weights widened to float32, or one.</summary>
    internal interface IWeightLoad<T> where T : unmanaged
    {
        static abstract Vector256<float> Load(T* p);
        static abstract float At(T* p, long i);
    }

    internal struct Float32Load : IWeightLoad<float>
    {
        public static Vector256<float> Load(float* p) => Avx.LoadVector256(p);
        public static float At(float* p, long i) => p[i];
    }

    internal struct BFloat16Load : IWeightLoad<ushort>
    {
        public static Vector256<float> Load(ushort* p) => LoadBF16(p);
        public static float At(ushort* p, long i) => BF16ToFloat(p[i]);
    }

    /// <summary>
    /// Four weight rows times two rows of x: eight accumulators, each weight vector loaded (and widened) once for both
    /// rows; each of the eight sums in the order of the one-row kernels (<see cref="DotF32"/>, <see cref="DotBF16"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void DotPair<T, TLoad>(T* w, long n, float* xa, float* xb, float* ya, float* yb)
        where T : unmanaged where TLoad : struct, IWeightLoad<T>
    {
        T* w0 = w, w1 = w + n, w2 = w + 2 * n, w3 = w + 3 * n;
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        Vector256<float> b0 = default, b1 = default, b2 = default, b3 = default;
        long i = 0;
        for (; i + 8 <= n; i += 8)
        {
            var xv = Avx.LoadVector256(xa + i);
            var xw = Avx.LoadVector256(xb + i);
            var v0 = TLoad.Load(w0 + i);
            var v1 = TLoad.Load(w1 + i);
            a0 = Fma.MultiplyAdd(v0, xv, a0); b0 = Fma.MultiplyAdd(v0, xw, b0);
            a1 = Fma.MultiplyAdd(v1, xv, a1); b1 = Fma.MultiplyAdd(v1, xw, b1);
            var v2 = TLoad.Load(w2 + i);
            var v3 = TLoad.Load(w3 + i);
            a2 = Fma.MultiplyAdd(v2, xv, a2); b2 = Fma.MultiplyAdd(v2, xw, b2);
            a3 = Fma.MultiplyAdd(v3, xv, a3); b3 = Fma.MultiplyAdd(v3, xw, b3);
        }
        float s0 = Vector256.Sum(a0), s1 = Vector256.Sum(a1), s2 = Vector256.Sum(a2), s3 = Vector256.Sum(a3);
        float t0 = Vector256.Sum(b0), t1 = Vector256.Sum(b1), t2 = Vector256.Sum(b2), t3 = Vector256.Sum(b3);
        for (; i < n; i++)
        {
            float f0 = TLoad.At(w0, i), f1 = TLoad.At(w1, i), f2 = TLoad.At(w2, i), f3 = TLoad.At(w3, i);
            s0 += f0 * xa[i]; s1 += f1 * xa[i]; s2 += f2 * xa[i]; s3 += f3 * xa[i];
            t0 += f0 * xb[i]; t1 += f1 * xb[i]; t2 += f2 * xb[i]; t3 += f3 * xb[i];
        }
        ya[0] = s0; ya[1] = s1; ya[2] = s2; ya[3] = s3;
        yb[0] = t0; yb[1] = t1; yb[2] = t2; yb[3] = t3;
    }

    private static float DotOneF32(float* w, float* x, long n)
    {
        Vector256<float> a = default;
        long i = 0;
        for (; i + 8 <= n; i += 8) a = Fma.MultiplyAdd(Avx.LoadVector256(w + i), Avx.LoadVector256(x + i), a);
        float s = Vector256.Sum(a);
        for (; i < n; i++) s += w[i] * x[i];
        return s;
    }

    /// <summary>bfloat16 is the top half of a float32: widen and shift left by 16.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> LoadBF16(ushort* p) =>
        Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32(Sse2.LoadVector128(p)), 16).AsSingle();

    private static float BF16ToFloat(ushort h) => BitConverter.Int32BitsToSingle(h << 16);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void DotBF16(ushort* w, long n, int rows, float* x, float* y)
    {
        if (rows < 4)
        {
            for (int j = 0; j < rows; j++)
            {
                ushort* wj = w + j * n;
                Vector256<float> a = default;
                long k = 0;
                for (; k + 8 <= n; k += 8) a = Fma.MultiplyAdd(LoadBF16(wj + k), Avx.LoadVector256(x + k), a);
                float s = Vector256.Sum(a);
                for (; k < n; k++) s += BF16ToFloat(wj[k]) * x[k];
                y[j] = s;
            }
            return;
        }
        ushort* w0 = w, w1 = w + n, w2 = w + 2 * n, w3 = w + 3 * n;
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        long i = 0;
        for (; i + 8 <= n; i += 8)
        {
            var xv = Avx.LoadVector256(x + i);
            a0 = Fma.MultiplyAdd(LoadBF16(w0 + i), xv, a0);
            a1 = Fma.MultiplyAdd(LoadBF16(w1 + i), xv, a1);
            a2 = Fma.MultiplyAdd(LoadBF16(w2 + i), xv, a2);
            a3 = Fma.MultiplyAdd(LoadBF16(w3 + i), xv, a3);
        }
        float s0 = Vector256.Sum(a0), s1 = Vector256.Sum(a1), s2 = Vector256.Sum(a2), s3 = Vector256.Sum(a3);
        for (; i < n; i++)
        {
            s0 += BF16ToFloat(w0[i]) * x[i]; s1 += BF16ToFloat(w1[i]) * x[i];
            s2 += BF16ToFloat(w2[i]) * x[i]; s3 += BF16ToFloat(w3[i]) * x[i];
        }
        y[0] = s0; y[1] = s1; y[2] = s2; y[3] = s3;
    }

    /// <summary>
    /// IEEE half to float without F16C instructions (.NET exposes none): move exponent and mantissa into place and
    /// multiply by 2^112 to re-bias the exponent (subnormal halves come out exact too), give infinities and NaNs an
    /// all-ones exponent, then restore the sign.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> LoadF16(ushort* p)
    {
        var u = Avx2.ConvertToVector256Int32(Sse2.LoadVector128(p));
        var sign = Avx2.ShiftLeftLogical(Avx2.And(u, Vector256.Create(0x8000)), 16);
        var em = Avx2.ShiftLeftLogical(Avx2.And(u, Vector256.Create(0x7FFF)), 13);
        var f = Avx.Multiply(em.AsSingle(), Vector256.Create(Rebias));
        var special = Avx2.CompareEqual(Avx2.And(u, Vector256.Create(0x7C00)), Vector256.Create(0x7C00));
        f = Avx.BlendVariable(f, Avx2.Or(em, Vector256.Create(0x7F800000)).AsSingle(), special.AsSingle());
        return Avx.Or(f, sign.AsSingle());
    }

    private static readonly float Rebias = BitConverter.Int32BitsToSingle((127 + 112) << 23); // 2^112

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void DotF16(ushort* w, long n, int rows, float* x, float* y)
    {
        for (int j = 0; j < rows; j++)
        {
            ushort* wj = w + j * n;
            Vector256<float> a0 = default, a1 = default;
            long k = 0;
            for (; k + 16 <= n; k += 16)
            {
                a0 = Fma.MultiplyAdd(LoadF16(wj + k), Avx.LoadVector256(x + k), a0);
                a1 = Fma.MultiplyAdd(LoadF16(wj + k + 8), Avx.LoadVector256(x + k + 8), a1);
            }
            float s = Vector256.Sum(a0 + a1);
            for (; k < n; k++) s += (float)BitConverter.UInt16BitsToHalf(wj[k]) * x[k];
            y[j] = s;
        }
    }
}
