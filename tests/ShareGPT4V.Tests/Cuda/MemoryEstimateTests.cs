using System.Text.Json;
using ShareGPT4V.Checkpoints;
using ShareGPT4V.Configuration;
using ShareGPT4V.Devices;
using ShareGPT4V.Modeling;
using TorchSharp;
using Xunit;

namespace ShareGPT4V.Tests.Cuda;

/// <summary>
/// The memory estimate against independent figures: the byte totals in the published checkpoints' indexes, the
/// weight lists derived from them, the model built on the meta device, and a real KV cache's size.
/// </summary>
public class MemoryEstimateTests
{
    private static MemoryEstimate Estimate(LlavaConfig c, torch.ScalarType t = torch.ScalarType.Float16, int positions = 1, int batch = 1) =>
        MemoryEstimator.Estimate(c, t, positions, batch);

    private static long DerivedParameters(string relative, Func<string, bool>? keep = null)
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(Fixtures.Path("anchors/" + relative)));
        return doc.RootElement.EnumerateObject().Where(p => keep?.Invoke(p.Name) ?? true)
            .Sum(p => p.Value.EnumerateArray().Aggregate(1L, (a, x) => a * x.GetInt64()));
    }

    [Fact]
    public void Llava15_7bHfWeightsEqualThePublishedTotalSize()
    {
        // model.safetensors.index.json: "total_size": 14126854144 (float16, vision tower included).
        Assert.Equal(14_126_854_144L, Estimate(ModelPresets.Get("llava-1.5-7b-hf").Config).WeightBytes);
    }

    [Fact]
    public void OriginalLayoutWeightsEqualThePublishedLlmTotalPlusTheTower()
    {
        // pytorch_model.bin.index.json "total_size": 13518798848 = LLM + projector in float16 + 32 float32 inv_freq
        // buffers of 64 (not weights: computed on load). The CLIP tower ships separately.
        var e = Estimate(ModelPresets.Get("ShareGPT4V-7B").Config);
        Assert.Equal(13_518_798_848L - 32 * 64 * 4, (e.LanguageParameters + e.ProjectorParameters) * 2);
        long tower = DerivedParameters("Lin-Chen__ShareGPT4V-7B_Pretrained_vit-large336-l12/derived_keys_ShareGPT4V-7B_Pretrained_vit-large336-l12.json");
        Assert.Equal(tower, e.VisionParameters);
        Assert.Equal(303_507_456L, e.VisionParameters);
    }

    [Fact]
    public void ThirteenBMatchesItsDerivedWeightList()
    {
        var e = Estimate(ModelPresets.Get("ShareGPT4V-13B").Config);
        long llm = DerivedParameters("Lin-Chen__ShareGPT4V-13B/derived_keys_ShareGPT4V-13B.json", k => !k.EndsWith("inv_freq", StringComparison.Ordinal));
        Assert.Equal(llm, e.LanguageParameters + e.ProjectorParameters);
        Assert.InRange(e.WeightBytes / 1e9, 26.6, 26.8); // "13B" in float16
    }

    public static IEnumerable<object[]> Configs() => new[]
    {
        new object[] { "oracle hf_tiny" }, new object[] { "oracle llava_tiny336" }, new object[] { "oracle hf_llama2vocab" },
        new object[] { "ShareGPT4V-7B" }, new object[] { "ShareGPT4V-13B" }, new object[] { "llava-1.5-7b-hf" },
    };

    private static LlavaConfig Config(string name) => name.StartsWith("oracle ", StringComparison.Ordinal)
        ? ModelFolder.Open(Fixtures.Path("oracle/" + name[7..] + (name.EndsWith("llava_tiny336") ? "/model" : ""))).Config
        : ModelPresets.Get(name).Config;

    [Theory, MemberData(nameof(Configs))]
    public void ParameterCountEqualsTheModelBuiltOnMeta(string name)
    {
        var config = Config(name);
        var meta = new MetaWeightSource();
        using (var _ = new LlavaModel(config, meta)) { }
        long Count(Func<string, bool> f) => meta.Requested.Where(r => f(r.Name)).Sum(r => r.Shape.Aggregate(1L, (a, b) => a * b));
        var e = Estimate(config);
        Assert.Equal(Count(n => n.StartsWith("vision_tower.", StringComparison.Ordinal)), e.VisionParameters);
        Assert.Equal(Count(n => n.StartsWith("multi_modal_projector.", StringComparison.Ordinal)), e.ProjectorParameters);
        Assert.Equal(Count(n => n.StartsWith("language_model.", StringComparison.Ordinal)), e.LanguageParameters);
        Assert.Equal(Count(_ => true), e.Parameters);
    }

    [Theory]
    [InlineData(1, 17)]
    [InlineData(3, 40)]
    public void KvCacheEqualsTheBytesARealCacheAllocates(int batch, int positions)
    {
        var folder = ModelFolder.Open(Fixtures.Path("oracle/hf_tiny"));
        using var model = ModelLoader.Load(folder, new LoadOptions());
        using var cache = model.CreateCache(batch, positions);
        Assert.Equal(cache.Bytes, Estimate(folder.Config, torch.ScalarType.Float32, positions, batch).KvCacheBytes);
    }

    [Fact]
    public void SevenBKvCacheIsHalfAMebibytePerTokenInHalfPrecision()
    {
        // LLaMA-7B: 2 (k, v) x 32 layers x 4096 x 2 bytes = 512 KiB per token and row.
        var e = Estimate(ModelPresets.Get("LLaVA-1.5-7B").Config, torch.ScalarType.Float16, 4096, 2);
        Assert.Equal(512L * 1024, e.KvBytesPerPositionPerRow);
        Assert.Equal(512L * 1024 * 4096 * 2, e.KvCacheBytes);
    }

    [Fact]
    public void DecodeReadsTheLanguageModelWithoutItsInputTable()
    {
        var e = Estimate(ModelPresets.Get("LLaVA-1.5-7B").Config, torch.ScalarType.Float16);
        Assert.Equal((e.LanguageParameters - 32000L * 4096) * 2, e.DecodeWeightBytesPerStep);
        Assert.Equal(32000L * 4096, e.EmbeddingParameters);
    }

    [Fact]
    public void Float32DoublesTheBytesAndWorkspaceGrowsWithTheContext()
    {
        var c = ModelPresets.Get("LLaVA-1.5-7B").Config;
        var half = Estimate(c, torch.ScalarType.Float16, 1024, 1);
        var full = Estimate(c, torch.ScalarType.Float32, 1024, 1);
        Assert.Equal(half.WeightBytes * 2, full.WeightBytes);
        Assert.Equal(half.KvCacheBytes * 2, full.KvCacheBytes);
        Assert.True(Estimate(c, torch.ScalarType.Float16, 4096, 1).WorkspaceBytes > half.WorkspaceBytes);
        Assert.Equal(half.WeightBytes + half.KvCacheBytes + half.WorkspaceBytes, half.TotalBytes);
    }

    [Fact]
    public void BadSizesAreRefused()
    {
        var c = ModelPresets.Get("LLaVA-1.5-7B").Config;
        Assert.Throws<ArgumentOutOfRangeException>(() => MemoryEstimator.Estimate(c, torch.ScalarType.Float16, 0, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => MemoryEstimator.Estimate(c, torch.ScalarType.Float16, 1, 0));
        Assert.Throws<ArgumentException>(() => MemoryEstimator.Estimate(c, torch.ScalarType.Int8, 1, 1));
    }
}
