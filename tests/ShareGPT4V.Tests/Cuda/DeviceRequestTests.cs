using ShareGPT4V.Devices;
using TorchSharp;
using Xunit;

namespace ShareGPT4V.Tests.Cuda;

public class DeviceRequestTests
{
    [Theory]
    [InlineData("cpu", DeviceKind.Cpu, null)]
    [InlineData(" CPU ", DeviceKind.Cpu, null)]
    [InlineData("cuda", DeviceKind.Cuda, null)]
    [InlineData("cuda:0", DeviceKind.Cuda, 0)]
    [InlineData("CUDA:12", DeviceKind.Cuda, 12)]
    [InlineData("auto", DeviceKind.Auto, null)]
    public void ParsesTheDeviceStrings(string text, DeviceKind kind, int? index)
    {
        var r = DeviceRequest.Parse(text);
        Assert.Equal(kind, r.Kind);
        Assert.Equal(index, r.Index);
        Assert.Equal(r, DeviceRequest.Parse(r.ToString()));
    }

    [Theory]
    [InlineData("")]
    [InlineData("gpu")]
    [InlineData("cuda:")]
    [InlineData("cuda:-1")]
    [InlineData("cuda:+1")]
    [InlineData("cuda: 1")]
    [InlineData("cuda:1x")]
    [InlineData("cuda:99999")]
    [InlineData("mps")]
    [InlineData("cuda,0")]
    public void RefusesAnythingElseNamingTheOption(string text)
    {
        var e = Assert.Throws<DeviceException>(() => DeviceRequest.Parse(text, "Device"));
        Assert.Contains($"Device '{text}'", e.Message);
        Assert.Contains("cuda:N", e.Message);
    }

    [Theory]
    [InlineData("auto", null)]
    [InlineData("float32", torch.ScalarType.Float32)]
    [InlineData("fp16", torch.ScalarType.Float16)]
    [InlineData("BF16", torch.ScalarType.BFloat16)]
    public void ParsesTheDTypeOption(string text, torch.ScalarType? expected) => Assert.Equal(expected, DTypeChoice.Parse(text));

    [Fact]
    public void UnknownDTypeNamesTheOption()
    {
        var e = Assert.Throws<ModelConfigurationException>(() => DTypeChoice.Parse("int8"));
        Assert.Contains("DType 'int8'", e.Message);
        Assert.Equal("DType", e.Key);
    }

    [Fact]
    public void PipelineOptionsValidateTheDeviceSyntax()
    {
        var ok = new PipelineOptions { ModelPath = "m", Device = "cuda:1", DType = "bf16" };
        ok.Validate();
        Assert.Throws<DeviceException>(() => (ok with { Device = "cuda:one" }).Validate());
        Assert.Equal("auto", new PipelineOptions().DType);
    }
}
