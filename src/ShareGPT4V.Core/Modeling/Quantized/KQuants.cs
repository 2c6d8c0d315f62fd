using System.Buffers.Binary;

namespace ShareGPT4V.Modeling;

/// <summary>The llama.cpp K-quant block types a GGUF file may store that we read.</summary>
internal enum KQuantType
{
    /// <summary>144-byte super-blocks of 256 weights: fp16 d and dmin, 12 bytes of packed 6-bit scales and mins for eight sub-blocks of 32, then 128 bytes of nibbles; w = d·sc·q − dmin·m.</summary>
    Q4_K,
    /// <summary>210-byte super-blocks of 256 weights: 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, 16 int8 scales (one per 16 weights), fp16 d; w = d·sc·(q − 32).</summary>
    Q6_K,
}

/// <summary>
/// Reads llama.cpp's K-quant super-blocks (ggml-quants.c <c>dequantize_row_q4_K</c> / <c>dequantize_row_q6_K</c>) and
/// converts them to the 32-weight block formats our kernels run. Dequantization is exact: every product involved fits
/// a float32 significand, so the values equal llama.cpp's and gguf-py's bit for bit whatever the evaluation order.
/// </summary>
internal static class KQuants
{
    /// <summary>Weights per super-block.</summary>
    public const int SuperBlock = 256;

    /// <summary>Bytes of one super-block.</summary>
    public static int BlockBytes(KQuantType t) => t switch
    {
        KQuantType.Q4_K => 144,
        KQuantType.Q6_K => 210,
        _ => throw new ArgumentOutOfRangeException(nameof(t)),
    };

    /// <summary>Bytes of one row of <paramref name="columns"/> weights (a multiple of 256).</summary>
    public static long RowBytes(KQuantType t, long columns) => columns / SuperBlock * BlockBytes(t);

    private static float Half(ReadOnlySpan<byte> b, int at) => BlockQuantizer.HalfTable[BinaryPrimitives.ReadUInt16LittleEndian(b[at..])];

    private static bool FiniteHalf(ReadOnlySpan<byte> b, int at) => (BinaryPrimitives.ReadUInt16LittleEndian(b[at..]) & 0x7C00) != 0x7C00;

    /// <summary>
    /// Are the super-block's fp16 scales finite? llama.cpp's <c>ggml_validate_row_data</c> refuses NaN and infinite
    /// d (and dmin for Q4_K); a block that fails would dequantize to NaN or infinity.
    /// </summary>
    public static bool ScalesFinite(ReadOnlySpan<byte> block, KQuantType t) => t switch
    {
        KQuantType.Q4_K => FiniteHalf(block, 0) && FiniteHalf(block, 2),
        _ => FiniteHalf(block, 208),
    };

    /// <summary>Dequantizes one super-block into <paramref name="y"/> (256 values).</summary>
    public static void DequantizeBlock(ReadOnlySpan<byte> block, Span<float> y, KQuantType t)
    {
        if (t == KQuantType.Q4_K) DequantizeQ4K(block, y);
        else DequantizeQ6K(block, y);
    }

    // Layout: d (2), dmin (2), scales (12), qs (128). Sub-block j's 6-bit scale and min: for j < 4 the low six bits
    // of bytes j and j + 4; for j ≥ 4 a nibble of byte j + 4 and the top two bits of bytes j − 4 and j.
    private static void DequantizeQ4K(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = Half(b, 0), dmin = Half(b, 2);
        var scales = b.Slice(4, 12);
        var qs = b.Slice(16, 128);
        for (int j = 0; j < 8; j++)
        {
            int sc, m;
            if (j < 4)
            {
                sc = scales[j] & 63;
                m = scales[j + 4] & 63;
            }
            else
            {
                sc = (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4);
                m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
            }
            float d1 = d * sc, m1 = dmin * m;
            // Sub-blocks 2k and 2k + 1 share the 32 bytes k: low nibbles first, then high.
            var q = qs.Slice(j / 2 * 32, 32);
            int shift = (j & 1) * 4;
            var o = y.Slice(j * 32, 32);
            for (int l = 0; l < 32; l++) o[l] = d1 * ((q[l] >> shift) & 0xF) - m1;
        }
    }

