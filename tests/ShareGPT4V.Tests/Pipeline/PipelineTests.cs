using ShareGPT4V.Conversation;
using ShareGPT4V.Generation;
using ShareGPT4V.Tests.Checkpoints;
using ShareGPT4V.Tests.Oracle;
using Xunit;
using ConversationMessage = ShareGPT4V.Conversation.ConversationMessage;

namespace ShareGPT4V.Tests.Pipeline;

public sealed class PipelineFixture : IDisposable
{
    public MultimodalPipeline Pipeline { get; } = MultimodalPipeline.Load(new PipelineOptions
    {
        ModelPath = Fixtures.Path("oracle/hf_llama2vocab"),
        Template = "llava_v1", // the goldens use conv_llava_v1's prompt
    });
    public void Dispose() => Pipeline.Dispose();
}

/// <summary>The hf_llama2vocab oracle case end to end: prompt text and PNG files in, golden ids out.</summary>
public class PipelineTests : IClassFixture<PipelineFixture>
{
    private readonly MultimodalPipeline _p;
    private readonly GoldenCase _case = GoldenCase.Get("hf_llama2vocab");
    private static readonly GenerationOptions Reference = new() { MaxNewTokens = 12, StopAtEndOfSequence = false };

    public PipelineTests(PipelineFixture f) => _p = f.Pipeline;

    private ImageInput Image(string name) => ImageInput.FromFile(System.IO.Path.Combine(_case.Dir, name + ".png"));
    private static int[] Ints(System.Text.Json.JsonElement e) => e.EnumerateArray().Select(x => x.GetInt32()).ToArray();

    [Fact]
    public async Task CaptionFromPngReproducesTheGoldenIdsAndText()
    {
        var main = _case.Prompt("main");
        var messages = new[] { new ConversationMessage(ConversationRole.User, "Describe this image in detail.", 1) };
        Assert.Equal(main.GetProperty("text").GetString(), _p.BuildPrompt(messages));
        var r = await _p.ChatAsync(messages, new[] { Image("image1") }, Reference);
        Assert.Equal(Ints(main.GetProperty("generated_ids")), r.TokenIds);
        Assert.Equal(_p.Tokenizer.Decode(r.TokenIds).Trim(), r.Text);
        Assert.Equal(FinishReason.Length, r.FinishReason);
        Assert.Equal(main.GetProperty("expanded_length").GetInt32(), r.PromptTokens);
        Assert.True(r.Timings.Prefill > TimeSpan.Zero && r.Timings.Total >= r.Timings.Decode);
    }

    [Fact]
    public async Task TextOnlyChatReproducesTheGoldenIds()
    {
        var p = _case.Prompt("text");
        var r = await _p.GenerateAsync(p.GetProperty("text").GetString()!, null, Reference);
        Assert.Equal(Ints(p.GetProperty("generated_ids")), r.TokenIds);
    }

    [Fact]
    public async Task BatchedRowsEqualTheirUnbatchedRuns()
    {
        var p = _case.Prompt("batch_image");
        var texts = p.GetProperty("texts").EnumerateArray().Select(t => t.GetString()!).ToArray();
        var images = p.GetProperty("images").EnumerateArray().Select(i => Image(i.GetString()!)).ToArray();
        var results = await _p.GenerateBatchAsync(texts.Select((t, i) => new PromptRequest(t, new[] { images[i] })).ToList(), Reference, null);
        var expected = p.GetProperty("generated_ids").EnumerateArray().Select(Ints).ToArray();
        for (int i = 0; i < texts.Length; i++)
        {
            Assert.Equal(expected[i], results[i].TokenIds);
            var alone = await _p.GenerateAsync(texts[i], new[] { images[i] }, Reference);
            Assert.Equal(alone.TokenIds, results[i].TokenIds);
            Assert.Equal(alone.Text, results[i].Text);
        }
        var textBatch = _case.Prompt("batch_text");
        var tr = await _p.GenerateBatchAsync(textBatch.GetProperty("texts").EnumerateArray().Select(t => new PromptRequest(t.GetString()!, Array.Empty<ImageInput>())).ToList(), Reference, null);
        var te = textBatch.GetProperty("generated_ids").EnumerateArray().Select(Ints).ToArray();
        Assert.Equal(te[0], tr[0].TokenIds);
        Assert.Equal(te[1], tr[1].TokenIds);
    }

