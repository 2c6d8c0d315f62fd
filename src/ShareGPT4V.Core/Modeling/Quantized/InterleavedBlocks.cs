using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace ShareGPT4V.Modeling;

/// <summary>
/// The decode layout of a block-quantized matrix: rows in groups of eight, each group's blocks interleaved (as
/// llama.cpp repacks Q4_0 / Q8_0 for its CPU kernels). For block b of a group: the eight rows' half scales (16 bytes),
/// then the quant bytes in chunks of 32: chunk k holds bytes 4k..4k+3 of row 0, then of row 1, ... row 7. A group
/// takes the same bytes as its eight rows (8 × 34 per Q8_0 block, 8 × 18 per Q4_0 block), so row g·8 still starts at
/// g·8·rowBytes.
/// <para>Why: one 32-byte load then feeds one <c>vpdpbusd</c> for eight rows at once with four bytes of x broadcast,
/// and a decode step reads each matrix as one contiguous stream. The row layout is four short streams per pass
/// (rows of 1-4 KiB) with a scalar scale and a horizontal sum per row: it read Q8_0 at 18-34 GB/s where float32 weights
/// stream at 34-41 GB/s (docs/quantization.md).</para>
/// </summary>
internal static unsafe class InterleavedBlocks
{
    public const int Rows = 8;

    /// <summary>Whether loads put decode weights in this layout (the default; SHAREGPT4V_INTERLEAVE=0 keeps the row layout, for comparisons).</summary>
    internal static bool Enabled { get; set; } = Environment.GetEnvironmentVariable("SHAREGPT4V_INTERLEAVE") != "0";

    /// <summary>Bytes of the scales at the start of each interleaved block.</summary>
    private const int ScaleBytes = 2 * Rows;

    /// <summary>Rows [0, rows) of row-major blocks at <paramref name="src"/> into the interleaved layout at <paramref name="dst"/> (rows a multiple of 8).</summary>
    public static void Interleave(QuantizationFormat format, byte* src, long rows, long rowBytes, byte* dst)
    {
        int bb = QuantizationFormats.BlockBytes(format), qb = bb - 2;
        long blocks = rowBytes / bb;
        for (long g = 0; g < rows; g += Rows)
        {
            byte* groupSrc = src + g * rowBytes, groupDst = dst + g * rowBytes;
            for (long b = 0; b < blocks; b++)
            {
                byte* o = groupDst + b * Rows * bb;
                for (int lane = 0; lane < Rows; lane++)
                {
                    byte* blk = groupSrc + lane * rowBytes + b * bb;
                    *(ushort*)(o + 2 * lane) = *(ushort*)blk;
                    for (int k = 0; k < qb / 4; k++) *(uint*)(o + ScaleBytes + k * 32 + lane * 4) = *(uint*)(blk + 2 + 4 * k);
                }
            }
        }
    }

    /// <summary>Row <paramref name="lane"/> of the group at <paramref name="group"/>, blocks [first, first + count), back in the row layout at <paramref name="dst"/>.</summary>
    public static void ExtractRow(QuantizationFormat format, byte* group, int lane, long first, long count, byte* dst)
    {
        int bb = QuantizationFormats.BlockBytes(format), qb = bb - 2;
        for (long b = 0; b < count; b++)
        {
            byte* blk = group + (first + b) * Rows * bb;
            byte* o = dst + b * bb;
            *(ushort*)o = *(ushort*)(blk + 2 * lane);
            for (int k = 0; k < qb / 4; k++) *(uint*)(o + 2 + 4 * k) = *(uint*)(blk + ScaleBytes + k * 32 + lane * 4);
        }
    }

    /// <summary>
    /// y[0..8) = the eight rows of the group at <paramref name="group"/> times x, with x as Q8_0 blocks (see
    /// <see cref="QuantKernels.QuantizeActivations"/>). Each block's integer dot product is exact; it is scaled by
    /// d_w·d_x and summed in float32.
    /// </summary>
    public static void DotInt8(QuantizationFormat format, byte* group, long columns, sbyte* xq, float* xd, int* xs, float* y, bool vector)
    {
        long blocks = columns / 32;
        if (vector)
        {
            if (format == QuantizationFormat.Q8_0) DotQ8(group, blocks, xq, xd, y);
            else DotQ4(group, blocks, xq, xd, xs, y);
            return;
        }
        long rowBytes = QuantizationFormats.RowBytes(format, columns);
        fixed (byte* r = RowBuffer(rowBytes))
            for (int lane = 0; lane < Rows; lane++)
            {
                ExtractRow(format, group, lane, 0, blocks, r);
                QuantKernels.DotInt8(format, r, rowBytes, columns, 1, xq, xd, xs, y + lane, vector: false);
            }
    }

    /// <summary>As <see cref="DotInt8"/> with float32 x (the path with int8 activations off): each row back in the row layout, then the row kernels.</summary>
    public static void Dot(QuantizationFormat format, byte* group, long columns, float* x, float* y, bool vector)
    {
        long rowBytes = QuantizationFormats.RowBytes(format, columns);
        fixed (byte* r = RowBuffer(rowBytes))
            for (int lane = 0; lane < Rows; lane++)
            {
                ExtractRow(format, group, lane, 0, columns / 32, r);
                QuantKernels.Dot(format, r, rowBytes, columns, 1, x, y + lane, vector);
            }
    }

    /// <summary>This thread's buffer for one row in the row layout (the fallback paths), grown as needed.</summary>
    internal static byte[] RowBuffer(long bytes)
    {
        if (_row is null || _row.Length < bytes) _row = new byte[bytes];
        return _row;
    }
    [ThreadStatic] private static byte[]? _row;

