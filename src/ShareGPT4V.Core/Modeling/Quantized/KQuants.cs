using System.Buffers.Binary;

namespace ShareGPT4V.Modeling;

/// <summary>The llama.cpp block types a GGUF file may store that a load converts (see <see cref="KQuants"/>).</summary>
internal enum GgufBlockType
{
    /// <summary>144-byte super-blocks of 256 weights: fp16 d and dmin, 12 bytes of packed 6-bit scales and mins for eight sub-blocks of 32, then 128 bytes of nibbles; w = d·sc·q − dmin·m.</summary>
    Q4_K,
    /// <summary>210-byte super-blocks of 256 weights: 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, 16 int8 scales (one per 16 weights), fp16 d; w = d·sc·(q − 32).</summary>
    Q6_K,
    /// <summary>
    /// 22-byte blocks of 32 weights: fp16 d, 4 bytes of high bits, 16 bytes of nibbles; w = d·(q − 16). Not a K-quant,
    /// but what llama.cpp's Q4_K_M writes instead of Q4_K for rows that are not whole 256-weight super-blocks.
    /// </summary>
    Q5_0,
}

/// <summary>
/// Reads llama.cpp's K-quant super-blocks (ggml-quants.c <c>dequantize_row_q4_K</c> / <c>dequantize_row_q6_K</c>) and
/// Q5_0 blocks (<c>dequantize_row_q5_0</c>), and converts them to the 32-weight block formats our kernels run.
/// Dequantization is exact: every product involved fits a float32 significand, so the values equal llama.cpp's and
/// gguf-py's bit for bit whatever the evaluation order. Q5_0 → Q8_0 is lossless (same d, q − 16 as the int8).
/// </summary>
internal static class KQuants
{
    /// <summary>Weights per K-quant super-block.</summary>
    public const int SuperBlock = 256;

    /// <summary>Weights per block of a type.</summary>
    public static int BlockWeights(GgufBlockType t) => t == GgufBlockType.Q5_0 ? 32 : SuperBlock;

    /// <summary>Bytes of one block (super-block for the K-quants).</summary>
    public static int BlockBytes(GgufBlockType t) => t switch
    {
        GgufBlockType.Q4_K => 144,
        GgufBlockType.Q6_K => 210,
        GgufBlockType.Q5_0 => 22,
        _ => throw new ArgumentOutOfRangeException(nameof(t)),
    };

    /// <summary>Bytes of one row of <paramref name="columns"/> weights (whole blocks).</summary>
    public static long RowBytes(GgufBlockType t, long columns) => columns / BlockWeights(t) * BlockBytes(t);

    private static float Half(ReadOnlySpan<byte> b, int at) => BlockQuantizer.HalfTable[BinaryPrimitives.ReadUInt16LittleEndian(b[at..])];

    private static bool FiniteHalf(ReadOnlySpan<byte> b, int at) => (BinaryPrimitives.ReadUInt16LittleEndian(b[at..]) & 0x7C00) != 0x7C00;

    /// <summary>
    /// Are the super-block's fp16 scales finite? llama.cpp's <c>ggml_validate_row_data</c> refuses NaN and infinite
    /// d (and dmin for Q4_K); a block that fails would dequantize to NaN or infinity.
    /// </summary>
    public static bool ScalesFinite(ReadOnlySpan<byte> block, GgufBlockType t) => t switch
    {
        GgufBlockType.Q4_K => FiniteHalf(block, 0) && FiniteHalf(block, 2),
        GgufBlockType.Q5_0 => FiniteHalf(block, 0),
        _ => FiniteHalf(block, 208),
    };

    /// <summary>Dequantizes one block into <paramref name="y"/> (<see cref="BlockWeights"/> values).</summary>
    public static void DequantizeBlock(ReadOnlySpan<byte> block, Span<float> y, GgufBlockType t)
    {
        if (t == GgufBlockType.Q4_K) DequantizeQ4K(block, y);
        else if (t == GgufBlockType.Q6_K) DequantizeQ6K(block, y);
        else
            for (int j = 0; j < 32; j++) y[j] = Half(block, 0) * Q5_0Value(block, j);
    }

    // Layout: d (2), qh (4, little-endian bit j = high bit of weight j), qs (16: weight j's low nibble in byte j % 16,
    // low half for j < 16, high half for j ≥ 16).
    private static int Q5_0Value(ReadOnlySpan<byte> b, int j)
    {
        uint qh = BinaryPrimitives.ReadUInt32LittleEndian(b[2..]);
        int low = j < 16 ? b[6 + j] & 0xF : b[6 + j - 16] >> 4;
        return (low | (int)((qh >> j) & 1) << 4) - 16;
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

    /// <summary>Dequantizes one row of blocks into <paramref name="dst"/> (its columns, whole blocks).</summary>
    public static void DequantizeRow(ReadOnlySpan<byte> src, Span<float> dst, GgufBlockType t)
    {
        int bb = BlockBytes(t), bw = BlockWeights(t);
        for (int i = 0; i < dst.Length / bw; i++)
            DequantizeBlock(src.Slice(i * bb, bb), dst.Slice(i * bw, bw), t);
    }

    /// <summary>Why a row could not be converted: the super-block at fault and what is wrong with it.</summary>
    public readonly record struct RowProblem(int Block, string Reason);

    /// <summary>
    /// Converts one row of super-blocks into 32-weight blocks of <paramref name="target"/> (its row bytes): the
    /// exact values, quantized with llama.cpp's reference formulas (<see cref="BlockQuantizer"/>). Returns null, or
    /// the first super-block whose scales are not finite or whose values overflow the target's fp16 scale.
    /// </summary>
    public static RowProblem? ConvertRow(ReadOnlySpan<byte> src, Span<byte> dst, GgufBlockType t, QuantizationFormat target)
    {
        int bb = BlockBytes(t), tb = QuantizationFormats.BlockBytes(target), bw = BlockWeights(t);
        int perSuper = bw / QuantizationFormats.BlockSize;
        Span<float> values = stackalloc float[bw];
        int blocks = src.Length / bb;
        for (int i = 0; i < blocks; i++)
        {
            var block = src.Slice(i * bb, bb);
            if (!ScalesFinite(block, t)) return new RowProblem(i, "a NaN or infinite fp16 scale");
            if (t == GgufBlockType.Q5_0 && target == QuantizationFormat.Q8_0)
            {
                // Lossless: the same scale, and q − 16 fits an int8.
                var o8 = dst.Slice(i * tb, tb);
                o8[0] = block[0];
                o8[1] = block[1];
                for (int j = 0; j < 32; j++) o8[2 + j] = (byte)(sbyte)Q5_0Value(block, j);
                continue;
            }
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
