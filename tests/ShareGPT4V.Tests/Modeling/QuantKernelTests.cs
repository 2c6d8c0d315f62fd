using ShareGPT4V.Modeling;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;
using Linear = ShareGPT4V.Modeling.Linear;

namespace ShareGPT4V.Tests.Modeling;

/// <summary>The quantized mat-vec and GEMM paths against dequantize-then-float32 matmuls, vector against scalar.</summary>
public sealed class QuantKernelTests
{
    internal static QuantizedWeight Random(QuantizationFormat format, long rows, long cols, int seed, bool adversarial = false)
    {
        var gen = new Random(seed);
        long rowBytes = QuantizationFormats.RowBytes(format, cols);
        var bytes = new byte[rows * rowBytes];
        gen.NextBytes(bytes);
        int bb = QuantizationFormats.BlockBytes(format);
        for (long b = 0; b < bytes.Length / bb; b++)
        {
            // Finite scales of every magnitude; adversarial blocks add zero scales and the extreme values.
            ushort d = (ushort)(gen.Next(0, 0x7BFF) | (gen.Next(2) << 15));
            if (!adversarial) d = (ushort)(0x2000 + gen.Next(0, 0x1C00) | (gen.Next(2) << 15)); // ~1e-4 .. 1
            else if (b % 7 == 0) d = 0;
            else if (b % 11 == 0) d = 0x7BFF; // largest finite half
            BitConverter.GetBytes(d).CopyTo(bytes, b * bb);
            if (adversarial && b % 5 == 0)
                for (int j = 2; j < bb; j++) bytes[b * bb + j] = format == QuantizationFormat.Q8_0 ? (byte)0x80 : (byte)0x00;
        }
        return new QuantizedWeight(torch.tensor(bytes, new[] { rows, rowBytes }), format, rows, cols);
    }

    private static void AssertClose(Tensor expected, Tensor actual, double rtol, string what)
    {
        Assert.Equal(expected.shape, actual.shape);
        using var scale = expected.abs().max().clamp_min(1e-30);
        double err = (expected - actual).abs().max().item<float>() / scale.item<float>();
        Assert.True(err <= rtol, $"{what}: max error {err:E2} of the largest |value| (allowed {rtol:E1})");
    }