    // The unsigned × signed four-byte dot products (vpdpbusd, or its AVX2 equivalent), shared with the row kernels.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> Accumulate(Vector256<int> s, Vector256<byte> u, Vector256<sbyte> x) =>
        QuantKernels.UnsignedTimesSigned(s, u, x);

    // Signed × signed through the unsigned × signed instruction: |w| times x with w's sign moved onto x.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> AccumulateQ8(Vector256<int> s, byte* chunk, int x4)
    {
        var w = Avx.LoadVector256((sbyte*)chunk);
        return Accumulate(s, Avx2.Abs(w), Avx2.Sign(Vector256.Create(x4).AsSByte(), w));
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void DotQ8(byte* g, long blocks, sbyte* xq, float* xd, float* y)
    {
        const int GroupBlock = Rows * 34;
        var acc = Vector256<float>.Zero;
        for (long b = 0; b < blocks; b++, g += GroupBlock)
        {
            int* x = (int*)(xq + b * 32);
            byte* f = g + PrefetchAhead; // the block's five cache lines, 6 KiB ahead
            Sse.Prefetch0(f); Sse.Prefetch0(f + 64); Sse.Prefetch0(f + 128); Sse.Prefetch0(f + 192); Sse.Prefetch0(f + 256);
            // Two chains of dot products, so consecutive vpdpbusd do not wait on each other.
            var s0 = AccumulateQ8(Vector256<int>.Zero, g + 16, x[0]);
            var s1 = AccumulateQ8(Vector256<int>.Zero, g + 48, x[1]);
            s0 = AccumulateQ8(s0, g + 80, x[2]);
            s1 = AccumulateQ8(s1, g + 112, x[3]);
            s0 = AccumulateQ8(s0, g + 144, x[4]);
            s1 = AccumulateQ8(s1, g + 176, x[5]);
            s0 = AccumulateQ8(s0, g + 208, x[6]);
            s1 = AccumulateQ8(s1, g + 240, x[7]);
            var d = Avx.Multiply(HalfToSingle(Sse2.LoadVector128((ushort*)g)), Vector256.Create(xd[b]));
            acc = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.Add(s0, s1)), d, acc);
        }
        Avx.Store(y, acc);
    }

    // The nibbles are unsigned (0-15) as stored, so they multiply x directly; the −8 offset of every weight comes off
    // afterwards as 8·Σx. Chunk k holds bytes 4k..4k+3: low nibbles are weights 4k..4k+3, high ones 16+4k..16+4k+3.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void DotQ4(byte* g, long blocks, sbyte* xq, float* xd, int* xs, float* y)
    {
        const int GroupBlock = Rows * 18;
        var acc = Vector256<float>.Zero;
        var mask = Vector256.Create((byte)0x0F);
        for (long b = 0; b < blocks; b++, g += GroupBlock)
        {
            int* x = (int*)(xq + b * 32);
            byte* f = g + PrefetchAhead; // the block's three cache lines
            Sse.Prefetch0(f); Sse.Prefetch0(f + 64); Sse.Prefetch0(f + 128);
            var s0 = Vector256<int>.Zero;
            var s1 = Vector256<int>.Zero;
            for (int k = 0; k < 4; k++)
            {
                var v = Avx.LoadVector256(g + 16 + 32 * k);
                s0 = Accumulate(s0, Avx2.And(v, mask), Vector256.Create(x[k]).AsSByte());
                s1 = Accumulate(s1, Avx2.And(Avx2.ShiftRightLogical(v.AsUInt16(), 4).AsByte(), mask), Vector256.Create(x[4 + k]).AsSByte());
            }
            var sum = Avx2.Subtract(Avx2.Add(s0, s1), Vector256.Create(8 * xs[b]));
            var d = Avx.Multiply(HalfToSingle(Sse2.LoadVector128((ushort*)g)), Vector256.Create(xd[b]));
            acc = Fma.MultiplyAdd(Avx.ConvertToVector256Single(sum), d, acc);
        }
        Avx.Store(y, acc);
    }

    /// <summary>
    /// How far ahead of the block being multiplied the kernels prefetch: the hardware prefetcher alone left the stream
    /// at 18-26 GB/s; from 4 KiB ahead on it ran at 25-33 GB/s, flat to 8 KiB (kernel bench, same-run alternation).
    /// Prefetches past the end of a matrix are harmless (they never fault).
    /// </summary>
    private const int PrefetchAhead = 6144;
    private static readonly Vector256<float> TwoTo112 = Vector256.Create(BitConverter.Int32BitsToSingle((127 + 112) << 23));

    /// <summary>
    /// Eight IEEE halves to float32, exactly (subnormals, infinities and NaNs included). .NET exposes no F16C, so:
    /// the half's exponent and mantissa shifted into a float32 are the value times 2^-112, which one exact multiply
    /// by 2^112 undoes (for half subnormals too); exponent 31 becomes 255; then the sign.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<float> HalfToSingle(Vector128<ushort> h)
    {
        var v = Avx2.ConvertToVector256Int32(h);
        var em = Avx2.ShiftLeftLogical(Avx2.And(v, Vector256.Create(0x7FFF)), 13);
        var f = Avx.Multiply(em.AsSingle(), TwoTo112);
        var infNan = Avx2.CompareEqual(Avx2.And(v, Vector256.Create(0x7C00)), Vector256.Create(0x7C00));
        f = Avx.BlendVariable(f, Avx2.Or(em, Vector256.Create(0x7F800000)).AsSingle(), infNan.AsSingle());
        return Avx2.Or(f.AsInt32(), Avx2.ShiftLeftLogical(Avx2.And(v, Vector256.Create(0x8000)), 16)).AsSingle();
    }
}
