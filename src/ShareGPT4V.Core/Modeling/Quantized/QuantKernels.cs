using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace ShareGPT4V.Modeling;

/// <summary>
/// The block-format kernels. Decode mat-vec: by default int8 dot products with the activations quantized to Q8_0
/// (<see cref="DotInt8"/>, llama.cpp's scheme), or with float32 activations, each block widened in registers
/// (<see cref="Dot"/>). GEMM path: dequantization of row panels into cache-resident float32 or bfloat16. The scalar
/// versions do the same arithmetic one weight at a time and serve CPUs without AVX2 and as the tests' cross-check.
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
        if (!w.Interleaved)
        {
            DequantizeBlocks(w.Format, w.Pointer + first * rowBytes, count * blocks, dst, Vector);
            return;
        }
        fixed (byte* row = InterleavedBlocks.RowBuffer(rowBytes))
            for (long r = 0; r < count; r++)
            {
                w.CopyRows(first + r, 1, row);
                DequantizeBlocks(w.Format, row, blocks, dst + r * w.Columns, Vector);
            }
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

    /// <summary>
    /// GEMMs over quantized weights (prefill, and any quantized matrix with many input rows) in bfloat16 (panels dequantized to bfloat16, activations cast
    /// once, float32 accumulation inside the GEMM): on CPUs with AVX512-BF16 or AMX-BF16, where libtorch's bfloat16
    /// GEMM runs about 3-4× faster than float32. The default there; SHAREGPT4V_BF16_GEMM=0 turns it off. Per calling
    /// thread, as <see cref="ForceScalar"/>.
    /// </summary>
    internal static bool Bf16Gemm { get => _bf16Gemm ?? Bf16GemmDefault; set => _bf16Gemm = value; }
    [ThreadStatic] private static bool? _bf16Gemm;
    private static readonly bool Bf16GemmDefault = Autocast.CpuHasFastBf16 && Environment.GetEnvironmentVariable("SHAREGPT4V_BF16_GEMM") != "0";

    /// <summary>
    /// Rows [first, first + count) into <paramref name="dst"/> (contiguous, count × columns; float32, or bfloat16
    /// rounded to nearest even), on the kernel threads.
    /// </summary>
    public static void DequantizePanel(QuantizedWeight w, long first, long count, TorchSharp.torch.Tensor dst, int threads)
    {
        bool bf16 = dst.dtype == TorchSharp.torch.ScalarType.BFloat16;
        if (!bf16 && dst.dtype != TorchSharp.torch.ScalarType.Float32) throw new ArgumentException($"A panel is float32 or bfloat16, not {dst.dtype}", nameof(dst));
        var job = new PanelJob
        {
            Weight = w, First = first, Format = w.Format, Src = w.Pointer + first * w.RowBytes, RowBytes = w.RowBytes, Columns = w.Columns, Rows = count, UseVector = Vector,
            Dst = bf16 ? null : (float*)System.Runtime.CompilerServices.Unsafe.AsPointer(ref System.Runtime.InteropServices.MemoryMarshal.GetReference(dst.bytes)),
            DstBf16 = bf16 ? (ushort*)System.Runtime.CompilerServices.Unsafe.AsPointer(ref System.Runtime.InteropServices.MemoryMarshal.GetReference(dst.bytes)) : null,
        };
        if (first < 0 || first + count > w.Rows || dst.numel() < count * w.Columns) throw new ArgumentOutOfRangeException(nameof(count));
        KernelThreads.Shared.Run(job, threads);
    }

    private sealed class PanelJob : BlockJob
    {
        private const int RowsPerBlock = 16;
        public QuantizedWeight Weight = null!;
        public long First;
        public QuantizationFormat Format;
        public byte* Src;
        public long RowBytes, Columns, Rows;
        public float* Dst;
        public ushort* DstBf16;
        public bool UseVector;

        public override long BlockCount => (Rows + RowsPerBlock - 1) / RowsPerBlock;

        protected override void RunBlock(long block)
        {
            long r0 = block * RowsPerBlock, n = Math.Min(RowsPerBlock, Rows - r0);
            if (Weight.Interleaved)
            {
                // One row at a time back in the row layout (a copy of a few KiB), then as below.
                fixed (byte* row = InterleavedBlocks.RowBuffer(RowBytes))
                    for (long r = r0; r < r0 + n; r++)
                    {
                        Weight.CopyRows(First + r, 1, row);
                        Panel(row, 1, r);
                    }
                return;
            }
            Panel(Src + r0 * RowBytes, n, r0);
        }

        /// <summary>n rows of row-layout blocks at <paramref name="src0"/> into the panel's rows from <paramref name="r0"/>.</summary>
        private void Panel(byte* src0, long n, long r0)
        {
            if (Dst != null)
            {
                DequantizeBlocks(Format, src0, n * (Columns / 32), Dst + r0 * Columns, UseVector);
                return;
            }
            // bfloat16: each block through 32 floats on the stack, then rounded.
            float* tmp = stackalloc float[32];
            int bb = QuantizationFormats.BlockBytes(Format);
            long blocks = n * (Columns / 32);
            byte* src = src0;
            ushort* dst = DstBf16 + r0 * Columns;
            for (long b = 0; b < blocks; b++)
            {
                DequantizeBlocks(Format, src + b * bb, 1, tmp, UseVector);
                ToBFloat16(tmp, dst + b * 32, 32, UseVector);
            }
        }
    }

    /// <summary>Rounds n floats (n a multiple of 16 on the vector path) to bfloat16, nearest even (finite inputs).</summary>
    internal static void ToBFloat16(float* src, ushort* dst, int n, bool vector)
    {
        int i = 0;
        if (vector)
        {
            var bias = Vector256.Create(0x7FFFu);
            var one = Vector256.Create(1u);
            for (; i + 16 <= n; i += 16)
            {
                var a = Avx.LoadVector256((uint*)(src + i));
                var b = Avx.LoadVector256((uint*)(src + i + 8));
                a = Avx2.ShiftRightLogical(Avx2.Add(a, Avx2.Add(bias, Avx2.And(Avx2.ShiftRightLogical(a, 16), one))), 16);
                b = Avx2.ShiftRightLogical(Avx2.Add(b, Avx2.Add(bias, Avx2.And(Avx2.ShiftRightLogical(b, 16), one))), 16);
                // packus works per 128-bit lane: restore the order with a 64-bit permute.
                var packed = Avx2.PackUnsignedSaturate(a.AsInt32(), b.AsInt32());
                Avx.Store(dst + i, Avx2.Permute4x64(packed.AsUInt64(), 0xD8).AsUInt16());
            }
        }
        for (; i < n; i++)
        {
            uint bits = *(uint*)(src + i);
            dst[i] = (ushort)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
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
    private static readonly bool Int8Default = Environment.GetEnvironmentVariable("SHAREGPT4V_QUANT_INT8") != "0";

    /// <summary>
    /// Quantizes <paramref name="rows"/> rows of x (columns a multiple of 32) to Q8_0: int8 values, float scales and,
    /// per block, the sum of its int8 values (the Q4_0 kernel's offset correction).
    /// </summary>
    public static void QuantizeActivations(float* x, int rows, long columns, sbyte* q, float* d, int* sums)
    {
        long blocks = columns / 32;
        if (Vector)
        {
            QuantizeActivationsVector(x, rows * blocks, q, d, sums);
            return;
        }
        for (long b = 0; b < rows * blocks; b++)
        {
            float* xb = x + b * 32;
            float amax = 0;
            for (int j = 0; j < 32; j++) amax = MathF.Max(amax, MathF.Abs(xb[j]));
            float scale = amax / 127f, inv = scale != 0 ? 1f / scale : 0f;
            d[b] = (float)(Half)scale; // stored as a half, as in llama.cpp's Q8_0 blocks
            int sum = 0;
            for (int j = 0; j < 32; j++)
            {
                sbyte v = (sbyte)MathF.Round(xb[j] * inv, MidpointRounding.AwayFromZero);
                q[b * 32 + j] = v;
                sum += v;
            }
            sums[b] = sum;
        }
    }

    // The arithmetic of the scalar loop above, eight lanes at a time (BlockQuantizer's rounding): a decode step
    // quantizes about a quarter of a million activations, which the scalar loop took about a millisecond for.
    private static void QuantizeActivationsVector(float* x, long blocks, sbyte* q, float* d, int* sums)
    {
        for (long b = 0; b < blocks; b++)
        {
            float* xb = x + b * 32;
            var v0 = Avx.LoadVector256(xb);
            var v1 = Avx.LoadVector256(xb + 8);
            var v2 = Avx.LoadVector256(xb + 16);
            var v3 = Avx.LoadVector256(xb + 24);
            var m = Vector256.Max(Vector256.Max(Vector256.Abs(v0), Vector256.Abs(v1)), Vector256.Max(Vector256.Abs(v2), Vector256.Abs(v3)));
            var m4 = Vector128.Max(m.GetLower(), m.GetUpper());
            float amax = MathF.Max(MathF.Max(m4[0], m4[1]), MathF.Max(m4[2], m4[3]));
            float scale = amax / 127f, inv = scale != 0 ? 1f / scale : 0f;
            d[b] = (float)(Half)scale;
            var i0 = BlockQuantizer.RoundToInt8(v0, inv);
            var i1 = BlockQuantizer.RoundToInt8(v1, inv);
            var i2 = BlockQuantizer.RoundToInt8(v2, inv);
            var i3 = BlockQuantizer.RoundToInt8(v3, inv);
            sums[b] = Vector256.Sum(i0 + i1 + i2 + i3);
            Vector256.Narrow(Vector256.Narrow(i0, i1), Vector256.Narrow(i2, i3)).Store(q + b * 32);
        }
    }

    /// <summary>As <see cref="Dot"/>, with x given as Q8_0 blocks (<paramref name="xq"/>, <paramref name="xd"/>, <paramref name="xs"/>).</summary>
    public static void DotInt8(QuantizationFormat format, byte* w, long rowBytes, long columns, int rows, sbyte* xq, float* xd, int* xs, float* y, bool vector)
    {
        long blocks = columns / 32;
        if (!vector)
        {
            for (int j = 0; j < rows; j++) y[j] = DotInt8Scalar(format, w + j * rowBytes, blocks, xq, xd);
            return;
        }
        int r = 0;
        if (format == QuantizationFormat.Q8_0)
        {
            for (; r + 4 <= rows; r += 4) DotInt8Rows4<Q8Blocks>(w + r * rowBytes, rowBytes, blocks, xq, xd, xs, y + r);
            for (; r < rows; r++) y[r] = DotInt8Row<Q8Blocks>(w + r * rowBytes, blocks, xq, xd, xs);
        }
        else
        {
            for (; r + 4 <= rows; r += 4) DotInt8Rows4<Q4Blocks>(w + r * rowBytes, rowBytes, blocks, xq, xd, xs, y + r);
            for (; r < rows; r++) y[r] = DotInt8Row<Q4Blocks>(w + r * rowBytes, blocks, xq, xd, xs);
        }
    }

    /// <summary>
    /// One block format's integer dot product of 32 weights with 32 int8 activations, as eight int32 partial sums
    /// whose total is the exact dot product. With AVX-VNNI it is one <c>vpdpbusd</c>; without, <c>vpmaddubsw</c> +
    /// <c>vpmaddwd</c> (no int16 saturation: a pair is at most 2·128·127).
    /// </summary>
    private interface IBlockDot
    {
        static abstract int BlockBytes { get; }
        static abstract Vector256<int> Dot(byte* block, Vector256<sbyte> x, int xsum);
    }

    // AvxVnni is marked as a preview API in .NET 10; the instruction itself is stable (Alder Lake, Zen 4 and later).
#pragma warning disable CA2252
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> UnsignedTimesSigned(Vector256<byte> u, Vector256<sbyte> s) => UnsignedTimesSigned(Vector256<int>.Zero, u, s);

    /// <summary>acc + the four-byte dot products of unsigned <paramref name="u"/> and signed <paramref name="s"/>, per int32 lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<int> UnsignedTimesSigned(Vector256<int> acc, Vector256<byte> u, Vector256<sbyte> s) =>
        AvxVnni.IsSupported
            ? AvxVnni.MultiplyWideningAndAdd(acc, u, s)
            : Avx2.Add(acc, Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(u, s), Vector256.Create((short)1)));
#pragma warning restore CA2252

    private readonly struct Q8Blocks : IBlockDot
    {
        public static int BlockBytes => 34;

        // Signed × signed through the unsigned × signed instruction: |w| times x with w's sign moved onto x.
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> Dot(byte* block, Vector256<sbyte> x, int xsum)
        {
            var w = Avx.LoadVector256((sbyte*)(block + 2));
            return UnsignedTimesSigned(Avx2.Abs(w), Avx2.Sign(x, w));
        }
    }

    private readonly struct Q4Blocks : IBlockDot
    {
        public static int BlockBytes => 18;

        // The nibbles are unsigned (0-15) as stored, so they multiply x directly; the −8 offset of every weight comes
        // off afterwards as 8·Σx, spread as Σx over the eight partial sums.
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> Dot(byte* block, Vector256<sbyte> x, int xsum)
        {
            var v = Sse2.LoadVector128(block + 2);
            var mask = Vector128.Create((byte)0x0F);
            var nibbles = Vector256.Create(Sse2.And(v, mask), Sse2.And(Sse2.ShiftRightLogical(v.AsUInt16(), 4).AsByte(), mask));
            return Avx2.Subtract(UnsignedTimesSigned(nibbles, x), Vector256.Create(xsum));
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float DotInt8Row<T>(byte* row, long blocks, sbyte* xq, float* xd, int* xs) where T : struct, IBlockDot
    {
        Vector256<float> acc = default;
        fixed (float* half = Half)
        {
            byte* p = row;
            for (long b = 0; b < blocks; b++, p += T.BlockBytes)
            {
                var dot = T.Dot(p, Avx.LoadVector256(xq + b * 32), xs[b]);
                acc = Fma.MultiplyAdd(Avx.ConvertToVector256Single(dot), Vector256.Create(half[*(ushort*)p] * xd[b]), acc);
            }
        }
        return Vector256.Sum(acc);
    }

    /// <summary>Four weight rows at once: each activation block is loaded once, and four accumulators run in parallel.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void DotInt8Rows4<T>(byte* w, long rowBytes, long blocks, sbyte* xq, float* xd, int* xs, float* y) where T : struct, IBlockDot
    {
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        fixed (float* half = Half)
        {
            byte* p0 = w, p1 = w + rowBytes, p2 = w + 2 * rowBytes, p3 = w + 3 * rowBytes;
            // Rows are short (1-4 KiB), so each 4-row pass is four short streams the hardware prefetcher barely learns
            // before they end; fetching the rows about 16 KiB ahead doubled the rate read from memory (docs/quantization.md).
            long ahead = Math.Max(4, (16384 + rowBytes - 1) / rowBytes) * rowBytes;
            for (long b = 0; b < blocks; b++)
            {
                Sse.Prefetch0(p0 + ahead); Sse.Prefetch0(p1 + ahead); Sse.Prefetch0(p2 + ahead); Sse.Prefetch0(p3 + ahead);
                var x = Avx.LoadVector256(xq + b * 32);
                int s = xs[b];
                float dx = xd[b];
                a0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(T.Dot(p0, x, s)), Vector256.Create(half[*(ushort*)p0] * dx), a0);
                a1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(T.Dot(p1, x, s)), Vector256.Create(half[*(ushort*)p1] * dx), a1);
                a2 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(T.Dot(p2, x, s)), Vector256.Create(half[*(ushort*)p2] * dx), a2);
                a3 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(T.Dot(p3, x, s)), Vector256.Create(half[*(ushort*)p3] * dx), a3);
                p0 += T.BlockBytes; p1 += T.BlockBytes; p2 += T.BlockBytes; p3 += T.BlockBytes;
            }
        }
        y[0] = Vector256.Sum(a0);
        y[1] = Vector256.Sum(a1);
        y[2] = Vector256.Sum(a2);
        y[3] = Vector256.Sum(a3);
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
