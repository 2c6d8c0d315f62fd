using System.Runtime.InteropServices;
using ShareGPT4V.Checkpoints;
using ShareGPT4V.Modeling;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace ShareGPT4V.Tests.Modeling;

/// <summary>Q8_0 / Q4_0 quantization against llama.cpp's bytes and reference formulas.</summary>
public sealed class QuantizationTests
{
    private static readonly SafeTensorsFile Goldens = SafeTensorsFile.Open(Fixtures.Path("quant/quant_goldens.safetensors"));

    private static float[] Floats(string name) { using var t = Goldens.Load(name); return t.data<float>().ToArray(); }
    private static byte[] Bytes(string name) { using var t = Goldens.Load(name); return t.data<byte>().ToArray(); }
    private static long Columns(string name) => Goldens.GetInfo(name).Shape[1];

    public static TheoryData<string> Sets => new()
    {
        "llamacpp.token_embd", "llamacpp.blk.0.ffn_down", "llamacpp.blk.0.ffn_gate", "llamacpp.blk.0.attn_q", "adversarial",
    };

    [Theory]
    [MemberData(nameof(Sets))]
    public void QuantizedRowsAreLlamaCppsBytes(string set)
    {
        var x = Floats(set + ".f32");
        int cols = (int)Columns(set + ".f32");
        foreach (var format in new[] { QuantizationFormat.Q8_0, QuantizationFormat.Q4_0 })
        {
            var expected = Bytes(set + "." + QuantizationFormats.Name(format));
            int rowBytes = (int)QuantizationFormats.RowBytes(format, cols);
            var actual = new byte[expected.Length];
            for (int r = 0; r < x.Length / cols; r++)
                BlockQuantizer.QuantizeRow(x.AsSpan(r * cols, cols), actual.AsSpan(r * rowBytes, rowBytes), format);
            int first = Enumerable.Range(0, expected.Length).FirstOrDefault(i => expected[i] != actual[i], -1);
            Assert.True(first < 0, $"{set} {format}: byte {first} (row {first / Math.Max(1, rowBytes)}) differs");

            // The tensor-level quantizer (panels of float32) gives the same blocks.
            using var m = torch.tensor(x, new long[] { x.Length / cols, cols });
            using var q = QuantizedWeight.Quantize(m, format);
            Assert.Equal(expected, q.data<byte>().ToArray());
        }
    }

    [Fact]
    public void VectorQ8_0QuantizerEqualsTheScalarOne()
    {
        // Random rows, and rows whose x/d land on exact halves (k + 0.5)·d and just beside them, where rounding differs.
        var rng = new Random(20261207);
        const int cols = 64;
        var rows = new List<float[]>();
        for (int r = 0; r < 400; r++)
            rows.Add(Enumerable.Range(0, cols).Select(_ => (float)((rng.NextDouble() * 2 - 1) * Math.Pow(10, rng.Next(-6, 4)))).ToArray());
        for (int r = 0; r < 200; r++)
        {
            float d = (float)rng.NextDouble() * 0.1f + 1e-3f;
            rows.Add(Enumerable.Range(0, cols).Select(j => j % 32 == 0 ? 127 * d * (rng.Next(2) * 2 - 1)
                : (rng.Next(-127, 127) + 0.5f) * d * (1 + (rng.Next(3) - 1) * 1e-7f)).ToArray());
        }
        rows.Add(new float[cols]);
        rows.Add(Enumerable.Repeat(-0f, cols).ToArray());
        int rowBytes = (int)QuantizationFormats.RowBytes(QuantizationFormat.Q8_0, cols);
        foreach (var x in rows)
        {
            var vector = new byte[rowBytes];
            var scalar = new byte[rowBytes];
            BlockQuantizer.QuantizeRow(x, vector, QuantizationFormat.Q8_0);
            QuantKernels.ForceScalar = true;
            try { BlockQuantizer.QuantizeRow(x, scalar, QuantizationFormat.Q8_0); }
            finally { QuantKernels.ForceScalar = false; }
            Assert.Equal(scalar, vector);
        }
    }

