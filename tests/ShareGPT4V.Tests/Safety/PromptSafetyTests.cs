using ShareGPT4V.Conversation;
using ShareGPT4V.Generation;
using ShareGPT4V.Preprocessing;
using ShareGPT4V.Tests.Pipeline;
using Xunit;
using ConversationMessage = ShareGPT4V.Conversation.ConversationMessage;

namespace ShareGPT4V.Tests.Safety;

/// <summary>
/// Prompts through the pipeline: over-long ones refused or their output clamped as the options say, with the limit
/// in the message; image markers and images must agree; any valid Unicode is accepted; bad options are typed errors.
/// </summary>
public sealed class PromptSafetyTests(PipelineFixture fixture) : IClassFixture<PipelineFixture>
{
    private readonly MultimodalPipeline _p = fixture.Pipeline;
    private static string Model => Fixtures.Path("oracle/hf_llama2vocab");
    private static ImageInput Image(int i) => ImageInput.FromFile(Path.Combine(Model, $"image{i}.png"));
    private static readonly GenerationOptions Short = new() { MaxNewTokens = 4, StopAtEndOfSequence = false };

    [Theory]
    [InlineData(2, 1)]
    [InlineData(0, 1)]
    [InlineData(1, 3)]
    [InlineData(3, 0)]
    public async Task MarkersAndImagesMustAgree(int markers, int images)
    {
        var prompt = "USER: " + string.Concat(Enumerable.Repeat("<image>\n", markers)) + "Describe. ASSISTANT:";
        var e = await Assert.ThrowsAsync<PromptException>(() => _p.GenerateAsync(prompt, Enumerable.Range(0, images).Select(i => Image(1 + i % 2)).ToList(), Short));
        Assert.Contains($"{markers} <image> marker(s) but {images} image(s)", e.Message);
    }

    [Fact]
    public async Task AMismatchInOneRowOfABatchFailsTheBatchNamingTheCounts()
    {
        var rows = new[] { new PromptRequest("USER: <image>\nHi ASSISTANT:", [Image(1)]), new PromptRequest("USER: <image><image>\nHi ASSISTANT:", [Image(2)]) };
        var e = await Assert.ThrowsAsync<PromptException>(() => _p.GenerateBatchAsync(rows, Short, null));
        Assert.Contains("2 <image> marker(s) but 1 image(s)", e.Message);
    }

    [Fact]
    public async Task PromptsOverTheCharacterLimitAreRefusedNamingIt()
    {
        using var p = MultimodalPipeline.Load(new PipelineOptions { ModelPath = Model, MaxPromptCharacters = 100 });
        var e = await Assert.ThrowsAsync<PromptException>(() => p.GenerateAsync(new string('x', 101), null, Short));
        Assert.Contains("101 characters", e.Message);
        Assert.Contains("limit of 100 (MaxPromptCharacters)", e.Message);
        Assert.Equal(4, (await p.GenerateAsync(new string('x', 100), null, Short)).TokenIds.Count);
    }

    [Fact]
    public async Task OverflowingTheContextIsRefusedOrClampedAsTheOptionsSay()
    {
        var prompt = "USER: " + string.Concat(Enumerable.Repeat("word ", 40)) + "ASSISTANT:";
        using var refuse = MultimodalPipeline.Load(new PipelineOptions { ModelPath = Model, ContextLength = 60 });
        var e = await Assert.ThrowsAsync<PromptException>(() => refuse.GenerateAsync(prompt, null, new GenerationOptions { MaxNewTokens = 30 }));
        Assert.Contains("context window of 60", e.Message);

        using var clamp = MultimodalPipeline.Load(new PipelineOptions { ModelPath = Model, ContextLength = 60, Overflow = PromptOverflow.ClampNewTokens });
        var r = await clamp.GenerateAsync(prompt, null, new GenerationOptions { MaxNewTokens = 30, StopAtEndOfSequence = false });
        Assert.Equal(FinishReason.ContextFull, r.FinishReason);
        Assert.Equal(60, r.PromptTokens + r.TokenIds.Count);
        // A prompt that alone fills the window is refused even when clamping.
        var tooLong = "USER: " + string.Concat(Enumerable.Repeat("word ", 80)) + "ASSISTANT:";
        Assert.Contains("context window of 60", (await Assert.ThrowsAsync<PromptException>(() => clamp.GenerateAsync(tooLong, null, Short))).Message);
        // An image alone takes its tokens of the window too.
        var withImage = await Assert.ThrowsAsync<PromptException>(() => refuse.GenerateAsync("USER: <image>\n" + string.Concat(Enumerable.Repeat("word ", 30)) + "ASSISTANT:", [Image(1)], Short));
        Assert.Contains("context window of 60", withImage.Message);
    }

