using ShareGPT4V.Modeling;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace ShareGPT4V.Tests.Modeling;

/// <summary>The decode-step attention kernel against libtorch's scaled_dot_product_attention.</summary>
public class DecodeAttentionTests
{
    [Theory]
    [InlineData(1, 8, 8, 16, 1)]     // multi-head
    [InlineData(2, 8, 2, 64, 37)]    // grouped-query, batch of two
    [InlineData(1, 32, 4, 64, 700)]  // the benchmark model's heads at a realistic length
    [InlineData(2, 16, 4, 128, 50)]  // 7B's head size: two 64-column chunks
    public void MatchesScaledDotProductAttention(int batch, int heads, int kvHeads, int headDim, int length)
    {
        using var scope = NewDisposeScope();
        using var gen = torch.manual_seed(length);
        long maxSeq = length + 5;
        var keys = torch.randn(batch + 1, kvHeads, maxSeq, headDim);   // a cache larger than what is used
        var values = torch.randn(batch + 1, kvHeads, maxSeq, headDim);
        var q = torch.randn(batch, heads, 1, headDim);
        // Row 1 (if any) is left-padded: its first 5 positions are masked out, as the model's additive mask does.
        var mask = torch.zeros(batch, length);
        if (batch > 1) mask[1, TensorIndex.Slice(0, 5)] = float.MinValue;

        var got = DecodeAttention.Run(q, keys, values, length, batch > 1 ? mask : null);

        int groups = heads / kvHeads;
        var k = keys.narrow(0, 0, batch).narrow(2, 0, length).repeat_interleave(groups, 1);
        var v = values.narrow(0, 0, batch).narrow(2, 0, length).repeat_interleave(groups, 1);
        var expected = nn.functional.scaled_dot_product_attention(q, k, v, batch > 1 ? mask.reshape(batch, 1, 1, length) : null);
        Assert.Equal(expected.shape, got.shape);
        double err = (expected - got).abs().max().item<float>();
        Assert.True(err < 1e-5, $"max error {err}");
    }

    /// <summary>The vector exp used for softmax, over its whole useful range, against MathF.Exp.</summary>
    [Fact]
    public unsafe void TheRegisterWeightedSumEqualsOneAxpyPerKeyBitForBit()
    {
        var rng = new Random(5);
        const int d = 128, length = 33;
        var p = Enumerable.Range(0, length).Select(_ => (float)rng.NextDouble()).ToArray();
        var v = Enumerable.Range(0, length * d).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var viaAxpy = new float[d];
        var viaRegisters = new float[d];
        const float inv = 0.37f;
        fixed (float* pp = p)
        fixed (float* vp = v)
        fixed (float* a = viaAxpy)
        fixed (float* r = viaRegisters)
        {
            for (int s = 0; s < length; s++) DecodeAttention.Axpy(pp[s] * inv, vp + s * d, a, d);
            DecodeAttention.WeightedSum(pp, inv, vp, d, length, r);
        }
        Assert.Equal(viaAxpy, viaRegisters);
    }

    [Fact]
    public void VectorExpIsWithinTwoUlpOfMathF()
    {
        var x = Enumerable.Range(0, 200_000).Select(i => -90f + i * (90f / 200_000)).Append(0f).Append(-1e-30f).Append(float.NegativeInfinity).ToArray();
        var y = DecodeAttention.ExpForTest(x);
        for (int i = 0; i < x.Length; i++)
        {
            float expected = MathF.Exp(x[i]);
            if (x[i] < -87f) { Assert.True(y[i] <= 1.7e-38f, $"exp({x[i]}) = {y[i]}"); continue; }
            float ulp = MathF.BitIncrement(expected) - expected;
            Assert.True(Math.Abs(y[i] - expected) <= 2 * ulp, $"exp({x[i]:R}) = {y[i]:R}, expected {expected:R}");
        }
    }
}