    public static TheoryData<QuantizationFormat, int, bool> Cases => new()
    {
        { QuantizationFormat.Q8_0, 1, false }, { QuantizationFormat.Q8_0, 3, false }, { QuantizationFormat.Q8_0, 8, true },
        { QuantizationFormat.Q4_0, 1, false }, { QuantizationFormat.Q4_0, 5, true }, { QuantizationFormat.Q4_0, 8, false },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void MatVecMatchesTheDequantizedMatmulOnBothPaths(QuantizationFormat format, int xRows, bool adversarial)
    {
        using var scope = NewDisposeScope();
        // The widening path, which computes exactly what float32 does with the dequantized weights (the int8 path,
        // the default, rounds the activations and is tested against its own reference below).
        bool int8 = QuantKernels.Int8Activations;
        QuantKernels.Int8Activations = false;
        try { WideningMatVec(format, xRows, adversarial); }
        finally { QuantKernels.Int8Activations = int8; }
    }

    private static void WideningMatVec(QuantizationFormat format, int xRows, bool adversarial)
    {
        // 37 rows: whole groups of 4 and a remainder; 160 columns: 5 blocks.
        var w = Random(format, 37, 160, 11 + xRows, adversarial);
        var bias = torch.randn(37);
        var x = torch.randn(xRows, 160, generator: new Generator(5));
        var reference = torch.nn.functional.linear(x.to(ScalarType.Float64), w.Dequantize().to(ScalarType.Float64), bias.to(ScalarType.Float64)).to(ScalarType.Float32);
        Assert.True(MatVec.Applies(x, w, bias));
        var vector = Linear.Apply(x, w, bias);
        AssertClose(reference, vector, 1e-5, "vector");
        QuantKernels.ForceScalar = true;
        try { AssertClose(reference, Linear.Apply(x, w, bias), 1e-5, "scalar"); }
        finally { QuantKernels.ForceScalar = false; }
        // Fused: two quantized weights of different formats over one input.
        var w2 = Random(format == QuantizationFormat.Q8_0 ? QuantizationFormat.Q4_0 : QuantizationFormat.Q8_0, 9, 160, 3);
        var both = MatVec.Run(x, new (Tensor, Tensor?)[] { (w, bias), (w2, null) });
        AssertClose(vector, both[0], 0, "fused part 1");
        AssertClose(torch.nn.functional.linear(x, w2.Dequantize()), both[1], 1e-5, "fused part 2");
    }

    [Theory]
    [InlineData(QuantizationFormat.Q8_0)]
    [InlineData(QuantizationFormat.Q4_0)]
    public void GemmWidensPanelsAndMatchesTheDequantizedMatmul(QuantizationFormat format)
    {
        bool bf16 = QuantKernels.Bf16Gemm;
        QuantKernels.Bf16Gemm = false; // float32 panels; the bfloat16 ones are tested below
        try { Float32Panels(format); }
        finally { QuantKernels.Bf16Gemm = bf16; }
    }

    private static void Float32Panels(QuantizationFormat format)
    {
        using var scope = NewDisposeScope();
        var w = Random(format, 300, 96, 21);
        var x = torch.randn(2, 17, 96, generator: new Generator(9)); // more rows than the mat-vec kernel takes
        Assert.False(MatVec.Applies(x, w, null));
        var reference = torch.nn.functional.linear(x, w.Dequantize());
        // A small panel budget forces several panels (64 rows each) and a short last one.
        AssertClose(reference, Linear.Apply(x, w, null, widenedSliceBytes: 64 * 96 * 4), 1e-5, "panels");
        AssertClose(reference, Linear.Apply(x, w, null), 1e-5, "one panel");
        QuantKernels.ForceScalar = true;
        try { AssertClose(reference, Linear.Apply(x, w, null, widenedSliceBytes: 64 * 96 * 4), 1e-5, "scalar panels"); }
        finally { QuantKernels.ForceScalar = false; }
    }

    [Theory]
    [InlineData(QuantizationFormat.Q8_0)]
    [InlineData(QuantizationFormat.Q4_0)]
    public void Bf16GemmRoundsPanelsAndActivationsToBf16AndMatchesThatMatmul(QuantizationFormat format)
    {
        using var scope = NewDisposeScope();
        var w = Random(format, 300, 96, 22);
        var x = torch.randn(2, 17, 96, generator: new Generator(10));
        var bf = ScalarType.BFloat16;
        // The definition: the dequantized weights and x rounded to bfloat16, multiplied exactly (float64).
        var reference = torch.nn.functional.linear(x.to(bf).to(ScalarType.Float64), w.Dequantize().to(bf).to(ScalarType.Float64));
        bool saved = QuantKernels.Bf16Gemm;
        QuantKernels.Bf16Gemm = true;
        try
        {
            var y = Linear.Apply(x, w, null, widenedSliceBytes: 64 * 96 * 4);
            Assert.Equal(ScalarType.Float32, y.dtype);
            // The GEMM accumulates in float32 and writes bfloat16: one more rounding, 2^-8 of each output at most.
            var err = ((y.to(ScalarType.Float64) - reference).abs() / reference.abs().clamp_min(1e-3 * reference.abs().max().item<double>())).max().item<double>();
            Assert.True(err <= 1.0 / 128, $"relative error {err:E2}");
        }
        finally { QuantKernels.Bf16Gemm = saved; }
    }

    [Fact]
    public unsafe void Bf16RoundingEqualsLibtorchsOnBothPaths()
    {
        using var scope = NewDisposeScope();
        // Random values, exact ties (lowest mantissa half-way bits), values that round up into the next exponent.
        var values = torch.randn(4096, generator: new Generator(11)).data<float>().ToArray().ToList();
        foreach (uint bits in new uint[] { 0x3F808000, 0x3F818000, 0x3F7FFFFF, 0xBF808000, 0x7F7FFFFF, 0x00008000, 0x80000000 })
            values.Add(BitConverter.UInt32BitsToSingle(bits));
        while (values.Count % 16 != 0) values.Add(0.5f);
        var src = values.ToArray();
        var bytes = torch.tensor(src).to(ScalarType.BFloat16).bytes.ToArray();
        var expected = Enumerable.Range(0, src.Length).Select(i => BitConverter.ToUInt16(bytes, 2 * i)).ToArray();
        foreach (bool vector in new[] { true, false })
        {
            var got = new ushort[src.Length];
            fixed (float* s = src)
            fixed (ushort* d = got)
                QuantKernels.ToBFloat16(s, d, src.Length, vector && QuantKernels.VectorSupported);
            Assert.Equal(expected, got);
        }
    }

    [Fact]
    public void EmbeddingLookupDequantizesTheRowsAsked()
    {
        using var scope = NewDisposeScope();
        var w = Random(QuantizationFormat.Q4_0, 50, 64, 4);
        var ids = torch.tensor(new long[] { 3, 49, 0, 3 }, new long[] { 2, 2 });
        var rows = w.Lookup(ids);
        Assert.Equal(new long[] { 2, 2, 64 }, rows.shape);
        AssertClose(w.Dequantize().index_select(0, ids.reshape(-1)).reshape(2, 2, 64), rows, 0, "lookup");
        Assert.Throws<ArgumentOutOfRangeException>(() => w.Lookup(torch.tensor(new long[] { 50 })));
    }

    [Fact]
    public void BlocksOfTheWrongShapeAreRefused()
    {
        Assert.Throws<ArgumentException>(() => new QuantizedWeight(torch.zeros(new long[] { 4, 33 }, ScalarType.Byte), QuantizationFormat.Q8_0, 4, 32));
        Assert.Throws<ArgumentException>(() => new QuantizedWeight(torch.zeros(new long[] { 4, 34 }, ScalarType.Byte), QuantizationFormat.Q8_0, 4, 31));
        Assert.Throws<ArgumentException>(() => QuantizedWeight.Quantize(torch.zeros(4, 40), QuantizationFormat.Q4_0));
    }
}

/// <summary>The int8-dot decode path (activations as Q8_0 blocks, llama.cpp's scheme) against its exact reference.</summary>
public sealed class QuantInt8KernelTests
{
    [Fact]
    public unsafe void ActivationsQuantizeToTheSameBlocksOnBothPaths()
    {
        if (!QuantKernels.VectorSupported) return;
        // Random rows at several magnitudes, exact halves (ties round away from zero), a zero block, a lone spike.
        var x = torch.randn(new long[] { 3, 256 }, generator: new Generator(12)).data<float>().ToArray();
        for (int j = 0; j < 32; j++) x[32 + j] = (j - 16) * 0.5f; // scale 8/127: products land on and near halves
        for (int j = 0; j < 32; j++) x[64 + j] = 0;
        x[100] = 1e30f;
        for (int j = 256; j < 512; j++) x[j] *= 1e-6f;
        var blocks = x.Length / 32;
        var (q1, d1, s1) = (new sbyte[x.Length], new float[blocks], new int[blocks]);
        var (q2, d2, s2) = (new sbyte[x.Length], new float[blocks], new int[blocks]);
        fixed (float* xp = x)
        {
            fixed (sbyte* q = q1) fixed (float* d = d1) fixed (int* s = s1) QuantKernels.QuantizeActivations(xp, 3, 256, q, d, s);
            QuantKernels.ForceScalar = true;
            try { fixed (sbyte* q = q2) fixed (float* d = d2) fixed (int* s = s2) QuantKernels.QuantizeActivations(xp, 3, 256, q, d, s); }
            finally { QuantKernels.ForceScalar = false; }
        }
        Assert.Equal(q2, q1);
        Assert.Equal(d2, d1);
        Assert.Equal(s2, s1);
        Assert.Contains(q1, v => v == 127);
    }

