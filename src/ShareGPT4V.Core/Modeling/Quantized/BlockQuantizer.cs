using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace ShareGPT4V.Modeling;

/// <summary>
/// Quantizes rows into blocks and back with llama.cpp's reference formulas (ggml-quants.c
/// <c>quantize_row_q8_0_ref</c> / <c>quantize_row_q4_0_ref</c>), so a row quantized here is byte for byte what
/// llama.cpp's converter writes. Scalar code: used at load and as the reference the kernels are tested against.
/// </summary>
internal static class BlockQuantizer
{
    /// <summary>Every IEEE half as a float (the kernels look scales up here; 256 KiB, stays in cache).</summary>
    public static readonly float[] HalfTable = BuildHalfTable();

    private static float[] BuildHalfTable()
    {
        var t = new float[65536];
        for (int i = 0; i < t.Length; i++) t[i] = (float)BitConverter.UInt16BitsToHalf((ushort)i);
        return t;
    }

    public static ushort ToHalfBits(float f) => BitConverter.HalfToUInt16Bits((Half)f); // round to nearest even, as ggml

    /// <summary>Quantizes one row (length a multiple of 32) into <paramref name="dst"/> (its row bytes).</summary>
    public static void QuantizeRow(ReadOnlySpan<float> x, Span<byte> dst, QuantizationFormat format)
    {
        int bb = QuantizationFormats.BlockBytes(format);
        int blocks = x.Length / QuantizationFormats.BlockSize;
        if (blocks * QuantizationFormats.BlockSize != x.Length || dst.Length < blocks * bb)
            throw new ArgumentException("Row length must be a multiple of 32 and the output one row of blocks");
        for (int b = 0; b < blocks; b++)
        {
            var xs = x.Slice(b * 32, 32);
            var block = dst.Slice(b * bb, bb);
            if (format == QuantizationFormat.Q4_0) QuantizeQ4_0(xs, block);
            else if (Vector256.IsHardwareAccelerated && !QuantKernels.ForceScalar) QuantizeQ8_0Vector(xs, block);
            else QuantizeQ8_0(xs, block);
        }
    }

    private static void QuantizeQ8_0(ReadOnlySpan<float> x, Span<byte> block)
    {
        float amax = 0;
        foreach (var v in x) amax = MathF.Max(amax, MathF.Abs(v));
        float d = amax / 127f;
        float id = d != 0 ? 1f / d : 0f;
        BinaryPrimitives.WriteUInt16LittleEndian(block, ToHalfBits(d));
        for (int j = 0; j < 32; j++)
        {
            // roundf: halves away from zero
            float q = MathF.Round(x[j] * id, MidpointRounding.AwayFromZero);
            block[2 + j] = (byte)(sbyte)Math.Clamp(q, -128f, 127f);
        }
    }

    // The same arithmetic as QuantizeQ8_0, eight lanes at a time (it dominates the cost of converting K-quants at
    // load): the float product x·id, rounded half away from zero as roundf does, clamped to int8.
    private static void QuantizeQ8_0Vector(ReadOnlySpan<float> x, Span<byte> block)
    {
        var v0 = Vector256.Create(x[..8]);
        var v1 = Vector256.Create(x.Slice(8, 8));
        var v2 = Vector256.Create(x.Slice(16, 8));
        var v3 = Vector256.Create(x.Slice(24, 8));
        var m = Vector256.Max(Vector256.Max(Vector256.Abs(v0), Vector256.Abs(v1)), Vector256.Max(Vector256.Abs(v2), Vector256.Abs(v3)));
        var m4 = Vector128.Max(m.GetLower(), m.GetUpper());
        float amax = MathF.Max(MathF.Max(m4[0], m4[1]), MathF.Max(m4[2], m4[3]));
        float d = amax / 127f;
        float id = d != 0 ? 1f / d : 0f;
        BinaryPrimitives.WriteUInt16LittleEndian(block, ToHalfBits(d));
        var q01 = Vector256.Narrow(RoundToInt8(v0, id), RoundToInt8(v1, id));
        var q23 = Vector256.Narrow(RoundToInt8(v2, id), RoundToInt8(v3, id));
        Vector256.Narrow(q01, q23).AsByte().CopyTo(block.Slice(2, 32));
    }

    internal static Vector256<int> RoundToInt8(Vector256<float> x, float id)
    {
        var p = x * Vector256.Create(id);
        var a = Vector256.Abs(p);
        var t = Vector256.Floor(a);
        // a − t is exact; a fraction of one half or more rounds up (away from zero once the sign is back).
        t += Vector256.ConditionalSelect(Vector256.GreaterThanOrEqual(a - t, Vector256.Create(0.5f)), Vector256.Create(1f), Vector256<float>.Zero);
        var signed = Vector256.ConditionalSelect(Vector256.LessThan(p, Vector256<float>.Zero), -t, t);
        signed = Vector256.Min(Vector256.Max(signed, Vector256.Create(-128f)), Vector256.Create(127f));
        return Vector256.ConvertToInt32(signed);
    }

    private static void QuantizeQ4_0(ReadOnlySpan<float> x, Span<byte> block)
    {
        // The value of largest magnitude, sign kept (first one on ties), maps to -8.
        float amax = 0, max = 0;
        foreach (var v in x)
            if (amax < MathF.Abs(v)) { amax = MathF.Abs(v); max = v; }
        float d = max / -8f;
        float id = d != 0 ? 1f / d : 0f;
        BinaryPrimitives.WriteUInt16LittleEndian(block, ToHalfBits(d));
        for (int j = 0; j < 16; j++)
        {
            block[2 + j] = (byte)(Nibble(x[j], id) | (Nibble(x[j + 16], id) << 4));
        }
    }

    // llama.cpp computes x·id + 8.5f as a float with one rounding (a fused multiply-add) and truncates. The rounding
    // to float matters: a sum just below an integer can round up to it (gguf-py's reference does the same).
    private static int Nibble(float x, float id)
    {
        float v = MathF.FusedMultiplyAdd(x, id, 8.5f);
        if (!(v > 0)) return 0;
        return (int)MathF.Min(15f, MathF.Truncate(v));
    }

    /// <summary>Dequantizes one row of blocks into <paramref name="dst"/> (its columns).</summary>
    public static void DequantizeRow(ReadOnlySpan<byte> src, Span<float> dst, QuantizationFormat format)
    {
        int bb = QuantizationFormats.BlockBytes(format);
        int blocks = dst.Length / 32;
        for (int b = 0; b < blocks; b++)
        {
            var block = src.Slice(b * bb, bb);
            float d = HalfTable[BinaryPrimitives.ReadUInt16LittleEndian(block)];
            var o = dst.Slice(b * 32, 32);
            if (format == QuantizationFormat.Q8_0)
                for (int j = 0; j < 32; j++) o[j] = d * (sbyte)block[2 + j];
            else
                for (int j = 0; j < 16; j++)
                {
                    o[j] = d * ((block[2 + j] & 0x0F) - 8);
                    o[j + 16] = d * ((block[2 + j] >> 4) - 8);
                }
        }
    }
}
