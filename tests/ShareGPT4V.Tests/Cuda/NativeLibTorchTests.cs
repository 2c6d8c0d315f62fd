using ShareGPT4V.Cuda;
using TorchSharp;
using Xunit;

namespace ShareGPT4V.Tests.Cuda;

/// <summary>Reporting which libtorch is loaded, loading one from a folder, and the real probe on a machine without CUDA.</summary>
public class NativeLibTorchTests
{
    private const string Maps = """
        55d0c0a00000-55d0c0a01000 r--p 00000000 08:01 131                        /usr/share/dotnet/dotnet
        7f1000000000-7f1000100000 r-xp 00000000 08:01 200                        /opt/py/lib/python3.12/site-packages/torch/lib/libc10.so
        7f1000100000-7f1000200000 r-xp 00000000 08:01 201                        /opt/py/lib/python3.12/site-packages/torch/lib/libtorch_cpu.so
        7f1000200000-7f1000300000 r--p 00100000 08:01 201                        /opt/py/lib/python3.12/site-packages/torch/lib/libtorch_cpu.so
        7f1000300000-7f1000400000 r-xp 00000000 08:01 202                        /opt/py/lib/python3.12/site-packages/torch/lib/libtorch_cuda.so
        7f1000400000-7f1000500000 r-xp 00000000 08:01 203                        /opt/py/lib/python3.12/site-packages/nvidia/cu13/lib/libcudart.so.13
        7f1000500000-7f1000600000 r-xp 00000000 08:01 204                        /usr/lib/x86_64-linux-gnu/libcuda.so.580.159.03
        7f1000600000-7f1000700000 r-xp 00000000 08:01 205                        /srv/app dir/libLibTorchSharp.so
        7f1000700000-7f1000800000 r-xp 00000000 08:01 206                        /srv/old/libtorch_cpu.so (deleted)
        7f1000800000-7f1000801000 rw-p 00000000 00:00 0                          [heap]
        7f1000900000-7f1000901000 rw-p 00000000 00:00 0
        """;

    [Fact]
    public void ParsesTheMemoryMap()
    {
        var r = NativeLibTorchReport.Parse(Maps, dir => dir.EndsWith("torch/lib") ? "2.11.0+cu130" : null);
        Assert.Equal("/opt/py/lib/python3.12/site-packages/torch/lib/libtorch_cpu.so", r.LibTorchCpu);
        Assert.Equal("/opt/py/lib/python3.12/site-packages/torch/lib/libtorch_cuda.so", r.LibTorchCuda);
        Assert.Equal("/srv/app dir/libLibTorchSharp.so", r.LibTorchSharp);
        Assert.EndsWith("libcudart.so.13", r.CudaRuntime);
        Assert.EndsWith("libcuda.so.580.159.03", r.CudaDriver);
        Assert.True(r.CudaBuildLoaded);
        Assert.Equal("2.11.0+cu130", r.LibTorchVersion);
        Assert.Equal(6, r.Libraries.Count); // each path once, the deleted file and anonymous maps left out
        Assert.StartsWith("CUDA libtorch 2.11.0+cu130 from /opt/py/lib/python3.12/site-packages/torch/lib", r.Summary);
    }

    [Fact]
    public void NothingLoadedReadsAsSuch()
    {
        var r = NativeLibTorchReport.Parse("7f1000800000-7f1000801000 rw-p 00000000 00:00 0   [heap]\n");
        Assert.Null(r.LibTorchCpu);
        Assert.False(r.CudaBuildLoaded);
        Assert.Equal("libtorch not loaded yet", r.Summary);
    }

    [Fact]
    public void VersionComesFromTheFolderLayout()
    {
        var root = Directory.CreateTempSubdirectory("sgv-ver-");
        try
        {
            var wheel = Directory.CreateDirectory(Path.Combine(root.FullName, "torch", "lib"));
            File.WriteAllText(Path.Combine(root.FullName, "torch", "version.py"), "__version__ = '2.11.0+cu130'\ngit_version = 'abc'\n");
            Assert.Equal("2.11.0+cu130", NativeLibTorchReport.VersionOfLibraryFolder(wheel.FullName));

            var archive = Directory.CreateDirectory(Path.Combine(root.FullName, "libtorch", "lib"));
            File.WriteAllText(Path.Combine(root.FullName, "libtorch", "build-version"), "2.10.0+cu128\n");
            Assert.Equal("2.10.0+cu128", NativeLibTorchReport.VersionOfLibraryFolder(archive.FullName));

            Assert.Equal("2.10.0 (libtorch-cpu-linux-x64 package)",
                NativeLibTorchReport.VersionOfLibraryFolder(Path.Combine(root.FullName, "packages/libtorch-cpu-linux-x64/2.10.0/runtimes/linux-x64/native")));
            Assert.Null(NativeLibTorchReport.VersionOfLibraryFolder(Path.Combine(root.FullName, "elsewhere")));
        }
        finally { root.Delete(true); }
    }