    [Fact]
    public async Task StreamingConcatenatesToTheNonStreamingText()
    {
        var messages = new[] { new ConversationMessage(ConversationRole.User, "What is in the picture?", 1) };
        var options = new GenerationOptions { MaxNewTokens = 24, StopAtEndOfSequence = false };
        var whole = await _p.ChatAsync(messages, new[] { Image("image2") }, options);
        var pieces = new List<string>();
        await foreach (var s in _p.ChatStreamingAsync(messages, new[] { Image("image2") }, options)) pieces.Add(s);
        Assert.True(pieces.Count > 1);
        Assert.Equal(whole.Text, string.Concat(pieces));
    }

    [Fact]
    public async Task CancellationStopsPromptlyAndLeavesThePipelineUsable()
    {
        using var cts = new CancellationTokenSource();
        var messages = new[] { new ConversationMessage(ConversationRole.User, "Describe this image in detail.", 1) };
        int pieces = 0;
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var _ in _p.ChatStreamingAsync(messages, new[] { Image("image1") }, new GenerationOptions { MaxNewTokens = 1500, StopAtEndOfSequence = false }, cts.Token))
                if (++pieces == 2) cts.Cancel();
        });
        Assert.Equal(2, pieces);
        var after = await _p.ChatAsync(messages, new[] { Image("image1") }, Reference);
        Assert.Equal(Ints(_case.Prompt("main").GetProperty("generated_ids")), after.TokenIds);
    }

    [Fact]
    public async Task SamplingWithASeedIsReproducible()
    {
        var options = new GenerationOptions { MaxNewTokens = 16, Temperature = 0.9, TopP = 0.9, TopK = 50, RepetitionPenalty = 1.1, Seed = 1234, StopAtEndOfSequence = false };
        var a = await _p.GenerateAsync("USER: Tell me a story. ASSISTANT:", null, options);
        var b = await _p.GenerateAsync("USER: Tell me a story. ASSISTANT:", null, options);
        Assert.Equal(a.TokenIds, b.TokenIds);
        var c = await _p.GenerateAsync("USER: Tell me a story. ASSISTANT:", null, options with { Seed = 99 });
        Assert.NotEqual(a.TokenIds, c.TokenIds);
    }

    [Fact]
    public async Task StopStringsCutTheAnswer()
    {
        var free = await _p.GenerateAsync("USER: hi ASSISTANT:", null, new GenerationOptions { MaxNewTokens = 12, StopAtEndOfSequence = false });
        Assert.True(free.Text.Length > 3);
        var stop = free.Text.Substring(2, 2);
        var cut = await _p.GenerateAsync("USER: hi ASSISTANT:", null, new GenerationOptions { MaxNewTokens = 12, StopAtEndOfSequence = false, StopStrings = new[] { stop } });
        Assert.Equal(FinishReason.StopString, cut.FinishReason);
        Assert.Equal(free.Text[..free.Text.IndexOf(stop, StringComparison.Ordinal)].Trim(), cut.Text);
    }

    [Fact]
    public async Task BadInputsGetTypedErrorsAndThePipelineStaysUsable()
    {
        var one = new[] { new ConversationMessage(ConversationRole.User, "Describe.", 1) };
        var e1 = await Assert.ThrowsAsync<ImageInputException>(() => _p.ChatAsync(one, new[] { ImageInput.FromFile("/no/such/image.png") }));
        Assert.Contains("/no/such/image.png", e1.Message);
        await Assert.ThrowsAsync<ImageInputException>(() => _p.ChatAsync(one, new[] { ImageInput.FromBytes("not an image at all"u8.ToArray(), "text.png") }));
        var e2 = await Assert.ThrowsAsync<PromptException>(() => _p.ChatAsync(one, Array.Empty<ImageInput>()));
        Assert.Contains("1 <image> marker(s) but 0 image(s)", e2.Message);
        var e3 = await Assert.ThrowsAsync<PromptException>(() => _p.GenerateAsync(string.Concat(Enumerable.Repeat("word ", 3000)), null, Reference));
        Assert.Contains("context window of 2048", e3.Message);
        var e4 = await Assert.ThrowsAsync<PromptException>(() => _p.GenerateAsync("hi", null, new GenerationOptions { MaxNewTokens = 5000 }));
        Assert.Contains("exceeds the context window", e4.Message);
        // The advice names library options that exist, with the largest answer that fits.
        int promptTokens = _p.CountPromptTokens("hi", 0);
        Assert.Contains($"set GenerationOptions.MaxNewTokens to {_p.ContextLength - promptTokens} or less", e4.Message);
        Assert.Contains("PipelineOptions.Overflow = PromptOverflow.ClampNewTokens", e4.Message);
        Assert.NotNull(typeof(GenerationOptions).GetProperty(nameof(GenerationOptions.MaxNewTokens)));
        Assert.NotNull(typeof(PipelineOptions).GetProperty(nameof(PipelineOptions.Overflow)));
        var ok = await _p.GenerateAsync(_case.Prompt("text").GetProperty("text").GetString()!, null, Reference);
        Assert.Equal(Ints(_case.Prompt("text").GetProperty("generated_ids")), ok.TokenIds);
    }
}

