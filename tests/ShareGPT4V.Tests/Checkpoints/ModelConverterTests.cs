using ShareGPT4V.Checkpoints;
using ShareGPT4V.Configuration;
using ShareGPT4V.Conversation;
using ShareGPT4V.Generation;
using ShareGPT4V.Tests.Oracle;
using TorchSharp;
using Xunit;
using ConversationMessage = ShareGPT4V.Conversation.ConversationMessage;

namespace ShareGPT4V.Tests.Checkpoints;

/// <summary>
/// Whole-model conversion between layouts. The numerics of converted folders are checked against the transformers
/// goldens by <see cref="OracleModelTests"/> (cases <c>*_as_hf</c>, <c>*_as_original</c>); these tests check the files.
/// </summary>
public sealed class ModelConverterTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("sgpt4v-modelconv-").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Out(string name) => Path.Combine(_dir, name);

    private static void AssertSameTensors(string expectedFolder, string actualFolder, Func<string, string>? rename = null)
    {
        using var expected = CheckpointDiscovery.Open(expectedFolder);
        using var actual = CheckpointDiscovery.Open(actualFolder);
        Assert.Equal(expected.Names.Select(rename ?? (n => n)).OrderBy(n => n, StringComparer.Ordinal),
            actual.Names.OrderBy(n => n, StringComparer.Ordinal));
        foreach (var name in expected.Names)
        {
            using var a = expected.Load(name);
            using var b = actual.Load((rename ?? (n => n))(name));
            Assert.Equal(a.dtype, b.dtype);
            Assert.True(TensorAssert.BitEqual(a, b), $"{name} differs");
        }
    }

    [Fact]
    public void BinCheckpointToSafetensorsKeepsTheLayoutAndEveryBit()
    {
        var r = ModelConverter.Convert(Fixtures.Path("oracle/llava_tiny336_bin/model"), Out("a"), new ModelConversionOptions { MaxShardBytes = 100_000 });
        Assert.Equal(CheckpointLayout.Original, r.Layout);
        Assert.Equal(Path.Combine(Out("a"), "model"), r.ModelPath);
        Assert.Equal(Path.Combine(Out("a"), "clip-vit-tiny-336"), r.VisionTowerPath);
        Assert.True(File.Exists(Path.Combine(r.ModelPath, "model.safetensors.index.json")), "sharded at 100 kB");
        AssertSameTensors(Fixtures.Path("oracle/llava_tiny336/model"), r.ModelPath);
        AssertSameTensors(Fixtures.Path("oracle/llava_tiny336/clip-vit-tiny-336"), r.VisionTowerPath);
        var folder = ModelFolder.Open(r.ModelPath);
        // The written config also names the template the source defaulted to (ConversionTemplateTests).
        Assert.Equal(ModelFolder.Open(Fixtures.Path("oracle/llava_tiny336/model")).Config with { VisionTowerName = "clip-vit-tiny-336", ConversationTemplate = "llava_v1" }, folder.Config);
        Assert.Equal(File.ReadAllText(Fixtures.Path("oracle/llava_tiny336/clip-vit-tiny-336/preprocessor_config.json")),
            File.ReadAllText(folder.PreprocessorConfigPath!));
    }

    [Fact]
    public void OriginalToLlavaHfAndBackIsLossless()
    {
        var source = ModelFolder.Open(Fixtures.Path("oracle/llava_tiny336/model")).Config;
        var hf = ModelConverter.Convert(Fixtures.Path("oracle/llava_tiny336/model"), Out("hf"), new ModelConversionOptions { Layout = TargetLayout.LlavaHf });
        Assert.Equal(hf.ModelPath, hf.VisionTowerPath);
        var hfConfig = ModelFolder.Open(hf.ModelPath).Config;
        Assert.Equal(CheckpointLayout.LlavaHf, hfConfig.Layout);
        Assert.Equal(source.Text.VocabSize, hfConfig.ImageTokenIndex); // just past the vocabulary, no new embedding row
        Assert.Equal("pad", hfConfig.ImageAspectRatio);                 // LLaVA's padding survives the layout change
        Assert.Equal(source.Vision, hfConfig.Vision);
        Assert.Equal(source.Text, hfConfig.Text);
        Assert.Equal((source.VisionFeatureLayer, source.KeepClsToken, source.ProjectorDepth),
            (hfConfig.VisionFeatureLayer, hfConfig.KeepClsToken, hfConfig.ProjectorDepth));
        using (var reader = CheckpointDiscovery.Open(hf.ModelPath))
        {
            Assert.Contains("multi_modal_projector.linear_2.bias", reader.Names);
            Assert.Contains("vision_tower.vision_model.post_layernorm.weight", reader.Names);
            Assert.Contains("language_model.lm_head.weight", reader.Names);
        }

        var back = ModelConverter.Convert(hf.ModelPath, Out("back"), new ModelConversionOptions
        {
            Layout = TargetLayout.Original, LanguageModelFolderName = "llm", VisionTowerFolderName = "tower",
        });
        AssertSameTensors(Fixtures.Path("oracle/llava_tiny336/model"), back.ModelPath);
        AssertSameTensors(Fixtures.Path("oracle/llava_tiny336/clip-vit-tiny-336"), back.VisionTowerPath);
        var again = ModelFolder.Open(back.ModelPath).Config;
        Assert.Equal(source with { ModelType = "llava", VisionTowerName = "tower", ConversationTemplate = "llava_v1" }, again);
    }

    [Fact]
    public async Task LlavaHfToOriginalCaptionsTheGoldenIdsFromThePng()
    {
        var c = GoldenCase.Get("hf_llama2vocab");
        var r = ModelConverter.Convert(c.ModelPath, Out("orig"), new ModelConversionOptions { Layout = TargetLayout.Original });
        Assert.True(File.Exists(Path.Combine(r.ModelPath, "tokenizer.json")));
        using var p = MultimodalPipeline.Load(new PipelineOptions { ModelPath = r.ModelPath, Template = "llava_v1" });
        Assert.Equal(-200, p.Config.ImageTokenIndex);
        var main = c.Prompt("main");
        var result = await p.ChatAsync(new[] { new ConversationMessage(ConversationRole.User, "Describe this image in detail.", 1) },
            new[] { ImageInput.FromFile(Path.Combine(c.Dir, "image1.png")) }, new GenerationOptions { MaxNewTokens = 12, StopAtEndOfSequence = false });
        Assert.Equal(main.GetProperty("generated_ids").EnumerateArray().Select(x => x.GetInt32()), result.TokenIds);
    }

    [Fact]
    public void ACheckpointThatWouldNotLoadIsNotConverted()
    {
        // A copy of hf_tiny whose config promises one more LLaMA layer than the weights hold.
        var src = Out("broken");
        Directory.CreateDirectory(src);
        foreach (var f in Directory.GetFiles(Fixtures.Path("oracle/hf_tiny")))
            File.Copy(f, Path.Combine(src, Path.GetFileName(f)));
        var config = File.ReadAllText(Path.Combine(src, "config.json"));
        File.WriteAllText(Path.Combine(src, "config.json"), config.Replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3"));
        var e = Assert.Throws<CheckpointFormatException>(() => ModelConverter.Convert(src, Out("never")));
        Assert.Contains("language_model.model.layers.2.", e.Message);
        Assert.False(Directory.Exists(Out("never")), "nothing may be written for a checkpoint that does not match");
    }

    [Fact]
    public void RefusesOutputsThatAreNotEmptyOrOverlapTheSource()
    {
        Directory.CreateDirectory(Out("busy"));
        File.WriteAllText(Path.Combine(Out("busy"), "keep.txt"), "mine");
        var e = Assert.Throws<ModelConfigurationException>(() => ModelConverter.Convert(Fixtures.Path("oracle/hf_tiny"), Out("busy")));
        Assert.Contains("not empty", e.Message);
        Assert.Equal("mine", File.ReadAllText(Path.Combine(Out("busy"), "keep.txt")));
        var inside = Assert.Throws<ModelConfigurationException>(() =>
            ModelConverter.Convert(Fixtures.Path("oracle/hf_tiny"), Fixtures.Path("oracle/hf_tiny/converted")));
        Assert.Contains("overlaps", inside.Message);
        Assert.Throws<ModelConfigurationException>(() => ModelConverter.Convert(Fixtures.Path("oracle/hf_tiny"), Out("x"),
            new ModelConversionOptions { Layout = TargetLayout.Original, LanguageModelFolderName = "a/b" }));
    }
}
