using ShareGPT4V.Checkpoints;
using ShareGPT4V.Generation;
using ShareGPT4V.Tests.Oracle;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace ShareGPT4V.Tests.Modeling;

/// <summary>A decode step leaves nothing behind: the number of live tensors (native allocations) stays flat token after token.</summary>
public class DecodeMemoryTests
{
    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.BFloat16)]
    public void LiveTensorsDoNotGrowPerToken(ScalarType storage)
    {
        var c = GoldenCase.Get("hf_llama2vocab");
        using var model = ModelLoader.Load(c.ModelPath, new LoadOptions { DType = storage });
        using var noGrad = torch.no_grad();
        var ids = GoldenCase.Ids(c.Prompt("text").GetProperty("input_ids"));
        using var engine = OracleModelTests.EngineFor(c, model, maxBatch: 2);
        // Two sequences decode together, as under load; neither stops before the test ends.
        var requests = OracleModelTests.EngineRequests(model, new[] { ids, ids[..^2] }, Array.Empty<Tensor>(), 60);
        foreach (var r in requests) engine.Admit(r);

        long Step()
        {
            Assert.Empty(engine.Step());
            return DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        }
        for (int i = 0; i < 3; i++) Step(); // first calls may create lasting state (rotary tables, thread team)
        long before = Step();
        for (int i = 0; i < 40; i++) Assert.Equal(before, Step());
    }
}
