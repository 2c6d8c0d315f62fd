using System.Text.Json;
using ShareGPT4V.Conversation;
using ShareGPT4V.Generation;
using ShareGPT4V.Tests.Oracle;
using Xunit;
using ConversationMessage = ShareGPT4V.Conversation.ConversationMessage;

namespace ShareGPT4V.Tests.Pipeline;

/// <summary>Beam search through the pipeline's public calls on hf_llama2vocab, against transformers' beam goldens.</summary>
public class BeamSearchPipelineTests : IClassFixture<PipelineFixture>
{
    private readonly MultimodalPipeline _p;
    private readonly GoldenCase _case = GoldenCase.Get("hf_llama2vocab");
    private static readonly JsonElement Runs = JsonDocument.Parse(File.ReadAllBytes(Fixtures.Path("generation/golden.json"))).RootElement
        .GetProperty("cases").GetProperty("hf_llama2vocab").GetProperty("runs").Clone();
    private static readonly GenerationOptions Beam3 = new() { MaxNewTokens = 12, NumBeams = 3 };

    public BeamSearchPipelineTests(PipelineFixture f) => _p = f.Pipeline;

    private ImageInput Image(string name) => ImageInput.FromFile(Path.Combine(_case.Dir, name + ".png"));
    private static int[] Golden(string setting, string prompt) =>
        Runs.GetProperty(setting).GetProperty(prompt).GetProperty("generated_ids").EnumerateArray().Select(x => x.GetInt32()).ToArray();
    private static readonly ConversationMessage[] Describe = { new(ConversationRole.User, MultimodalPipeline.DefaultCaptionPrompt, 1) };

    [Fact]
    public async Task AStreamedBeamSearchArrivesWholeAndEqualsTheAnswer()
    {
        var result = await _p.ChatAsync(Describe, new[] { Image("image1") }, Beam3);
        Assert.Equal(Golden("beam3", "main"), result.TokenIds);
        var pieces = new List<string>();
        await foreach (var piece in _p.ChatStreamingAsync(Describe, new[] { Image("image1") }, Beam3)) pieces.Add(piece);
        Assert.Single(pieces);
        Assert.Equal(result.Text, pieces[0]);
    }

    [Fact]
    public async Task CaptionBatchesRunBeamSearchOneImageAtATime()
    {
        var results = await _p.CaptionBatchAsync(new[] { Image("image1"), Image("image1") }, null, Beam3 with { NumBeams = 2, LengthPenalty = 0.5 });
        Assert.All(results, r => Assert.Equal(Golden("beam2_lp0.5", "main"), r.TokenIds));
    }

    [Fact]
    public async Task BeamSearchRefusesRowsTogetherAndMoreBeamsThanTheBatchSize()
    {
        var two = new[] { new PromptRequest("USER: hi ASSISTANT:", Array.Empty<ImageInput>()), new PromptRequest("USER: yo ASSISTANT:", Array.Empty<ImageInput>()) };
        var e = await Assert.ThrowsAsync<PromptException>(() => _p.GenerateBatchAsync(two, Beam3, null));
        Assert.Contains("one prompt at a time", e.Message);
        e = await Assert.ThrowsAsync<PromptException>(() => _p.GenerateAsync("USER: hi ASSISTANT:", null, Beam3 with { NumBeams = _p.Options.MaxBatchSize + 1 }));
        Assert.Contains("MaxBatchSize", e.Message);
        e = await Assert.ThrowsAsync<PromptException>(() => _p.GenerateAsync("USER: hi ASSISTANT:", null, Beam3 with { Temperature = 0.7 }));
        Assert.Contains("NumBeams", e.Message);
    }
}
