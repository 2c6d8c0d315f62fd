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
    public static TheoryData<QuantizationFormat, int, bool> Cases => new()
    {
        { QuantizationFormat.Q8_0, 1, false }, { QuantizationFormat.Q8_0, 3, true }, { QuantizationFormat.Q8_0, 8, false },
        { QuantizationFormat.Q4_0, 1, true }, { QuantizationFormat.Q4_0, 3, false }, { QuantizationFormat.Q4_0, 8, true },
    };

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
        var xq = new byte[xRows * 4 * 34];
        var xs = x.data<float>().ToArray();
        for (int r = 0; r < xRows; r++) BlockQuantizer.QuantizeRow(xs.AsSpan(r * 128, 128), xq.AsSpan(r * 4 * 34, 4 * 34), QuantizationFormat.Q8_0);
        var xr = new QuantizedWeight(torch.tensor(xq, new long[] { xRows, 4 * 34 }), QuantizationFormat.Q8_0, xRows, 128).Dequantize();
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