    [Theory]
    [MemberData(nameof(Sets))]
    public void DequantizationIsScaleTimesValue(string set)
    {
        int cols = (int)Columns(set + ".f32");
        foreach (var format in new[] { QuantizationFormat.Q8_0, QuantizationFormat.Q4_0 })
        {
            var blocks = Bytes(set + "." + QuantizationFormats.Name(format));
            int bb = QuantizationFormats.BlockBytes(format), n = blocks.Length / bb;
            var expected = new float[n * 32];
            for (int b = 0; b < n; b++)
            {
                float d = (float)BitConverter.UInt16BitsToHalf(BitConverter.ToUInt16(blocks, b * bb));
                for (int j = 0; j < 32; j++)
                {
                    int q = format == QuantizationFormat.Q8_0 ? (sbyte)blocks[b * bb + 2 + j]
                        : (j < 16 ? blocks[b * bb + 2 + j] & 15 : blocks[b * bb + 2 + j - 16] >> 4) - 8;
                    expected[b * 32 + j] = d * q;
                }
            }
            using var w = new QuantizedWeight(torch.tensor(blocks, new long[] { n * 32 / cols, QuantizationFormats.RowBytes(format, cols) }), format, n * 32 / cols, cols);
            foreach (bool scalar in new[] { false, true })
            {
                QuantKernels.ForceScalar = scalar;
                try
                {
                    using var y = w.Dequantize();
                    AssertSameBits(expected, y.data<float>().ToArray(), $"{set} {format} scalar={scalar}");
                }
                finally { QuantKernels.ForceScalar = false; }
            }
        }
    }

    /// <summary>Every IEEE half as a block scale: vector, scalar and the formula agree bit for bit (NaN as NaN).</summary>
    [Fact]
    public void EveryHalfScaleDequantizesAlikeOnBothPaths()
    {
        foreach (var format in new[] { QuantizationFormat.Q8_0, QuantizationFormat.Q4_0 })
        {
            int bb = QuantizationFormats.BlockBytes(format);
            var blocks = new byte[65536 * bb];
            var rng = new Random(7);
            for (int s = 0; s < 65536; s++)
            {
                BitConverter.GetBytes((ushort)s).CopyTo(blocks, s * bb);
                for (int j = 2; j < bb; j++) blocks[s * bb + j] = (byte)rng.Next(256);
            }
            // Extremes in the first blocks: all -128 / 127 (Q8_0), all 0 / 15 nibbles (Q4_0).
            for (int j = 2; j < bb; j++) { blocks[j] = format == QuantizationFormat.Q8_0 ? (byte)0x80 : (byte)0x00; blocks[bb + j] = format == QuantizationFormat.Q8_0 ? (byte)0x7F : (byte)0xFF; }
            using var w = new QuantizedWeight(torch.tensor(blocks, new long[] { 65536, bb }), format, 65536, 32);
            using var vector = w.Dequantize();
            QuantKernels.ForceScalar = true;
            Tensor scalar;
            try { scalar = w.Dequantize(); } finally { QuantKernels.ForceScalar = false; }
            using (scalar)
            {
                var reference = new float[65536 * 32];
                for (int s = 0; s < 65536; s++)
                    BlockQuantizer.DequantizeRow(blocks.AsSpan(s * bb, bb), reference.AsSpan(s * 32, 32), format);
                AssertSameBits(reference, vector.data<float>().ToArray(), $"{format} vector");
                AssertSameBits(reference, scalar.data<float>().ToArray(), $"{format} scalar");
            }
        }
    }

    private static void AssertSameBits(float[] expected, float[] actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            if (BitConverter.SingleToInt32Bits(expected[i]) != BitConverter.SingleToInt32Bits(actual[i]) && !(float.IsNaN(expected[i]) && float.IsNaN(actual[i])))
                Assert.Fail($"{what}: element {i}: expected {expected[i]}, got {actual[i]}");
    }
}
