using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace ShareGPT4V.Modeling;

/// <summary>
/// The block-format kernels: dot products of quantized weight rows with float32 activations (decode mat-vec), and
/// dequantization of row panels (the GEMM path widens one panel at a time into cache-resident float32). The AVX2/FMA
/// versions widen each block in registers (bytes → int32 → float, times the block's scale); the scalar versions do
/// the same arithmetic one weight at a time and serve CPUs without AVX2 and as the tests' cross-check.
/// </summary>
internal static unsafe class QuantKernels
{
    public static bool VectorSupported { get; } = Avx2.IsSupported && Fma.IsSupported;

    /// <summary>
    /// Tests turn the vector path off to run the scalar one on the same inputs. Per calling thread: a job takes the
    /// caller's choice to its helper threads, so tests running in parallel do not see each other's setting.
    /// </summary>
    internal static bool ForceScalar { get => _forceScalar; set => _forceScalar = value; }
    [ThreadStatic] private static bool _forceScalar;

    /// <summary>Whether the calling thread's kernels use the vector path.</summary>
    internal static bool Vector => VectorSupported && !_forceScalar;

    private static readonly float[] Half = BlockQuantizer.HalfTable;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Scale(byte* block)
    {
        fixed (float* t = Half) return t[*(ushort*)block];
    }

