using ShareGPT4V.Checkpoints;
using TorchSharp;
using Xunit;

namespace ShareGPT4V.Tests.Checkpoints;

public class SafeTensorsQuickTests
{
    [Fact]
    public void ReadsEveryDtypeOfTheDtypeFixture()
    {
        using var f = SafeTensorsFile.Open(Fixtures.Path("oracle/dtype_bin/dtype.safetensors"));
        Assert.Contains("bf16", f.Names);
        using var t = f.Load("fp32", torch.ScalarType.Float32);
        Assert.True(t.numel() > 0);
        foreach (var n in f.Names)
        {
            using var x = f.Load(n);
            Assert.Equal(f.GetInfo(n).Shape, x.shape);
        }
    }
}
