using ShareGPT4V.Checkpoints;
using ShareGPT4V.Conversation;
using ShareGPT4V.Tests.Oracle;
using Xunit;
using ConversationMessage = ShareGPT4V.Conversation.ConversationMessage;

namespace ShareGPT4V.Tests.Checkpoints;

/// <summary>
/// A converted folder keeps its source's default conversation template (layout and folder name both decide the
/// default, and conversion changes them), so the same weights answer the same question with the same prompt.
/// </summary>
public sealed class ConversionTemplateTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("sgpt4v-convtpl-").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>The default template as the pipeline chooses it (the tiny-vocabulary cases have no tokenizer to load a pipeline).</summary>
    private static string DefaultOf(string modelPath)
    {
        var c = Configuration.ModelFolder.Open(modelPath).Config;
        return ConversationTemplates.ChooseDefault(c.ModelType, c.Layout == Configuration.CheckpointLayout.LlavaHf,
            Path.GetFileName(modelPath), c.ConversationTemplate).Name;
    }

    [Fact]
    public void APipelineOnAConvertedFolderBuildsTheSamePrompt()
    {
        var source = GoldenCase.Get("hf_llama2vocab").ModelPath;
        var r = ModelConverter.Convert(source, Path.Combine(_dir, "orig"), new ModelConversionOptions { Layout = TargetLayout.Original });
        var turn = new[] { new ConversationMessage(ConversationRole.User, "What is this?", 1) };
        using var before = MultimodalPipeline.Load(new PipelineOptions { ModelPath = source });
        using var after = MultimodalPipeline.Load(new PipelineOptions { ModelPath = r.ModelPath });
        Assert.Equal("llava_hf", before.Template.Name);
        Assert.Equal(before.Template.Name, after.Template.Name);
        Assert.Equal(before.BuildPrompt(turn), after.BuildPrompt(turn));
    }

    [Theory]
    [InlineData("hf_llama2vocab", TargetLayout.Original, "llava_hf")]   // named like a LLaMA-2-chat model: llava_llama_2 without the key
    [InlineData("llava_tiny336/model", TargetLayout.LlavaHf, "llava_v1")] // a llava-hf layout would default to llava_hf
    [InlineData("hf_tiny", TargetLayout.Same, "llava_hf")]
    public void AConvertedFolderDefaultsToItsSourcesTemplate(string source, TargetLayout layout, string expected)
    {
        var from = source == "hf_llama2vocab" ? GoldenCase.Get(source).ModelPath : Fixtures.Path("oracle/" + source);
        var before = DefaultOf(from);
        Assert.Equal(expected, before);
        var r = ModelConverter.Convert(from, Path.Combine(_dir, "out"), new ModelConversionOptions { Layout = layout });
        var after = DefaultOf(r.ModelPath);
        Assert.Equal(before, after);
    }

    [Fact]
    public void AnUnknownTemplateNameInTheConfigFallsBackToTheUsualChoice()
    {
        Assert.Equal("llava_v1", ConversationTemplates.ChooseDefault("llava", false, "x", configured: "no-such-template").Name);
        Assert.Equal("share4v_v1", ConversationTemplates.ChooseDefault("llava", true, "x", configured: "share4v_v1").Name);
    }
}
