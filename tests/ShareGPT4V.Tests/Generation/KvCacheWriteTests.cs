using ShareGPT4V.Generation;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace ShareGPT4V.Tests.Engine;

/// <summary>The decode step's direct copy into the KV cache against the general (libtorch) write.</summary>
public sealed class KvCacheWriteTests
{
    [Fact]
    public void OnePositionCopiesLandWhereTheGeneralWritePutsThem()
    {
        using var scope = NewDisposeScope();
        using var fast = new KvCache(2, 4, 3, 10, 8, ScalarType.Float32, torch.CPU);
        using var general = new KvCache(2, 4, 3, 10, 8, ScalarType.Float32, torch.CPU);
        var rows = new SlotRows(new[] { 2, 0, 3 }, new long[] { 9, 0, 4 });
        var k = torch.randn(new long[] { 3, 3, 1, 8 }, generator: new Generator(1));
        var v = torch.randn(new long[] { 3, 1, 3, 8 }, generator: new Generator(2)).transpose(1, 2); // as the attention makes it
        fast.WriteSlots(1, rows, k, v);
        // The general write, forced by a non-contiguous k (every other element of a wider tensor).
        var kWide = torch.zeros(new long[] { 3, 3, 1, 16 });
        kWide.narrow(3, 0, 8).copy_(k);
        var kStrided = kWide.narrow(3, 0, 8);
        Assert.False(kStrided.is_contiguous());
        general.WriteSlots(1, rows, kStrided, v);
        var (fk, fv) = fast.Buffers(1);
        var (gk, gv) = general.Buffers(1);
        Assert.Equal(gk.data<float>().ToArray(), fk.data<float>().ToArray());
        Assert.Equal(gv.data<float>().ToArray(), fv.data<float>().ToArray());
        Assert.Equal(k[0, 1, 0].data<float>().ToArray(), fk[2, 1, 9].data<float>().ToArray());
        Assert.Equal(0f, fast.Buffers(0).Keys.abs().sum().item<float>()); // other layers untouched
        // A position past the cache is refused before anything is written.
        Assert.Throws<PromptException>(() => fast.WriteSlots(0, new SlotRows(new[] { 1 }, new long[] { 10 }), k.narrow(0, 0, 1), v.narrow(0, 0, 1)));
        Assert.Equal(0f, fast.Buffers(0).Keys.abs().sum().item<float>());
    }

    [Fact]
    public void ABfloat16CacheHoldsLibtorchsRoundingAndTheDecodeKernelReadsItAsTheFloat32KernelReadsTheRoundedValues()
    {
        using var scope = NewDisposeScope();
        const int heads = 4, kvHeads = 2, d = 64, positions = 37;
        using var narrow = new KvCache(1, 2, kvHeads, 40, d, ScalarType.BFloat16, torch.CPU);
        using var wide = new KvCache(1, 2, kvHeads, 40, d, ScalarType.Float32, torch.CPU);
        var gen = new Generator(5);
        // Positions one at a time, as decode steps write them (slot 1), and the same values rounded into a float32 cache.
        for (int p = 0; p < positions; p++)
        {
            var k = torch.randn(new long[] { 1, kvHeads, 1, d }, generator: gen).mul(3);
            var v = torch.randn(new long[] { 1, kvHeads, 1, d }, generator: gen);
            var rows = new SlotRows(new[] { 1 }, new long[] { p });
            narrow.WriteSlots(0, rows, k, v);
            wide.WriteSlots(0, rows, k.to(ScalarType.BFloat16).to(ScalarType.Float32), v.to(ScalarType.BFloat16).to(ScalarType.Float32));
        }
        var (nk, nv) = narrow.Buffers(0);
        var (wk, wv) = wide.Buffers(0);
        Assert.Equal(ScalarType.BFloat16, nk.dtype);
        Assert.Equal(wk.data<float>().ToArray(), nk.to(ScalarType.Float32).data<float>().ToArray()); // libtorch's rounding, bit for bit
        Assert.Equal(wv.data<float>().ToArray(), nv.to(ScalarType.Float32).data<float>().ToArray());
        // A continued prompt reads the slot back as float32: exactly the widened cache.
        var (kf, vf) = narrow.SlotAsFloat32(0, 1, positions);
        var (ks, vs) = narrow.Slot(0, 1, positions);
        Assert.Equal(new long[] { 1, kvHeads, positions, d }, kf.shape);
        Assert.Equal(ks.to(ScalarType.Float32).data<float>().ToArray(), kf.data<float>().ToArray());
        Assert.Equal(vs.to(ScalarType.Float32).data<float>().ToArray(), vf.data<float>().ToArray());
        var q = torch.randn(new long[] { 1, heads, 1, d }, generator: gen);
        Assert.True(ShareGPT4V.Modeling.DecodeAttention.Applies(q, nk, null));
        var fromBf16 = ShareGPT4V.Modeling.DecodeAttention.RunSlots(q, nk, nv, new[] { 1 }, new long[] { positions });
        var fromF32 = ShareGPT4V.Modeling.DecodeAttention.RunSlots(q, wk, wv, new[] { 1 }, new long[] { positions });
        Assert.Equal(fromF32.data<float>().ToArray(), fromBf16.data<float>().ToArray()); // widening is exact: the same sums
        // And both equal softmax(q·kᵀ/√d)·v over the rounded values (float64), within float32 rounding.
        var k64 = wk.narrow(0, 1, 1).narrow(2, 0, positions).to(ScalarType.Float64).repeat_interleave(heads / kvHeads, 1);
        var v64 = wv.narrow(0, 1, 1).narrow(2, 0, positions).to(ScalarType.Float64).repeat_interleave(heads / kvHeads, 1);
        var reference = torch.softmax(q.to(ScalarType.Float64).matmul(k64.transpose(2, 3)) / Math.Sqrt(d), -1).matmul(v64);
        Assert.True((fromBf16.to(ScalarType.Float64) - reference).abs().max().item<double>() < 1e-5);
    }
}
