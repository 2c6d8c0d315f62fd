using ShareGPT4V.Language;
using ShareGPT4V.Modeling;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace ShareGPT4V.Tests.Language;

/// <summary>The one-loop RMSNorm (decode rows) and rotary embedding (float32 CPU) against libtorch's general path.</summary>
public sealed class DecodeFastPathTests
{
    [Fact]
    public void RmsNormOfDecodeRowsEqualsTheGeneralPathToTheLastBit()
    {
        using var scope = NewDisposeScope();
        var w = torch.randn(192, generator: new Generator(1));
        var weights = new GivenWeights(ScalarType.Float32) { ["n.weight"] = w.clone() }; // the module takes its tensor over
        using var norm = new RmsNorm("n", 192, 1e-5, weights);
        var x = torch.randn(new long[] { 3, 1, 192 }, generator: new Generator(2)).mul(7);
        Tensor general;
        using (torch.enable_grad()) general = norm.forward(x); // the fast path stays off while autograd records
        Tensor fast;
        using (torch.no_grad()) fast = norm.forward(x);
        // The sum of squares differs in order only (float64 here): at most one float32 ulp of the scale.
        double err = (fast - general).abs().max().item<float>() / general.abs().max().item<float>();
        Assert.True(err < 3e-7, $"largest difference {err:E2} of the largest |value|");
        // The formula itself, in float64.
        var x64 = x.to(ScalarType.Float64);
        var reference = x64 * torch.rsqrt(x64.pow(2).mean(new long[] { -1 }, keepdim: true) + 1e-5) * w.to(ScalarType.Float64);
        Assert.True((fast.to(ScalarType.Float64) - reference).abs().max().item<double>() / reference.abs().max().item<double>() < 3e-7);
    }

    [Fact]
    public void FusedRotaryEmbeddingEqualsRotateHalfExactly()
    {
        using var scope = NewDisposeScope();
        var gen = new Generator(3);
        // [B, T, H, D] transposed to [B, H, T, D] as the attention does: contiguous when T is 1.
        var x = torch.randn(new long[] { 2, 1, 6, 32 }, generator: gen).transpose(1, 2);
        var cos = torch.randn(new long[] { 2, 1, 32 }, generator: gen);
        var sin = torch.randn(new long[] { 2, 1, 32 }, generator: gen);
        var fast = RotaryEmbedding.Apply(x, cos, sin);
        var rotated = torch.cat(new[] { -x.narrow(-1, 16, 16), x.narrow(-1, 0, 16) }, -1);
        var expected = x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1);
        Assert.Equal(expected.shape, fast.shape);
        Assert.Equal(expected.contiguous().data<float>().ToArray(), fast.data<float>().ToArray());
        // Several positions from a transposed view, as a prefill's q: the same bits again.
        var x3 = torch.randn(new long[] { 1, 3, 6, 32 }, generator: gen).transpose(1, 2);
        var c3 = torch.randn(new long[] { 1, 3, 32 }, generator: gen);
        var s3 = torch.randn(new long[] { 1, 3, 32 }, generator: gen);
        var r3 = torch.cat(new[] { -x3.narrow(-1, 16, 16), x3.narrow(-1, 0, 16) }, -1);
        Assert.Equal((x3 * c3.unsqueeze(1) + r3 * s3.unsqueeze(1)).data<float>().ToArray(), RotaryEmbedding.Apply(x3, c3, s3).data<float>().ToArray());
    }
}
