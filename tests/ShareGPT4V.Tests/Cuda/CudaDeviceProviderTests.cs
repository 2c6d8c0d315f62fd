using Microsoft.Extensions.Logging;
using ShareGPT4V.Configuration;
using ShareGPT4V.Cuda;
using ShareGPT4V.Devices;
using TorchSharp;
using Xunit;

namespace ShareGPT4V.Tests.Cuda;

/// <summary>Selection, dtype policy, memory refusal and fallback of the CUDA provider, against a fake probe.</summary>
public class CudaDeviceProviderTests
{
    private static readonly LlavaConfig Llava7B = ModelPresets.Get("LLaVA-1.5-7B").Config;

    private static DeviceResolutionRequest Request(string device, string dtype = "auto", bool fallback = false, LlavaConfig? config = null,
        int positions = 0, int batch = 1) =>
        new() { Device = device, DType = dtype, AllowCpuFallback = fallback, Config = config, Positions = positions, Batch = batch };

    private static (DevicePlacement, ListLogger) Resolve(ICudaProbe probe, DeviceResolutionRequest request, long reserve = 1L << 30)
    {
        var log = new ListLogger();
        return (new CudaDeviceProvider(new CudaOptions { Probe = probe, ReserveBytes = reserve }).Resolve(request, log), log);
    }

    [Fact]
    public void ExplicitIndexSelectsThatDevice()
    {
        var (p, _) = Resolve(FakeProbe.With(FakeProbe.Gpu(0, 70), FakeProbe.Gpu(1, 10)), Request("cuda:1"));
        Assert.Equal(DeviceType.CUDA, p.Device.type);
        Assert.Equal(1, p.Device.index);
    }

    [Fact]
    public void PlainCudaAndAutoPickTheMostFreeMemoryLowestIndexOnTies()
    {
        var probe = FakeProbe.With(FakeProbe.Gpu(0, 10), FakeProbe.Gpu(1, 60), FakeProbe.Gpu(2, 60), FakeProbe.Gpu(3, 59.9));
        Assert.Equal(1, Resolve(probe, Request("cuda")).Item1.Device.index);
        Assert.Equal(1, Resolve(probe, Request("auto")).Item1.Device.index);
    }

    [Fact]
    public void MissingIndexListsTheVisibleDevices()
    {
        var e = Assert.Throws<DeviceException>(() => Resolve(FakeProbe.With(FakeProbe.Gpu(0, 70, name: "NVIDIA H200")), Request("cuda:3")));
        Assert.Contains("'cuda:3' does not exist", e.Message);
        Assert.Contains("1 CUDA device(s)", e.Message);
        Assert.Contains("NVIDIA H200", e.Message);
    }

    [Theory]
    [InlineData(9, 0, "auto", torch.ScalarType.BFloat16)]
    [InlineData(8, 0, "auto", torch.ScalarType.BFloat16)]
    [InlineData(7, 5, "auto", torch.ScalarType.Float16)]
    [InlineData(6, 1, "auto", torch.ScalarType.Float16)]
    [InlineData(7, 5, "float16", torch.ScalarType.Float16)]
    [InlineData(7, 5, "float32", torch.ScalarType.Float32)]
    [InlineData(9, 0, "float32", torch.ScalarType.Float32)]
    [InlineData(8, 6, "bf16", torch.ScalarType.BFloat16)]
    public void DTypePolicyPerComputeCapability(int major, int minor, string dtype, torch.ScalarType expected)
    {
        var (p, _) = Resolve(FakeProbe.With(FakeProbe.Gpu(0, 70, major, minor)), Request("cuda:0", dtype));
        Assert.Equal(expected, p.DType);
    }

    [Fact]
    public void BFloat16IsRefusedWhereTheDeviceLacksIt()
    {
        var e = Assert.Throws<DeviceException>(() => Resolve(FakeProbe.With(FakeProbe.Gpu(0, 14, 7, 5, name: "Tesla T4")), Request("cuda:0", "bfloat16")));
        Assert.Contains("compute capability 8.0", e.Message);
        Assert.Contains("Tesla T4", e.Message);
        Assert.Contains("7.5", e.Message);
    }

    [Fact]
    public void CpuRequestNeverProbesAndUsesFloat32()
    {
        var probe = FakeProbe.Unavailable("should not be asked");
        var (p, _) = Resolve(probe, Request("cpu"));
        Assert.Equal(DeviceType.CPU, p.Device.type);
        Assert.Equal(torch.ScalarType.Float32, p.DType);
        Assert.Equal(0, probe.Calls);
    }

    [Fact]
    public void UnavailableCudaIsRefusedWithTheProbesReason()
    {
        var e = Assert.Throws<DeviceException>(() => Resolve(FakeProbe.Unavailable("libtorch_cuda.so was not found"), Request("cuda:0")));
        Assert.Contains("'cuda:0'", e.Message);
        Assert.Contains("libtorch_cuda.so was not found", e.Message);
    }

    [Fact]
    public void FallbackToCpuOnlyWhenAllowedAndLogged()
    {
        var (p, log) = Resolve(FakeProbe.Unavailable("no NVIDIA driver"), Request("cuda", fallback: true));
        Assert.Equal(DeviceType.CPU, p.Device.type);
        Assert.Equal(torch.ScalarType.Float32, p.DType);
        Assert.Equal("no NVIDIA driver", p.FallbackReason);
        var warning = Assert.Single(log.Entries, e => e.Level == LogLevel.Warning);
        Assert.Contains("no NVIDIA driver", warning.Message);
        Assert.Contains("AllowCpuFallback", warning.Message);
    }

