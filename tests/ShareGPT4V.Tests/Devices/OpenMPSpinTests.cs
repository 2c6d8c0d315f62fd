using ShareGPT4V.Devices;
using Xunit;

namespace ShareGPT4V.Tests.Devices;

/// <summary>When the library shortens libgomp's spin, and when it leaves the user's or an earlier libtorch's settings alone.</summary>
public class OpenMPSpinTests
{
    private const string Maps = "7f00-7f10 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n";

    [Fact]
    public void NothingSetAndLibTorchNotLoadedSetsTheSpinCount()
    {
        var (set, applied) = OpenMPSpin.Decide(_ => null, () => Maps);
        Assert.True(set);
        Assert.Equal("GOMP_SPINCOUNT=20000", applied);
    }

    [Theory]
    [InlineData("GOMP_SPINCOUNT", "300000")]
    [InlineData("OMP_WAIT_POLICY", "ACTIVE")]
    public void AUserSettingWins(string name, string value)
    {
        var (set, applied) = OpenMPSpin.Decide(n => n == name ? value : null, () => throw new InvalidOperationException("maps are not read"));
        Assert.False(set);
        Assert.Equal($"{name}={value} (environment)", applied);
    }

    [Fact]
    public void AnEmptyVariableCountsAsUnset()
    {
        Assert.True(OpenMPSpin.Decide(n => n == "OMP_WAIT_POLICY" ? "" : null, () => Maps).Set);
    }

    [Fact]
    public void ALibgompAlreadyLoadedIsLeftAsItIs()
    {
        var (set, applied) = OpenMPSpin.Decide(_ => null, () => Maps + "7f20-7f30 r-xp 00000000 08:01 2 /app/runtimes/linux-x64/native/libgomp-98b21ff3.so.1\n");
        Assert.False(set);
        Assert.Null(applied);
    }
}
