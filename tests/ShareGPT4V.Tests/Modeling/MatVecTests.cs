using ShareGPT4V.Modeling;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace ShareGPT4V.Tests.Modeling;

/// <summary>The decode kernel against libtorch's linear, in float64 as the reference.</summary>
public class MatVecTests
{
    private static Tensor Reference(Tensor x, Tensor w, Tensor? b) =>
        nn.functional.linear(x.to(ScalarType.Float64), w.to(ScalarType.Float64), b?.to(ScalarType.Float64));

    [Theory]
    [InlineData(1, 37, 23, false)]   // sizes that are not multiples of the vector width or the row blocks
    [InlineData(1, 2048, 300, true)]
    [InlineData(3, 64, 17, true)]
    [InlineData(8, 129, 65, false)]
    public void Float32MatchesReference(int rows, int inFeatures, int outFeatures, bool bias)
    {
        using var scope = NewDisposeScope();
        using var gen = torch.manual_seed(7);
        var x = torch.randn(rows, inFeatures);
        var w = torch.randn(outFeatures, inFeatures);
        var b = bias ? torch.randn(outFeatures) : null;
        Assert.True(MatVec.Applies(x, w, b));
        var y = MatVec.Run(x, new[] { (w, b) }, threads: 2)[0];
        Assert.Equal(new long[] { rows, outFeatures }, y.shape);
        var err = (y.to(ScalarType.Float64) - Reference(x, w, b)).abs().max().item<double>();
        Assert.True(err < 1e-4 * Math.Sqrt(inFeatures), $"max error {err}");
    }

    /// <summary>
    /// Continuous batching relies on this: a row computed in a step of several rows is bit-identical to the same row
    /// computed alone.
    /// </summary>
    [Theory]
    [InlineData(2, 37, 23, true, ScalarType.Float32)]
    [InlineData(5, 129, 65, false, ScalarType.Float32)]
    [InlineData(8, 2048, 64, true, ScalarType.Float32)]
    [InlineData(3, 37, 23, true, ScalarType.BFloat16)]   // paired rows, then one alone; a tail past the vector width
    [InlineData(8, 2048, 66, false, ScalarType.BFloat16)]
    [InlineData(7, 130, 65, true, ScalarType.Float16)]
    public void EveryRowOfAStepEqualsTheRowComputedAloneBitForBit(int rows, int inFeatures, int outFeatures, bool bias, ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        using var gen = torch.manual_seed(11);
        var x = torch.randn(rows, inFeatures);
        var w = torch.randn(outFeatures, inFeatures).to(dtype);
        var b = bias ? torch.randn(outFeatures) : null;
        var together = MatVec.Run(x, new[] { (w, b) }, threads: 2)[0];
        for (int m = 0; m < rows; m++)
        {
            var alone = MatVec.Run(x.narrow(0, m, 1).contiguous(), new[] { (w, b) }, threads: 2)[0];
            Assert.True(together.narrow(0, m, 1).contiguous().data<float>().ToArray().SequenceEqual(alone.data<float>().ToArray()), $"row {m} differs");
        }
        // The two-rows-per-load kernel and the one-row kernel give the same bits.
        MatVec.PairRows = false;
        try
        {
            var unpaired = MatVec.Run(x, new[] { (w, b) }, threads: 2)[0];
            Assert.True(together.data<float>().ToArray().SequenceEqual(unpaired.data<float>().ToArray()), "paired and unpaired kernels differ");
        }
        finally { MatVec.PairRows = true; }
    }

    [Theory]
    [InlineData(ScalarType.BFloat16)]
    [InlineData(ScalarType.Float16)]
    public void HalfPrecisionWeightsAreWidenedExactly(ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        using var gen = torch.manual_seed(3);
        var x = torch.randn(2, 100);
        var w = torch.randn(41, 100).to(dtype);
        var b = torch.randn(41);
        var y = MatVec.Run(x, new[] { (w, (Tensor?)b) }, threads: 2)[0];
        var err = (y.to(ScalarType.Float64) - Reference(x, w, b)).abs().max().item<double>();
        Assert.True(err < 1e-4, $"max error {err}");
    }