public class PipelineLifetimeTests
{
    [Fact]
    public void UnknownTemplateIsAPromptException()
    {
        var e = Assert.Throws<PromptException>(() => MultimodalPipeline.Load(new PipelineOptions { ModelPath = Fixtures.Path("oracle/hf_llama2vocab"), Template = "nope" }));
        Assert.Contains("nope", e.Message);
    }

    [Fact]
    public async Task RequestsAfterDisposeAreRefused()
    {
        var p = MultimodalPipeline.Load(new PipelineOptions { ModelPath = Fixtures.Path("oracle/hf_llama2vocab") });
        p.Dispose();
        p.Dispose(); // idempotent
        await Assert.ThrowsAsync<ObjectDisposedException>(() => p.GenerateAsync("USER: hi ASSISTANT:"));
    }

    [Fact]
    public void MissingModelFolderIsAConfigurationError()
    {
        Assert.Throws<ModelConfigurationException>(() => MultimodalPipeline.Load(new PipelineOptions { ModelPath = "/no/model/here" }));
        Assert.Throws<ModelConfigurationException>(() => MultimodalPipeline.Load(new PipelineOptions()));
    }

    [Fact]
    public async Task ConcurrentRequestsEachGetTheirOwnAnswer()
    {
        using var p = MultimodalPipeline.Load(new PipelineOptions { ModelPath = Fixtures.Path("oracle/hf_llama2vocab") });
        var prompts = Enumerable.Range(0, 6).Select(i => $"USER: Count to {i}. ASSISTANT:").ToArray();
        var options = new GenerationOptions { MaxNewTokens = 8, StopAtEndOfSequence = false };
        var alone = new List<IReadOnlyList<int>>();
        foreach (var q in prompts) alone.Add((await p.GenerateAsync(q, null, options)).TokenIds);
        var together = await Task.WhenAll(prompts.Select(q => Task.Run(() => p.GenerateAsync(q, null, options))));
        for (int i = 0; i < prompts.Length; i++) Assert.Equal(alone[i], together[i].TokenIds);
    }
}
