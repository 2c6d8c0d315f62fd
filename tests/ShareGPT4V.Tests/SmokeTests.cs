using TorchSharp;
using Xunit;

namespace ShareGPT4V.Tests;

public class TorchRuntimeTests
{
    [Fact]
    public void LibTorchLoadsAndComputes()
    {
        using var a = torch.ones(2, 3);
        using var b = torch.ones(3, 4);
        using var c = torch.mm(a, b);
        Assert.Equal(3f, c[1, 2].ToSingle());
    }
}