    [Fact]
    public void FallbackIsRefusedWhenNoCpuLibTorchCouldRunEither()
    {
        var provider = new CudaDeviceProvider(new CudaOptions { Probe = FakeProbe.Unavailable("no libtorch_cuda.so") }, () => false);
        var e = Assert.Throws<DeviceException>(() => provider.Resolve(Request("auto"), new ListLogger()));
        Assert.Contains("no libtorch_cuda.so", e.Message);
        Assert.Contains("CPU fallback either", e.Message);
    }

    [Fact]
    public void AutoFallsBackWithoutBeingAskedAndLogsIt()
    {
        var (p, log) = Resolve(FakeProbe.Unavailable("no NVIDIA driver"), Request("auto"));
        Assert.Equal(DeviceType.CPU, p.Device.type);
        Assert.Contains(log.Entries, e => e.Level == LogLevel.Warning && e.Message.Contains("no NVIDIA driver"));
    }

    [Fact]
    public void ExplicitDTypeSurvivesTheCpuFallback()
    {
        var (p, _) = Resolve(FakeProbe.Unavailable("x"), Request("cuda", "bf16", fallback: true));
        Assert.Equal(torch.ScalarType.BFloat16, p.DType);
    }

    [Fact]
    public void ModelThatFitsIsPlacedWithItsEstimate()
    {
        // LLaVA-1.5-7B in bfloat16 with a 2049-position cache for one row: about 13.2 + 1.0 + workspace GiB.
        var (p, log) = Resolve(FakeProbe.With(FakeProbe.Gpu(0, 139, name: "NVIDIA H200")), Request("cuda", config: Llava7B, positions: 2049));
        Assert.NotNull(p.Estimate);
        Assert.Equal(torch.ScalarType.BFloat16, p.Estimate!.DType);
        Assert.Contains("NVIDIA H200", p.Description);
        Assert.Contains(log.Entries, e => e.Level == LogLevel.Information && e.Message.Contains("NVIDIA H200"));
    }

    [Fact]
    public void ModelThatDoesNotFitIsRefusedBeforeLoadingWithEveryFigure()
    {
        // A 16 GiB card with 15 GiB free cannot take the 7B model with a batch of 8 at full context.
        var probe = FakeProbe.With(FakeProbe.Gpu(0, 15, 8, 9, totalGib: 16, name: "NVIDIA RTX 4080"));
        var e = Assert.Throws<DeviceException>(() => Resolve(probe, Request("cuda:0", config: Llava7B, positions: 4097, batch: 8)));
        Assert.Contains("will not fit on cuda:0 (NVIDIA RTX 4080)", e.Message);
        // 7,062,902,784 parameters x 2 bytes = 13.16 GiB; KV: 2 x 32 layers x 8 rows x 32 heads x 4097 x 128 x 2 bytes = 16.00 GiB.
        Assert.Contains("weights 13.16 GiB (bfloat16)", e.Message);
        Assert.Contains("KV cache 16.00 GiB (batch 8 x 4097 positions)", e.Message);
        Assert.Contains("15.00 GiB of 16.00 GiB is free", e.Message);
        Assert.Contains("MaxBatchSize", e.Message);
    }

    [Fact]
    public void TheReserveCountsAgainstFreeMemory()
    {
        var est = MemoryEstimator.Estimate(Llava7B, torch.ScalarType.Float16, 64, 1);
        var exact = FakeProbe.Gpu(0, 0) with { FreeBytes = est.TotalBytes + 100 };
        CudaDeviceSelector.CheckFits(exact, est, 100);
        Assert.Throws<DeviceException>(() => CudaDeviceSelector.CheckFits(exact, est, 101));
    }

    [Fact]
    public void NegativeReserveIsAConfigurationError() =>
        Assert.Throws<ModelConfigurationException>(() => new CudaDeviceProvider(new CudaOptions { ReserveBytes = -1, Probe = FakeProbe.With() }));

    [Fact]
    public void NoVisibleDeviceIsADeviceError()
    {
        var e = Assert.Throws<DeviceException>(() => CudaDeviceSelector.Select(DeviceRequest.Parse("cuda"), Array.Empty<CudaDeviceInfo>()));
        Assert.Contains("no CUDA device is visible", e.Message);
    }

    [Fact]
    public void CoreCpuProviderRefusesCudaUnlessFallbackIsAllowed()
    {
        var log = new ListLogger();
        var e = Assert.Throws<DeviceException>(() => CpuDeviceProvider.Instance.Resolve(Request("cuda:0"), log));
        Assert.Contains("ShareGPT4V.Cuda", e.Message);
        Assert.Contains("AllowCpuFallback", e.Message);
        var p = CpuDeviceProvider.Instance.Resolve(Request("cuda:0", fallback: true), log);
        Assert.Equal(DeviceType.CPU, p.Device.type);
        Assert.Contains(log.Entries, x => x.Level == LogLevel.Warning && x.Message.Contains("ShareGPT4V.Cuda"));
    }
}
