using System.Runtime.Intrinsics;
using ShareGPT4V.Modeling;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;
using Linear = ShareGPT4V.Modeling.Linear;

namespace ShareGPT4V.Tests.Modeling;

/// <summary>The interleaved decode layout: the same blocks as the row layout, and its kernels against exact references.</summary>
public sealed class InterleavedBlocksTests
{
    private static byte[] RowLayout(QuantizedWeight w)
    {
        var bytes = new byte[w.Rows * w.RowBytes];
        unsafe
        {
            fixed (byte* p = bytes) w.CopyRows(0, w.Rows, p);
        }
        return bytes;
    }

    [Fact]
    public void HalfToSingleEqualsTheRuntimesConversionForEveryPattern()
    {
        if (!QuantKernels.VectorSupported) return; // the vector conversion exists only there; the scalar paths use the table
        var halves = new ushort[8];
        for (int start = 0; start < 65536; start += 8)
        {
            for (int j = 0; j < 8; j++) halves[j] = (ushort)(start + j);
            var got = InterleavedBlocks.HalfToSingle(Vector128.Create(halves));
            for (int j = 0; j < 8; j++)
            {
                float expected = (float)BitConverter.UInt16BitsToHalf(halves[j]);
                if (float.IsNaN(expected)) Assert.True(float.IsNaN(got[j]), $"0x{halves[j]:X4}");
                else Assert.True(BitConverter.SingleToUInt32Bits(expected) == BitConverter.SingleToUInt32Bits(got[j]),
                    $"0x{halves[j]:X4}: {got[j]} instead of {expected}");
            }
        }
    }

    [Theory]
    [InlineData(QuantizationFormat.Q8_0)]
    [InlineData(QuantizationFormat.Q4_0)]
    public void InterleavingKeepsEveryBlockAndEveryRowReadsBack(QuantizationFormat format)
    {
        using var scope = NewDisposeScope();
        var rows = QuantKernelTests.Random(format, 40, 96, 7, adversarial: true);
        using var interleaved = rows.ToInterleaved();
        Assert.True(interleaved.Interleaved);
        Assert.Equal(rows.shape, interleaved.shape);
        Assert.NotEqual(rows.data<byte>().ToArray(), interleaved.data<byte>().ToArray());
        Assert.Equal(rows.data<byte>().ToArray(), RowLayout(interleaved));
        // Dequantizing (whole, some rows, an embedding lookup) reads the same weights from either layout.
        Assert.Equal(rows.Dequantize().data<float>().ToArray(), interleaved.Dequantize().data<float>().ToArray());
        Assert.Equal(rows.DequantizeRows(13, 9).data<float>().ToArray(), interleaved.DequantizeRows(13, 9).data<float>().ToArray());
        var ids = torch.tensor(new long[] { 39, 0, 17 });
        Assert.Equal(rows.Lookup(ids).data<float>().ToArray(), interleaved.Lookup(ids).data<float>().ToArray());
        // Quantizing straight into the layout gives the same bytes as quantizing and then interleaving.
        var matrix = torch.randn(new long[] { 48, 96 }, generator: new Generator(2));
        using var direct = QuantizedWeight.Quantize(matrix, format, interleaved: true);
        using var viaRows = QuantizedWeight.Quantize(matrix, format).ToInterleaved();
        Assert.Equal(viaRows.data<byte>().ToArray(), direct.data<byte>().ToArray());
    }

    [Fact]
    public void RowsOutsideWholeGroupsAreRefused()
    {
        using var scope = NewDisposeScope();
        Assert.Throws<ArgumentException>(() => QuantizedWeight.Quantize(torch.randn(12, 32), QuantizationFormat.Q8_0, interleaved: true));
        Assert.Throws<ArgumentException>(() => QuantKernelTests.Random(QuantizationFormat.Q4_0, 12, 32, 1).ToInterleaved());
        Assert.Throws<ArgumentException>(() => new QuantizedWeight(torch.zeros(new long[] { 4, 34 }, ScalarType.Byte), QuantizationFormat.Q8_0, 4, 32, interleaved: true));
    }

