using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using ShareGPT4V.Cuda;
using ShareGPT4V.Hosting;
using TorchSharp;
using Xunit;

namespace ShareGPT4V.Tests.Cuda;

/// <summary>The device options through MultimodalPipeline.Load and the DI registration.</summary>
public class PipelineDeviceTests
{
    private static string Model => Fixtures.Path("oracle/hf_llama2vocab");

    [Fact]
    public void DefaultIsCpuFloat32WithTheEstimateRecorded()
    {
        using var p = MultimodalPipeline.Load(new PipelineOptions { ModelPath = Model, MaxBatchSize = 2 });
        Assert.Equal(DeviceType.CPU, p.Placement.Device.type);
        Assert.Equal(torch.ScalarType.Float32, p.Placement.DType);
        Assert.Equal(torch.ScalarType.Float32, p.Model.LanguageModel.DType);
        Assert.Equal(2, p.Placement.Estimate!.Batch);
        Assert.Equal(p.ContextLength + 1, p.Placement.Estimate.Positions);
        Assert.Null(p.Placement.FallbackReason);
    }

    [Fact]
    public void CudaWithoutTheCudaPackageIsRefused()
    {
        var e = Assert.Throws<DeviceException>(() => MultimodalPipeline.Load(new PipelineOptions { ModelPath = Model, Device = "cuda:0" }));
        Assert.Contains("ShareGPT4V.Cuda", e.Message);
    }

    [Fact]
    public async Task AllowedFallbackLoadsOnTheCpuAndWarns()
    {
        var log = new ListLogger();
        using var p = MultimodalPipeline.Load(new PipelineOptions
        {
            ModelPath = Model, Device = "cuda", AllowCpuFallback = true,
            DeviceProvider = new CudaDeviceProvider(new CudaOptions { Probe = FakeProbe.Unavailable("no NVIDIA driver here") }),
        }, logger: log);
        Assert.Equal(DeviceType.CPU, p.Placement.Device.type);
        Assert.Equal("no NVIDIA driver here", p.Placement.FallbackReason);
        Assert.Contains(log.Entries, x => x.Level == LogLevel.Warning && x.Message.Contains("no NVIDIA driver here"));
        var r = await p.GenerateAsync("hello", options: new Generation.GenerationOptions { MaxNewTokens = 2, StopAtEndOfSequence = false });
        Assert.Equal(2, r.GeneratedTokens);
    }

    [Fact]
    public void ModelTooLargeForTheDeviceIsRefusedBeforeLoading()
    {
        var probe = FakeProbe.With(FakeProbe.Gpu(0, 0.001, totalGib: 1, name: "Tiny GPU") with { FreeBytes = 4096 });
        var e = Assert.Throws<DeviceException>(() => MultimodalPipeline.Load(new PipelineOptions
        {
            ModelPath = Model, Device = "cuda:0", DeviceProvider = new CudaDeviceProvider(new CudaOptions { Probe = probe, ReserveBytes = 0 }),
        }));
        Assert.Contains("will not fit on cuda:0 (Tiny GPU)", e.Message);
        Assert.Contains("0.00 GiB of 1.00 GiB is free", e.Message);
        Assert.Equal(1, probe.Calls);
    }

    [Fact]
    public void DiUsesTheRegisteredCudaProviderInEitherOrder()
    {
        var first = new ServiceCollection()
            .AddShareGPT4VCuda(o => o.Probe = FakeProbe.Unavailable("probe says no"))
            .AddShareGPT4V(o => { o.ModelPath = Model; o.Device = "cuda:0"; })
            .BuildServiceProvider();
        var e = Assert.Throws<DeviceException>(() => first.GetRequiredService<MultimodalPipeline>());
        Assert.Contains("probe says no", e.Message);

        var logs = new ListLoggerFactory();
        using var second = new ServiceCollection()
            .AddSingleton<ILoggerFactory>(logs)
            .AddShareGPT4V(o => { o.ModelPath = Model; o.Device = "auto"; })
            .AddShareGPT4VCuda(o => o.Probe = FakeProbe.Unavailable("probe says no"))
            .BuildServiceProvider();
        var p = second.GetRequiredService<MultimodalPipeline>();
        Assert.Equal(DeviceType.CPU, p.Placement.Device.type);
        Assert.Contains(logs.Logger.Entries, x => x.Level == LogLevel.Warning && x.Message.Contains("probe says no"));
    }

    [Fact]
    public void DiFallbackOptionAndDeviceValidation()
    {
        using var sp = new ServiceCollection()
            .AddShareGPT4VCuda(o => o.Probe = FakeProbe.Unavailable("nope"))
            .AddShareGPT4V(o => { o.ModelPath = Model; o.Device = "cuda"; o.AllowCpuFallback = true; })
            .BuildServiceProvider();
        Assert.Equal("nope", sp.GetRequiredService<MultimodalPipeline>().Placement.FallbackReason);

        using var bad = new ServiceCollection().AddShareGPT4V(o => { o.ModelPath = Model; o.Device = "tpu:0"; }).BuildServiceProvider();
        var e = Assert.Throws<OptionsValidationException>(() => bad.GetRequiredService<MultimodalPipeline>());
        Assert.Contains("Device 'tpu:0'", e.Message);
    }
}
