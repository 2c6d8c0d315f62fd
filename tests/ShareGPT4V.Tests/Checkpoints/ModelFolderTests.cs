using ShareGPT4V.Configuration;
using Xunit;

namespace ShareGPT4V.Tests.Checkpoints;

public sealed class TempDir : IDisposable
{
    public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "sg4v-" + Guid.NewGuid().ToString("N"));
    public TempDir() => Directory.CreateDirectory(Path);
    public string File(string name, string text)
    {
        var p = System.IO.Path.Combine(Path, name);
        Directory.CreateDirectory(System.IO.Path.GetDirectoryName(p)!);
        System.IO.File.WriteAllText(p, text);
        return p;
    }
    public void Dispose() { try { Directory.Delete(Path, true); } catch (IOException) { } }
}

public class ModelFolderTests
{
    private static string Tower => System.IO.File.ReadAllText(Fixtures.Path("anchors/Lin-Chen__ShareGPT4V-7B_Pretrained_vit-large336-l12/config.json"));
    private static string Sg7 => System.IO.File.ReadAllText(Fixtures.Path("anchors/Lin-Chen__ShareGPT4V-7B/config.json"));

    [Fact]
    public void HubIdTowerResolvesToASiblingFolderNamedLikeTheRepo()
    {
        using var d = new TempDir();
        d.File("ShareGPT4V-7B/config.json", Sg7);
        d.File("ShareGPT4V-7B_Pretrained_vit-large336-l12/config.json", Tower);
        var f = ModelFolder.Open(System.IO.Path.Combine(d.Path, "ShareGPT4V-7B"));
        Assert.Equal(System.IO.Path.Combine(d.Path, "ShareGPT4V-7B_Pretrained_vit-large336-l12"), f.VisionTowerPath);
        Assert.Equal(CheckpointLayout.Original, f.Config.Layout);
        Assert.Equal(24, f.Config.Vision.NumHiddenLayers);
        Assert.Equal(4096, f.Config.Text.MaxPositionEmbeddings);
    }

    [Fact]
    public void UnresolvableHubIdSaysWhichOptionToSet()
    {
        using var d = new TempDir();
        d.File("ShareGPT4V-7B/config.json", Sg7);
        var e = Assert.Throws<ModelConfigurationException>(() => ModelFolder.Open(System.IO.Path.Combine(d.Path, "ShareGPT4V-7B")));
        Assert.Contains("Lin-Chen/ShareGPT4V-7B_Pretrained_vit-large336-l12", e.Message);
        Assert.Contains("VisionTowerPath", e.Message);
        Assert.Contains("--vision-tower", e.Message);
        Assert.Equal("mm_vision_tower", e.Key);
    }

    [Fact]
    public void OverrideAndAbsolutePathsAreHonoured()
    {
        using var d = new TempDir();
        d.File("m/config.json", Sg7);
        d.File("elsewhere/tower/config.json", Tower);
        var f = ModelFolder.Open(System.IO.Path.Combine(d.Path, "m"), System.IO.Path.Combine(d.Path, "elsewhere/tower"));
        Assert.EndsWith("tower", f.VisionTowerPath);
        d.File("abs/config.json", Sg7.Replace("Lin-Chen/ShareGPT4V-7B_Pretrained_vit-large336-l12", System.IO.Path.Combine(d.Path, "elsewhere/tower")));
        Assert.EndsWith("tower", ModelFolder.Open(System.IO.Path.Combine(d.Path, "abs")).VisionTowerPath);
        var e = Assert.Throws<ModelConfigurationException>(() => ModelFolder.Open(System.IO.Path.Combine(d.Path, "m"), System.IO.Path.Combine(d.Path, "nope")));
        Assert.Contains("does not exist", e.Message);
    }

    [Fact]
    public void MinimalLlavaHfConfigGetsTransformersDefaults()
    {
        using var d = new TempDir();
        d.File("config.json", """{"model_type": "llava", "text_config": {"model_type": "llama"}, "vision_config": {"model_type": "clip_vision_model"}}""");
        var c = ModelFolder.Open(d.Path).Config;
        Assert.Equal(1e-6, c.Text.RmsNormEps);
        Assert.Equal(10000.0, c.Text.RopeTheta);
        Assert.Equal(4096, c.Text.HiddenSize);
        Assert.Equal(32, c.Text.NumKeyValueHeads);
        Assert.Equal("quick_gelu", c.Vision.HiddenAct);
        Assert.Equal(224, c.Vision.ImageSize);
        Assert.Equal(32000, c.ImageTokenIndex);
        Assert.Equal(-2, c.VisionFeatureLayer);
    }

    [Theory]
    [InlineData("""{"hidden_size": 64}""", "model_type", "Required key is missing")]
    [InlineData("""{"model_type": "llava", "text_config": {"hidden_size": "big"}}""", "text_config.hidden_size", "Expected an integer")]
    [InlineData("""{"model_type": "llava", "text_config": {"hidden_size": 1000000000}}""", "hidden_size", "out of the accepted range")]
    [InlineData("""{"model_type": "llava", "vision_feature_select_strategy": "odd", "text_config": {}}""", "vision_feature_select_strategy", "Unknown")]
    [InlineData("""{"model_type": "llava", "text_config": {"rope_scaling": {"type": "yarn", "factor": 2}}}""", "rope_scaling.type", "Unsupported rope_scaling")]
    [InlineData("""{"model_type": "bert"}""", "model_type", "not a LLaVA")]
    [InlineData("""{"model_type": "llava", """, null, "not valid JSON")]
    public void BadConfigsGiveTypedErrorsNamingTheKey(string json, string? key, string fragment)
    {
        using var d = new TempDir();
        d.File("config.json", json);
        var e = Assert.Throws<ModelConfigurationException>(() => ModelFolder.Open(d.Path));
        Assert.Contains(fragment, e.Message);
        Assert.Contains("config.json", e.Message);
        if (key is not null) Assert.Contains(key, e.Message);
    }

    [Fact]
    public void RopeScalingFormsAreRead()
    {
        using var d = new TempDir();
        d.File("config.json", """{"model_type": "llava", "text_config": {"rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 1, "high_freq_factor": 4, "original_max_position_embeddings": 8192}}}""");
        var s = ModelFolder.Open(d.Path).Config.Text.RopeScaling!;
        Assert.Equal("llama3", s.Type);
        Assert.Equal(8, s.Factor);
        d.File("config.json", """{"model_type": "llava", "text_config": {"rope_scaling": {"type": "linear", "factor": 2.0}}}""");
        Assert.Equal("linear", ModelFolder.Open(d.Path).Config.Text.RopeScaling!.Type);
    }

    [Fact]
    public void MissingModelFolderIsAClearError()
    {
        var e = Assert.Throws<ModelConfigurationException>(() => ModelFolder.Open("/definitely/not/here"));
        Assert.Contains("Model folder not found", e.Message);
    }
}