    [Theory]
    [MemberData(nameof(QuantInt8KernelTests.Cases), MemberType = typeof(QuantInt8KernelTests))]
    public void Int8DotsOnInterleavedBlocksEqualTheExactReference(QuantizationFormat format, int xRows, bool adversarial)
    {
        using var scope = NewDisposeScope();
        // 56 rows: three 16-row job blocks and a half one (seven groups of eight), with a bias.
        var rowLayout = adversarial ? QuantKernelTests.Random(format, 56, 128, 5, adversarial: true)
                                    : QuantizedWeight.Quantize(torch.randn(56, 128, generator: new Generator(5)), format);
        using var w = rowLayout.ToInterleaved();
        var bias = torch.randn(56, generator: new Generator(6));
        var x = torch.randn(xRows, 128, generator: new Generator(4));
        if (adversarial) x[0, TensorIndex.Slice(32, 64)] = torch.zeros(32); // an all-zero activation block (scale 0)
        // x rounded to Q8_0 blocks by llama.cpp's formula, then an exact float64 matmul.
        var xr = QuantInt8KernelTests.Q8Rounded(x);
        var int8Reference = torch.nn.functional.linear(xr.to(ScalarType.Float64), w.Dequantize().to(ScalarType.Float64), bias.to(ScalarType.Float64)).to(ScalarType.Float32);
        var floatReference = torch.nn.functional.linear(x.to(ScalarType.Float64), w.Dequantize().to(ScalarType.Float64), bias.to(ScalarType.Float64)).to(ScalarType.Float32);
        bool saved = QuantKernels.Int8Activations;
        try
        {
            foreach (bool int8 in new[] { true, false })
                foreach (bool scalar in new[] { false, true })
                {
                    QuantKernels.Int8Activations = int8;
                    QuantKernels.ForceScalar = scalar;
                    Assert.True(MatVec.Applies(x, w, bias));
                    var y = Linear.Apply(x, w, bias);
                    var reference = int8 ? int8Reference : floatReference;
                    double err = (y - reference).abs().max().item<float>() / reference.abs().max().clamp_min(1e-30).item<float>();
                    Assert.True(err < 1e-5, $"int8={int8} scalar={scalar}: error {err:E2}");
                    // The same product from the row layout (the kernels sum in another order: close, not equal).
                    var fromRows = Linear.Apply(x, rowLayout, bias);
                    double diff = (y - fromRows).abs().max().item<float>() / reference.abs().max().clamp_min(1e-30).item<float>();
                    Assert.True(diff < 1e-5, $"int8={int8} scalar={scalar}: {diff:E2} from the row layout");
                }
            // Fused with a row-layout weight of the other format over the same input: each part as it is alone.
            QuantKernels.Int8Activations = true;
            QuantKernels.ForceScalar = false;
            var other = QuantKernelTests.Random(format == QuantizationFormat.Q8_0 ? QuantizationFormat.Q4_0 : QuantizationFormat.Q8_0, 9, 128, 3);
            var both = MatVec.Run(x, new (Tensor, Tensor?)[] { (w, bias), (other, null) });
            Assert.Equal(Linear.Apply(x, w, bias).data<float>().ToArray(), both[0].data<float>().ToArray());
            Assert.Equal(Linear.Apply(x, other, null).data<float>().ToArray(), both[1].data<float>().ToArray());
        }
        finally
        {
            QuantKernels.Int8Activations = saved;
            QuantKernels.ForceScalar = false;
        }
    }

    [Theory]
    [InlineData(QuantizationFormat.Q8_0, false)]
    [InlineData(QuantizationFormat.Q4_0, false)]
    [InlineData(QuantizationFormat.Q8_0, true)]
    public void GemmPanelsOfInterleavedBlocksEqualTheRowLayoutsExactly(QuantizationFormat format, bool bf16)
    {
        using var scope = NewDisposeScope();
        var rows = QuantKernelTests.Random(format, 304, 96, 21);
        using var w = rows.ToInterleaved();
        var x = torch.randn(2, 17, 96, generator: new Generator(9)); // more rows than the mat-vec kernel takes
        bool saved = QuantKernels.Bf16Gemm;
        QuantKernels.Bf16Gemm = bf16;
        try
        {
            Assert.False(MatVec.Applies(x, w, null));
            // Panels of 64 rows: four whole ones and a short last one.
            var expected = Linear.Apply(x, rows, null, widenedSliceBytes: 64 * 96 * 4);
            Assert.Equal(expected.data<float>().ToArray(), Linear.Apply(x, w, null, widenedSliceBytes: 64 * 96 * 4).data<float>().ToArray());
        }
        finally { QuantKernels.Bf16Gemm = saved; }
    }

    [Fact]
    public void ThePanelwiseGatedProductEqualsTheTwoGemmsAndSiluBitForBit()
    {
        using var scope = NewDisposeScope();
        using var gate = Linear.FromTensors(QuantizedWeight.Quantize(torch.randn(new long[] { 320, 96 }, generator: new Generator(1)), QuantizationFormat.Q4_0, interleaved: true), null);
        using var up = Linear.FromTensors(QuantizedWeight.Quantize(torch.randn(new long[] { 320, 96 }, generator: new Generator(2)), QuantizationFormat.Q4_0, interleaved: true), null);
        var x = torch.randn(new long[] { 1, 23, 96 }, generator: new Generator(3));
        bool saved = QuantKernels.Bf16Gemm;
        try
        {
            QuantKernels.Bf16Gemm = true;
            // Panels of 64 rows: five of them, as the general path cuts them.
            var fused = Linear.GatedProduct(x, gate, up, widenedSliceBytes: 64 * 96 * 4);
            Assert.NotNull(fused);
            Assert.Equal(ScalarType.BFloat16, fused!.dtype);
            var general = (torch.nn.functional.silu(Linear.Apply(x, gate.Weight, null, widenedSliceBytes: 64 * 96 * 4))
                           * Linear.Apply(x, up.Weight, null, widenedSliceBytes: 64 * 96 * 4)).to(ScalarType.BFloat16);
            Assert.Equal(general.shape, fused.shape);
            Assert.Equal(general.contiguous().bytes.ToArray(), fused.contiguous().bytes.ToArray()); // the same bits
            // A decode-sized input, or no bfloat16 GEMMs, takes the general path.
            Assert.Null(Linear.GatedProduct(x.narrow(1, 0, 1), gate, up));
            QuantKernels.Bf16Gemm = false;
            Assert.Null(Linear.GatedProduct(x, gate, up));
        }
        finally { QuantKernels.Bf16Gemm = saved; }
    }
}
