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
}
