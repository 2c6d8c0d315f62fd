using ShareGPT4V.Modeling;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;
using Linear = ShareGPT4V.Modeling.Linear;

namespace ShareGPT4V.Tests.Modeling;

/// <summary>bf16 autocast (training's <c>--dtype bf16</c>): products in bfloat16, float32 in and out, gradients to float32 weights.</summary>
public sealed class AutocastTests
{
    private static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    [Fact]
    public void ALinearLayerMultipliesInBf16AndItsGradientsReachTheFloat32Weight()
    {
        using var scope = NewDisposeScope();
        var gen = new Generator(7);
        var x = torch.randn(new long[] { 2, 5, 64 }, generator: gen).requires_grad_(true);
        var w = torch.randn(new long[] { 48, 64 }, generator: gen).requires_grad_(true);
        var b = torch.randn(new long[] { 48 }, generator: gen).requires_grad_(true);
        var g = torch.randn(new long[] { 2, 5, 48 }, generator: gen);

        Tensor y;
        using (Autocast.Enter(ScalarType.BFloat16)) y = Linear.Apply(x, w, b);
        Assert.Equal(ScalarType.Float32, y.dtype);
        y.backward(new[] { g });
        var (gx, gw, gb) = (x.grad!.clone(), w.grad!.clone(), b.grad!.clone());

        // The definition: the same product computed by hand in bfloat16, cast back.
        x.grad!.zero_(); w.grad!.zero_(); b.grad!.zero_();
        var expected = nn.functional.linear(x.to(ScalarType.BFloat16), w.to(ScalarType.BFloat16), b.to(ScalarType.BFloat16)).to(ScalarType.Float32);
        expected.backward(new[] { g });
        Assert.True(Same(y, expected), "forward differs from the bf16 product");
        Assert.Equal(ScalarType.Float32, w.grad!.dtype);
        Assert.True(Same(gx, x.grad!) && Same(gw, w.grad!) && Same(gb, b.grad!), "gradients differ from the bf16 product's");

        // Not float32 arithmetic, and outside the scope it is float32 again.
        var fp32 = nn.functional.linear(x, w, b);
        Assert.False(Same(y, fp32));
        Assert.True(Same(Linear.Apply(x, w, b), fp32));
    }

    [Fact]
    public void AttentionRunsInBf16WithTheMaskClampedNotTurnedIntoInfinity()
    {
        using var scope = NewDisposeScope();
        var gen = new Generator(8);
        var q = torch.randn(new long[] { 1, 2, 6, 16 }, generator: gen);
        var k = torch.randn(new long[] { 1, 2, 6, 16 }, generator: gen);
        var v = torch.randn(new long[] { 1, 2, 6, 16 }, generator: gen);
        // float32's lowest value on the upper triangle, as the model's additive masks hold it.
        var mask = torch.zeros(6, 6).masked_fill(torch.ones(6, 6, ScalarType.Bool).triu(1), float.MinValue).expand(1, 1, 6, 6);
        Tensor o;
        using (Autocast.Enter(ScalarType.BFloat16)) o = Autocast.Attention(q, k, v, mask);
        Assert.Equal(ScalarType.Float32, o.dtype);
        Assert.False(o.isnan().any().item<bool>());
        var bf = ScalarType.BFloat16;
        var expected = nn.functional.scaled_dot_product_attention(q.to(bf), k.to(bf), v.to(bf), mask.clamp_min(-3.3895313892515355e38).to(bf)).to(ScalarType.Float32);
        Assert.True(Same(o, expected));
        var causal = nn.functional.scaled_dot_product_attention(q, k, v, null, 0.0, true);
        Assert.True((o - causal).abs().max().item<float>() < 0.05f, "far from the float32 causal attention");
        Assert.True(Same(Autocast.Attention(q, k, v, mask), nn.functional.scaled_dot_product_attention(q, k, v, mask)), "outside the scope: float32");
    }
}