    /// <summary>Every one of the 65536 half-precision bit patterns goes through the vector conversion as libtorch converts it.</summary>
    [Theory]
    [InlineData(ScalarType.BFloat16)]
    [InlineData(ScalarType.Float16)]
    public void EveryHalfPrecisionValueConverts(ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        // Row r holds bit pattern r in column 0 and zeros elsewhere; x = e0, so y[r] is the widened value itself.
        var weights = torch.zeros(65536, 16, dtype);
        var raw = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(weights.bytes);
        for (int r = 0; r < 65536; r++) raw[r * 16] = (ushort)r;
        var x = torch.zeros(1, 16);
        x[0, 0] = 1f;
        var y = MatVec.Run(x, new[] { (weights, (Tensor?)null) }, threads: 2)[0].data<float>().ToArray();
        var expected = weights[TensorIndex.Colon, 0].to(ScalarType.Float32).data<float>().ToArray();
        for (int i = 0; i < expected.Length; i++)
        {
            if (float.IsNaN(expected[i])) Assert.True(float.IsNaN(y[i]), $"pattern {i:X4}: expected NaN, got {y[i]}");
            else Assert.True(expected[i] == y[i], $"pattern {i:X4}: expected {expected[i]:R}, got {y[i]:R}");
        }
    }

    [Fact]
    public void ResultsDoNotDependOnTheThreadCount()
    {
        using var scope = NewDisposeScope();
        using var gen = torch.manual_seed(11);
        var x = torch.randn(1, 512);
        var w = torch.randn(1000, 512);
        var one = MatVec.Run(x, new[] { (w, (Tensor?)null) }, threads: 1)[0];
        var three = MatVec.Run(x, new[] { (w, (Tensor?)null) }, threads: 3)[0];
        Assert.True(one.eq(three).all().item<bool>());
    }

    [Fact]
    public void FusedLayersEqualSeparateOnes()
    {
        using var scope = NewDisposeScope();
        using var gen = torch.manual_seed(5);
        var x = torch.randn(1, 1, 96);
        using var q = Linear.FromTensors(torch.randn(96, 96), null);
        using var k = Linear.FromTensors(torch.randn(32, 96), torch.randn(32));
        using var v = Linear.FromTensors(torch.randn(32, 96).to(ScalarType.BFloat16), null, ScalarType.Float32);
        var fused = Linear.ForwardMany(x, q, k, v);
        Assert.Equal(new long[] { 1, 1, 32 }, fused[2].shape);
        var separate = new[] { q.forward(x), k.forward(x), v.forward(x) };
        for (int i = 0; i < 3; i++) Assert.True(fused[i].eq(separate[i]).all().item<bool>(), $"output {i}");
    }

    [Fact]
    public void ManyRowsOverHalfPrecisionWeightsWidenSliceBySlice()
    {
        using var scope = NewDisposeScope();
        using var gen = torch.manual_seed(9);
        var x = torch.randn(20, 16);
        var w = torch.randn(300, 16).to(ScalarType.BFloat16);
        var b = torch.randn(300);
        // 64-row slices (the smallest) of a 300-row weight: five slices, the last one short.
        var y = Linear.Apply(x, w, b, widenedSliceBytes: 1);
        var expected = nn.functional.linear(x, w.to(ScalarType.Float32), b);
        Assert.Equal(expected.shape, y.shape);
        Assert.True(y.eq(expected).all().item<bool>());
    }

    [Fact]
    public void InputsItDoesNotHandleFallBackToLibtorch()
    {
        using var scope = NewDisposeScope();
        var w = torch.randn(8, 16);
        Assert.False(MatVec.Applies(torch.randn(9, 16), w, null));                         // more rows than a decode step
        Assert.False(MatVec.Applies(torch.randn(1, 16, ScalarType.Float64), w, null));     // float64 activations
        Assert.False(MatVec.Applies(torch.randn(1, 8), torch.randn(16, 8).t(), null));     // non-contiguous weight
        Assert.False(MatVec.Applies(torch.randn(1, 16), w, torch.randn(8, ScalarType.Float64)));
        // Linear.forward gives the same answer either way.
        using var linear = Linear.FromTensors(torch.randn(8, 16).to(ScalarType.BFloat16), null, ScalarType.Float32);
        var many = torch.randn(20, 16);
        var expected = nn.functional.linear(many, linear.Weight.to(ScalarType.Float32));
        Assert.True(linear.forward(many).allclose(expected));
    }
}