    /// <summary>y[j] = dot(row j of the blocks at <paramref name="w"/>, x) for j &lt; rows; rows are rowBytes apart.</summary>
    public static void Dot(QuantizationFormat format, byte* w, long rowBytes, long columns, int rows, float* x, float* y, bool vector)
    {
        long blocks = columns / 32;
        for (int j = 0; j < rows; j++)
        {
            byte* row = w + j * rowBytes;
            y[j] = format == QuantizationFormat.Q8_0
                ? (vector ? DotQ8_0(row, blocks, x) : DotQ8_0Scalar(row, blocks, x))
                : (vector ? DotQ4_0(row, blocks, x) : DotQ4_0Scalar(row, blocks, x));
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float DotQ8_0(byte* row, long blocks, float* x)
    {
        Vector256<float> acc0 = default, acc1 = default;
        fixed (float* half = Half)
        {
            for (long b = 0; b < blocks; b++)
            {
                byte* blk = row + b * 34;
                sbyte* q = (sbyte*)(blk + 2);
                float* xb = x + b * 32;
                var p = Avx.Multiply(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(q)), Avx.LoadVector256(xb));
                var r = Avx.Multiply(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(q + 8)), Avx.LoadVector256(xb + 8));
                p = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(q + 16)), Avx.LoadVector256(xb + 16), p);
                r = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(q + 24)), Avx.LoadVector256(xb + 24), r);
                var d = Vector256.Create(half[*(ushort*)blk]);
                acc0 = Fma.MultiplyAdd(p, d, acc0);
                acc1 = Fma.MultiplyAdd(r, d, acc1);
            }
        }
        return Vector256.Sum(Avx.Add(acc0, acc1));
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float DotQ4_0(byte* row, long blocks, float* x)
    {
        Vector256<float> acc0 = default, acc1 = default;
        var mask = Vector128.Create((byte)0x0F);
        var eight = Vector128.Create((sbyte)8);
        fixed (float* half = Half)
        {
            for (long b = 0; b < blocks; b++)
            {
                byte* blk = row + b * 18;
                float* xb = x + b * 32;
                var v = Sse2.LoadVector128(blk + 2);
                // Low nibbles are weights 0-15, high nibbles 16-31; minus 8 as signed bytes, then widen.
                var lo = Sse2.Subtract(Sse2.And(v, mask).AsSByte(), eight);
                var hi = Sse2.Subtract(Sse2.And(Sse2.ShiftRightLogical(v.AsUInt16(), 4).AsByte(), mask).AsSByte(), eight);
                var p = Avx.Multiply(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(lo)), Avx.LoadVector256(xb));
                var r = Avx.Multiply(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(Sse2.ShiftRightLogical128BitLane(lo, 8))), Avx.LoadVector256(xb + 8));
                p = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(hi)), Avx.LoadVector256(xb + 16), p);
                r = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(Sse2.ShiftRightLogical128BitLane(hi, 8))), Avx.LoadVector256(xb + 24), r);
                var d = Vector256.Create(half[*(ushort*)blk]);
                acc0 = Fma.MultiplyAdd(p, d, acc0);
                acc1 = Fma.MultiplyAdd(r, d, acc1);
            }
        }
        return Vector256.Sum(Avx.Add(acc0, acc1));
    }

    private static float DotQ8_0Scalar(byte* row, long blocks, float* x)
    {
        float sum = 0;
        for (long b = 0; b < blocks; b++)
        {
            byte* blk = row + b * 34;
            float s = 0;
            for (int j = 0; j < 32; j++) s += (sbyte)blk[2 + j] * x[b * 32 + j];
            sum += s * Scale(blk);
        }
        return sum;
    }

    private static float DotQ4_0Scalar(byte* row, long blocks, float* x)
    {
        float sum = 0;
        for (long b = 0; b < blocks; b++)
        {
            byte* blk = row + b * 18;
            float s = 0;
            for (int j = 0; j < 16; j++)
            {
                s += ((blk[2 + j] & 0x0F) - 8) * x[b * 32 + j];
                s += ((blk[2 + j] >> 4) - 8) * x[b * 32 + j + 16];
            }
            sum += s * Scale(blk);
        }
        return sum;
    }

    /// <summary>Rows [first, first + count) of <paramref name="w"/> as float32 into dst (count × columns).</summary>
    public static void Dequantize(QuantizedWeight w, long first, long count, float* dst)
    {
        if (first < 0 || count < 0 || first + count > w.Rows) throw new ArgumentOutOfRangeException(nameof(count));
        long rowBytes = w.RowBytes, blocks = w.Columns / 32;
        byte* src = w.Pointer + first * rowBytes;
        DequantizeBlocks(w.Format, src, count * blocks, dst, Vector);
    }

    /// <summary>n consecutive blocks (rows are whole blocks, so rows run on) to 32·n floats.</summary>
    public static void DequantizeBlocks(QuantizationFormat format, byte* src, long n, float* dst, bool vector)
    {
        int bb = QuantizationFormats.BlockBytes(format);
        fixed (float* half = Half)
        {
            for (long b = 0; b < n; b++)
            {
                byte* blk = src + b * bb;
                float* o = dst + b * 32;
                float d = half[*(ushort*)blk];
                if (vector)
                {
                    var dv = Vector256.Create(d);
                    if (format == QuantizationFormat.Q8_0)
                    {
                        sbyte* q = (sbyte*)(blk + 2);
                        for (int k = 0; k < 32; k += 8)
                            Avx.Store(o + k, Avx.Multiply(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(q + k)), dv));
                    }
                    else
                    {
                        var v = Sse2.LoadVector128(blk + 2);
                        var mask = Vector128.Create((byte)0x0F);
                        var eight = Vector128.Create((sbyte)8);
                        var lo = Sse2.Subtract(Sse2.And(v, mask).AsSByte(), eight);
                        var hi = Sse2.Subtract(Sse2.And(Sse2.ShiftRightLogical(v.AsUInt16(), 4).AsByte(), mask).AsSByte(), eight);
                        Avx.Store(o, Avx.Multiply(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(lo)), dv));
                        Avx.Store(o + 8, Avx.Multiply(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(Sse2.ShiftRightLogical128BitLane(lo, 8))), dv));
                        Avx.Store(o + 16, Avx.Multiply(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(hi)), dv));
                        Avx.Store(o + 24, Avx.Multiply(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(Sse2.ShiftRightLogical128BitLane(hi, 8))), dv));
                    }
                }
                else if (format == QuantizationFormat.Q8_0)
                    for (int j = 0; j < 32; j++) o[j] = d * (sbyte)blk[2 + j];
                else
                    for (int j = 0; j < 16; j++)
                    {
                        o[j] = d * ((blk[2 + j] & 0x0F) - 8);
                        o[j + 16] = d * ((blk[2 + j] >> 4) - 8);
                    }
            }
        }
    }

    /// <summary>Rows [first, first + count) into the float32 tensor <paramref name="dst"/> (contiguous, count × columns), on the kernel threads.</summary>
    public static void DequantizePanel(QuantizedWeight w, long first, long count, TorchSharp.torch.Tensor dst, int threads)
    {
        var job = new PanelJob
        {
            Format = w.Format, Src = w.Pointer + first * w.RowBytes, RowBytes = w.RowBytes, Columns = w.Columns, Rows = count, UseVector = Vector,
            Dst = (float*)System.Runtime.CompilerServices.Unsafe.AsPointer(ref System.Runtime.InteropServices.MemoryMarshal.GetReference(dst.bytes)),
        };
        if (first < 0 || first + count > w.Rows || dst.numel() < count * w.Columns) throw new ArgumentOutOfRangeException(nameof(count));
        KernelThreads.Shared.Run(job, threads);
    }

    private sealed class PanelJob : BlockJob
    {
        private const int RowsPerBlock = 16;
        public QuantizationFormat Format;
        public byte* Src;
        public long RowBytes, Columns, Rows;
        public float* Dst;
        public bool UseVector;

        public override long BlockCount => (Rows + RowsPerBlock - 1) / RowsPerBlock;

        protected override void RunBlock(long block)
        {
            long r0 = block * RowsPerBlock, n = Math.Min(RowsPerBlock, Rows - r0);
            DequantizeBlocks(Format, Src + r0 * RowBytes, n * (Columns / 32), Dst + r0 * Columns, UseVector);
        }
    }

    // ------------------------------------------------------------------ int8 dot products (llama.cpp's scheme)

    /// <summary>
    /// Decode with int8 dot products instead of widening in registers: the activations are quantized to Q8_0 blocks
    /// once per call (as llama.cpp does on CPU) and each weight block is multiplied as bytes. Fewer instructions per
    /// weight, at the cost of rounding the activations; chosen by measurement (see docs/quantization.md).
    /// </summary>
    internal static bool Int8Activations { get => _int8 ?? Int8Default; set => _int8 = value; }
    [ThreadStatic] private static bool? _int8; // per calling thread, as ForceScalar
    private static readonly bool Int8Default = Environment.GetEnvironmentVariable("SHAREGPT4V_QUANT_INT8") == "1";

    /// <summary>Quantizes <paramref name="rows"/> rows of x (columns a multiple of 32) to Q8_0: int8 values and float scales.</summary>
    public static void QuantizeActivations(float* x, int rows, long columns, sbyte* q, float* d)
    {
        long blocks = columns / 32;
        for (long b = 0; b < rows * blocks; b++)
        {
            float* xb = x + b * 32;
            float amax = 0;
            for (int j = 0; j < 32; j++) amax = MathF.Max(amax, MathF.Abs(xb[j]));
            float scale = amax / 127f, inv = scale != 0 ? 1f / scale : 0f;
            d[b] = (float)(Half)scale; // stored as a half, as in llama.cpp's Q8_0 blocks
            for (int j = 0; j < 32; j++) q[b * 32 + j] = (sbyte)MathF.Round(xb[j] * inv, MidpointRounding.AwayFromZero);
        }
    }

    /// <summary>As <see cref="Dot"/>, with x given as Q8_0 blocks (<paramref name="xq"/>, <paramref name="xd"/>).</summary>
    public static void DotInt8(QuantizationFormat format, byte* w, long rowBytes, long columns, int rows, sbyte* xq, float* xd, float* y, bool vector)
    {
        long blocks = columns / 32;
        for (int j = 0; j < rows; j++)
            y[j] = vector ? DotInt8Row(format, w + j * rowBytes, blocks, xq, xd) : DotInt8Scalar(format, w + j * rowBytes, blocks, xq, xd);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float DotInt8Row(QuantizationFormat format, byte* row, long blocks, sbyte* xq, float* xd)
    {
        Vector256<float> acc = default;
        var ones = Vector256.Create((short)1);
        var mask = Vector128.Create((byte)0x0F);
        var eight = Vector256.Create((sbyte)8);
        int bb = format == QuantizationFormat.Q8_0 ? 34 : 18;
        fixed (float* half = Half)
        {
            for (long b = 0; b < blocks; b++)
            {
                byte* blk = row + b * bb;
                Vector256<sbyte> wv;
                if (format == QuantizationFormat.Q8_0) wv = Avx.LoadVector256((sbyte*)(blk + 2));
                else
                {
                    var v = Sse2.LoadVector128(blk + 2);
                    var lo = Sse2.And(v, mask);
                    var hi = Sse2.And(Sse2.ShiftRightLogical(v.AsUInt16(), 4).AsByte(), mask);
                    wv = Avx2.Subtract(Vector256.Create(lo, hi).AsSByte(), eight);
                }
                var xv = Avx.LoadVector256(xq + b * 32);
                // |w| as unsigned times sign-adjusted x: pairs of products (at most 2·128·127) fit int16.
                var dot16 = Avx2.MultiplyAddAdjacent(Avx2.Sign(wv, wv).AsByte(), Avx2.Sign(xv, wv));
                var dot32 = Avx2.MultiplyAddAdjacent(dot16, ones);
                acc = Fma.MultiplyAdd(Avx.ConvertToVector256Single(dot32), Vector256.Create(half[*(ushort*)blk] * xd[b]), acc);
            }
        }
        return Vector256.Sum(acc);
    }

    private static float DotInt8Scalar(QuantizationFormat format, byte* row, long blocks, sbyte* xq, float* xd)
    {
        float sum = 0;
        int bb = format == QuantizationFormat.Q8_0 ? 34 : 18;
        for (long b = 0; b < blocks; b++)
        {
            byte* blk = row + b * bb;
            int s = 0;
            for (int j = 0; j < 32; j++)
            {
                int w = format == QuantizationFormat.Q8_0 ? (sbyte)blk[2 + j] : (j < 16 ? blk[2 + j] & 15 : blk[2 + j - 16] >> 4) - 8;
                s += w * xq[b * 32 + j];
            }
            sum += s * (Scale(blk) * xd[b]);
        }
        return sum;
    }
}