    // Layout: ql (128), qh (64), scales (16 × int8), d (2). Each half of 128 weights takes 64 bytes of ql and 32 of
    // qh: weight l + 32·i (i = 0..3) has its low nibble in ql[l] (i = 0, 2: low / high nibble) or ql[l + 32] (i = 1, 3)
    // and its two high bits at bit 2·i of qh[l]; its scale is the one of its 16-weight group.
    private static void DequantizeQ6K(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = Half(b, 208);
        for (int half = 0; half < 2; half++)
        {
            var ql = b.Slice(half * 64, 64);
            var qh = b.Slice(128 + half * 32, 32);
            var o = y.Slice(half * 128, 128);
            int sc0 = 192 + half * 8;
            for (int l = 0; l < 32; l++)
            {
                int h = qh[l];
                int q1 = ((ql[l] & 0xF) | ((h & 3) << 4)) - 32;
                int q2 = ((ql[l + 32] & 0xF) | (((h >> 2) & 3) << 4)) - 32;
                int q3 = ((ql[l] >> 4) | (((h >> 4) & 3) << 4)) - 32;
                int q4 = ((ql[l + 32] >> 4) | (((h >> 6) & 3) << 4)) - 32;
                int s = sc0 + l / 16;
                o[l] = d * (sbyte)b[s] * q1;
                o[l + 32] = d * (sbyte)b[s + 2] * q2;
                o[l + 64] = d * (sbyte)b[s + 4] * q3;
                o[l + 96] = d * (sbyte)b[s + 6] * q4;
            }
        }
    }

    /// <summary>Dequantizes one row of super-blocks into <paramref name="dst"/> (its columns, a multiple of 256).</summary>
    public static void DequantizeRow(ReadOnlySpan<byte> src, Span<float> dst, KQuantType t)
    {
        int bb = BlockBytes(t);
        for (int i = 0; i < dst.Length / SuperBlock; i++)
            DequantizeBlock(src.Slice(i * bb, bb), dst.Slice(i * SuperBlock, SuperBlock), t);
    }

    /// <summary>Why a row could not be converted: the super-block at fault and what is wrong with it.</summary>
    public readonly record struct RowProblem(int Block, string Reason);

    /// <summary>
    /// Converts one row of super-blocks into 32-weight blocks of <paramref name="target"/> (its row bytes): the
    /// exact values, quantized with llama.cpp's reference formulas (<see cref="BlockQuantizer"/>). Returns null, or
    /// the first super-block whose scales are not finite or whose values overflow the target's fp16 scale.
    /// </summary>
    public static RowProblem? ConvertRow(ReadOnlySpan<byte> src, Span<byte> dst, KQuantType t, QuantizationFormat target)
    {
        int bb = BlockBytes(t), tb = QuantizationFormats.BlockBytes(target);
        int perSuper = SuperBlock / QuantizationFormats.BlockSize;
        Span<float> values = stackalloc float[SuperBlock];
        int blocks = src.Length / bb;
        for (int i = 0; i < blocks; i++)
        {
            var block = src.Slice(i * bb, bb);
            if (!ScalesFinite(block, t)) return new RowProblem(i, "a NaN or infinite fp16 scale");
            DequantizeBlock(block, values, t);
            var o = dst.Slice(i * perSuper * tb, perSuper * tb);
            BlockQuantizer.QuantizeRow(values, o, target);
            for (int k = 0; k < perSuper; k++)
                if (!FiniteHalf(o, k * tb))
                    return new RowProblem(i, $"values too large for {QuantizationFormats.Name(target)}'s fp16 scale");
        }
        return null;
    }
}