    public static TheoryData<QuantizationFormat, int, bool> Cases => new()
    {
        { QuantizationFormat.Q8_0, 1, false }, { QuantizationFormat.Q8_0, 3, true }, { QuantizationFormat.Q8_0, 8, false },
        { QuantizationFormat.Q4_0, 1, true }, { QuantizationFormat.Q4_0, 3, false }, { QuantizationFormat.Q4_0, 8, true },
    };

    /// <summary>x [rows, columns] rounded to Q8_0 blocks by llama.cpp's formula and dequantized: what the int8 kernels multiply.</summary>
    internal static Tensor Q8Rounded(Tensor x)
    {
        long rows = x.shape[0], columns = x.shape[1], rowBytes = columns / 32 * 34;
        var xq = new byte[rows * rowBytes];
        var xs = x.data<float>().ToArray();
        for (long r = 0; r < rows; r++)
            BlockQuantizer.QuantizeRow(xs.AsSpan((int)(r * columns), (int)columns), xq.AsSpan((int)(r * rowBytes), (int)rowBytes), QuantizationFormat.Q8_0);
        return new QuantizedWeight(torch.tensor(xq, new[] { rows, rowBytes }), QuantizationFormat.Q8_0, rows, columns).Dequantize();
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Int8DotsEqualTheMatmulOfDequantizedWeightsAndQuantizedActivations(QuantizationFormat format, int xRows, bool adversarial)
    {
        using var scope = NewDisposeScope();
        // 45 rows: groups of four rows, the single-row tail, and rows of another thread's 16-row block.
        var w = adversarial ? QuantKernelTests.Random(format, 45, 128, 3, adversarial: true)
                            : QuantizedWeight.Quantize(torch.randn(45, 128, generator: new Generator(3)), format);
        var x = torch.randn(xRows, 128, generator: new Generator(4));
        if (adversarial) x[0, TensorIndex.Slice(32, 64)] = torch.zeros(32); // an all-zero activation block (scale 0)
        // Reference: x rounded to Q8_0 blocks by llama.cpp's formula, then an exact float64 matmul.
        var xr = Q8Rounded(x);
        var reference = torch.nn.functional.linear(xr.to(ScalarType.Float64), w.Dequantize().to(ScalarType.Float64)).to(ScalarType.Float32);
        bool saved = QuantKernels.Int8Activations;
        QuantKernels.Int8Activations = true;
        try
        {
            foreach (bool scalar in new[] { false, true })
            {
                QuantKernels.ForceScalar = scalar;
                var y = Linear.Apply(x, w, null);
                double err = (y - reference).abs().max().item<float>() / reference.abs().max().clamp_min(1e-30).item<float>();
                Assert.True(err < 1e-5, $"scalar={scalar}: error {err:E2}");
            }
        }
        finally
        {
            QuantKernels.Int8Activations = saved;
            QuantKernels.ForceScalar = false;
        }
    }
}