    [Fact]
    public async Task AnyValidUnicodePromptIsAcceptedAndLoneSurrogatesAreRefused()
    {
        var rng = new Random(11);
        for (int i = 0; i < 8; i++)
        {
            var text = string.Concat(Enumerable.Range(0, 30).Select(_ => char.ConvertFromUtf32(rng.Next(3) switch
            {
                0 => rng.Next(0x20, 0xD7FF),
                1 => rng.Next(0xE000, 0xFFFD),
                _ => rng.Next(0x10000, 0x10FFFF),
            })));
            var r = await _p.ChatAsync([new ConversationMessage(ConversationRole.User, text, 1)], [Image(1)], Short);
            Assert.Equal(4, r.TokenIds.Count);
            Assert.Equal(r.Text, _p.Tokenizer.Decode(r.TokenIds).Trim());
        }
        var e = await Assert.ThrowsAsync<PromptException>(() => _p.ChatAsync([new ConversationMessage(ConversationRole.User, "bad \udfff here")], null, Short));
        Assert.Contains("lone surrogate", e.Message);
    }

    [Fact]
    public async Task InvalidGenerationOptionsAreTypedErrorsNamingTheOption()
    {
        var e = await Assert.ThrowsAsync<PromptException>(() => _p.GenerateAsync("USER: hi ASSISTANT:", null, new GenerationOptions { TopP = 0 }));
        Assert.Contains("TopP", e.Message);
        e = await Assert.ThrowsAsync<PromptException>(() => _p.GenerateAsync("USER: hi ASSISTANT:", null, new GenerationOptions { Temperature = double.NaN }));
        Assert.Contains("Temperature", e.Message);
        e = await Assert.ThrowsAsync<PromptException>(() => _p.GenerateAsync("USER: hi ASSISTANT:", null, new GenerationOptions { StopStrings = [""] }));
        Assert.Contains("StopStrings", e.Message);
    }

    [Fact]
    public void InvalidPipelineOptionsAreConfigurationErrorsNamingTheOption()
    {
        var e = Assert.Throws<ModelConfigurationException>(() => MultimodalPipeline.Load(new PipelineOptions { ModelPath = Model, ImageLimits = new ImageLoadOptions { MaxPixels = 0 } }));
        Assert.Equal("ImageLimits.MaxPixels", e.Key);
        e = Assert.Throws<ModelConfigurationException>(() => MultimodalPipeline.Load(new PipelineOptions { ModelPath = Model, MaxQueueLength = 0 }));
        Assert.Equal("MaxQueueLength", e.Key);
    }

    [Fact]
    public void AnImageProcessorThatDoesNotMatchTheTowerIsRefusedAtLoad()
    {
        var dir = Directory.CreateTempSubdirectory("sgpt4v-pre-").FullName;
        try
        {
            foreach (var f in Directory.GetFiles(Model))
                if (Path.GetFileName(f) != "preprocessor_config.json")
                    File.CreateSymbolicLink(Path.Combine(dir, Path.GetFileName(f)), f);
            File.WriteAllText(Path.Combine(dir, "preprocessor_config.json"), """{"size": 64, "crop_size": 64}""");
            var e = Assert.Throws<ModelConfigurationException>(() => MultimodalPipeline.Load(new PipelineOptions { ModelPath = dir }));
            Assert.Contains("produces 64x64 images but the vision tower takes 56x56", e.Message);
            Assert.Contains("preprocessor_config.json", e.Message);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }
}