    [Fact]
    public void ThisProcessRunsTheCpuOnlyLibTorchAndTheGlue()
    {
        using (var t = torch.zeros(1)) { } // make sure the backend is loaded
        var r = NativeLibTorchReport.Current();
        Assert.EndsWith("/libtorch_cpu.so", r.LibTorchCpu);
        Assert.EndsWith("/libLibTorchSharp.so", r.LibTorchSharp);
        Assert.False(r.CudaBuildLoaded);
        Assert.Contains(r.Libraries, l => l.EndsWith("/libc10.so"));
        Assert.Equal(NativeLibTorch.Dl.RealPath(r.LibTorchSharp!), NativeLibTorch.Dl.RealPath(NativeLibTorch.FindGlue()!));
    }

    [Fact]
    public void LoadingFromAFolderRefusesWhatCannotWork()
    {
        using (var t = torch.zeros(1)) { }
        var missing = Path.Combine(Path.GetTempPath(), "sgv-no-such-" + Guid.NewGuid().ToString("N"));
        Assert.Contains("does not exist", Assert.Throws<DeviceException>(() => NativeLibTorch.Load(missing)).Message);

        var dir = Directory.CreateTempSubdirectory("sgv-lib-");
        try
        {
            var e = Assert.Throws<DeviceException>(() => NativeLibTorch.Load(dir.FullName));
            Assert.Contains("has no libc10.so or libtorch_cpu.so", e.Message);
            Assert.Contains("torch/lib", e.Message);

            // A libtorch is already mapped in this process (the test's own CPU build): a second one is refused
            // before anything is loaded, since two copies of libtorch cannot share a process.
            File.WriteAllBytes(Path.Combine(dir.FullName, "libc10.so"), Array.Empty<byte>());
            File.WriteAllBytes(Path.Combine(dir.FullName, "libtorch_cpu.so"), Array.Empty<byte>());
            e = Assert.Throws<DeviceException>(() => NativeLibTorch.Load(dir.FullName));
            Assert.Contains("already loaded from", e.Message);
            Assert.Null(NativeLibTorch.LoadedFrom);
        }
        finally { dir.Delete(true); }
    }

    [Fact]
    public void FoldersNamedThroughALinkCompareAsTheirTarget()
    {
        var root = Directory.CreateTempSubdirectory("sgv-link-");
        try
        {
            var real = Directory.CreateDirectory(Path.Combine(root.FullName, "real", "lib"));
            var link = Path.Combine(root.FullName, "link");
            Directory.CreateSymbolicLink(link, Path.Combine(root.FullName, "real"));
            Assert.Equal(NativeLibTorch.Dl.RealPath(real.FullName), NativeLibTorch.Dl.RealPath(Path.Combine(link, "lib")));
        }
        finally { root.Delete(true); }
    }

    [Fact]
    public void TorchSharpFactsAreReadWithoutStartingIt()
    {
        Assert.Equal("2.10.0.0", TorchSharpInfo.BuiltForLibTorch); // TorchSharp 0.107's glue targets libtorch 2.10
        Assert.StartsWith("0.107.", TorchSharpInfo.Version);
        Assert.True(NativeLibTorch.CpuLibTorchAvailable());
    }

    [Fact]
    public void RealProbeSaysWhyCudaCannotBeUsedHere()
    {
        using (var t = torch.zeros(1)) { }
        var result = new TorchSharpCudaProbe().Probe();
        Assert.False(result.Available);
        Assert.Contains("CPU-only libtorch", result.Problem);
        Assert.Contains("LibTorchDirectory", result.Problem);
        Assert.Contains("Loaded now: CPU-only libtorch", result.Problem);
        Assert.False(result.Native!.CudaBuildLoaded);
    }

    [Fact]
    public void RealProviderRefusesCudaHereAndFallsBackOnlyWhenAllowed()
    {
        using (var t = torch.zeros(1)) { }
        var provider = new CudaDeviceProvider();
        var request = new ShareGPT4V.Devices.DeviceResolutionRequest { Device = "cuda:0" };
        var e = Assert.Throws<DeviceException>(() => provider.Resolve(request, new ListLogger()));
        Assert.Contains("'cuda:0' was requested but CUDA cannot be used", e.Message);
        Assert.Contains("libtorch", e.Message);
        var log = new ListLogger();
        var p = provider.Resolve(request with { AllowCpuFallback = true }, log);
        Assert.Equal(DeviceType.CPU, p.Device.type);
        Assert.Contains(log.Entries, x => x.Level == Microsoft.Extensions.Logging.LogLevel.Warning);
    }
}
