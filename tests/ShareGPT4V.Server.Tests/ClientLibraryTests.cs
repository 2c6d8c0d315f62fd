using System.ClientModel;
using Microsoft.Extensions.AI;
using OpenAI;
using OpenAI.Chat;
using ShareGPT4V.Generation;
using Xunit;
using AiChatMessage = Microsoft.Extensions.AI.ChatMessage;
using AiChatRole = Microsoft.Extensions.AI.ChatRole;
using LibMessage = ShareGPT4V.Conversation.ConversationMessage;
using LibRole = ShareGPT4V.Conversation.ConversationRole;
using OpenAIChatMessage = OpenAI.Chat.ChatMessage;
using ChatFinishReason = OpenAI.Chat.ChatFinishReason;

namespace ShareGPT4V.Server.Tests;

/// <summary>
/// The official OpenAI .NET SDK and Microsoft.Extensions.AI's IChatClient over it, against the server on loopback:
/// every answer equals what the library itself gives for the same conversation and options.
/// </summary>
[Collection(ServerCollection.Name)]
public sealed class ClientLibraryTests(ServerFixture server)
{
    private ChatClient Sdk(string? model = null, string key = ServerFixture.ApiKey) =>
        new(model ?? server.ModelName, new ApiKeyCredential(key), new OpenAIClientOptions { Endpoint = new Uri(server.BaseUrl + "/v1") });

    private Task<GenerationResult> Library(string text, byte[]? image, int maxTokens, params string[] stop) =>
        server.Pipeline.ChatAsync(new[] { new LibMessage(LibRole.User, text, image is null ? 0 : 1) },
            image is null ? null : new[] { ImageInput.FromBytes(image) },
            new GenerationOptions { MaxNewTokens = maxTokens, Temperature = 0, StopStrings = stop });

    private static ChatCompletionOptions Greedy(int maxTokens) => new() { MaxOutputTokenCount = maxTokens, Temperature = 0f };

    [Fact]
    public async Task SdkTextAnswerAndUsageEqualTheLibrary()
    {
        var expected = await Library("Tell me about cats.", null, 12);
        ChatCompletion answer = await Sdk().CompleteChatAsync(new OpenAIChatMessage[] { new UserChatMessage("Tell me about cats.") }, Greedy(12));
        Assert.Equal(expected.Text, answer.Content.Single().Text);
        Assert.Equal(ChatFinishReason.Length, answer.FinishReason);
        Assert.Equal(expected.PromptTokens, answer.Usage.InputTokenCount);
        Assert.Equal(12, answer.Usage.OutputTokenCount);
        Assert.Equal(expected.PromptTokens + 12, answer.Usage.TotalTokenCount);
        Assert.Equal(server.ModelName, answer.Model);
    }

    [Fact]
    public async Task SdkDataUrlImageStreamingAndNotEqualTheLibrary()
    {
        var png = await File.ReadAllBytesAsync(ServerFixture.ImagePath(1));
        var expected = await Library("What is in the picture?", png, 10);
        var message = new UserChatMessage(ChatMessageContentPart.CreateTextPart("What is in the picture?"),
            ChatMessageContentPart.CreateImagePart(BinaryData.FromBytes(png), "image/png"));
        ChatCompletion whole = await Sdk().CompleteChatAsync(new OpenAIChatMessage[] { message }, Greedy(10));
        Assert.Equal(expected.Text, whole.Content.Single().Text);
        Assert.Equal(expected.PromptTokens, whole.Usage.InputTokenCount);

        var text = new System.Text.StringBuilder();
        ChatFinishReason? finish = null;
        ChatTokenUsage? usage = null;
        int updates = 0;
        await foreach (var u in Sdk().CompleteChatStreamingAsync(new OpenAIChatMessage[] { message }, Greedy(10)))
        {
            foreach (var part in u.ContentUpdate) text.Append(part.Text);
            finish ??= u.FinishReason;
            usage ??= u.Usage;
            updates++;
        }
        Assert.Equal(expected.Text, text.ToString());
        Assert.True(updates > 3, $"the answer came in {updates} update(s), not streamed token by token");
        Assert.Equal(ChatFinishReason.Length, finish);
        Assert.NotNull(usage); // the SDK asks for stream_options.include_usage
        Assert.Equal(expected.PromptTokens, usage!.InputTokenCount);
        Assert.Equal(10, usage.OutputTokenCount);
    }

    [Fact]
    public async Task SdkStopSequenceCutsTheAnswerAsTheLibraryDoes()
    {
        var full = await Library("Tell me about dogs.", null, 20);
        // A stop string taken from inside the greedy answer: both sides must cut there and report "stop".
        var words = full.Text.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(words.Length >= 3, $"greedy answer too short to pick a stop string from: '{full.Text}'");
        var stop = words[2];
        var expected = await Library("Tell me about dogs.", null, 20, stop);
        Assert.Equal(FinishReason.StopString, expected.FinishReason);
        var options = Greedy(20);
        options.StopSequences.Add(stop);
        ChatCompletion answer = await Sdk().CompleteChatAsync(new OpenAIChatMessage[] { new UserChatMessage("Tell me about dogs.") }, options);
        Assert.Equal(expected.Text, answer.Content.Single().Text);
        Assert.DoesNotContain(stop, answer.Content.Single().Text);
        Assert.Equal(ChatFinishReason.Stop, answer.FinishReason);
    }

    [Fact]
    public async Task SdkSeesOpenAIErrors()
    {
        var unknown = await Assert.ThrowsAsync<ClientResultException>(() =>
            Sdk(model: "no-such-model").CompleteChatAsync(new OpenAIChatMessage[] { new UserChatMessage("hi") }, Greedy(4)));
        Assert.Equal(404, unknown.Status);
        Assert.Contains("no-such-model", unknown.Message);

        var key = await Assert.ThrowsAsync<ClientResultException>(() =>
            Sdk(key: "wrong").CompleteChatAsync(new OpenAIChatMessage[] { new UserChatMessage("hi") }, Greedy(4)));
        Assert.Equal(401, key.Status);

        var badImage = new UserChatMessage(ChatMessageContentPart.CreateTextPart("hi"),
            ChatMessageContentPart.CreateImagePart(BinaryData.FromBytes("not a png at all"u8.ToArray()), "image/png"));
        var image = await Assert.ThrowsAsync<ClientResultException>(() => Sdk().CompleteChatAsync(new OpenAIChatMessage[] { badImage }, Greedy(4)));
        Assert.Equal(400, image.Status);

        var models = new OpenAIClient(new ApiKeyCredential(ServerFixture.ApiKey), new OpenAIClientOptions { Endpoint = new Uri(server.BaseUrl + "/v1") }).GetOpenAIModelClient();
        var list = await models.GetModelsAsync();
        Assert.Equal(server.ModelName, list.Value.Single().Id);
    }

    [Fact]
    public async Task ChatClientAnswersEqualTheLibraryStreamingAndNot()
    {
        IChatClient chat = Sdk().AsIChatClient();
        var png = await File.ReadAllBytesAsync(ServerFixture.ImagePath(2));
        var expectedText = await Library("Say something.", null, 9);
        var options = new ChatOptions { MaxOutputTokens = 9, Temperature = 0 };
        var response = await chat.GetResponseAsync(new[] { new AiChatMessage(AiChatRole.User, "Say something.") }, options);
        Assert.Equal(expectedText.Text, response.Text);
        Assert.Equal(expectedText.PromptTokens, response.Usage?.InputTokenCount);
        Assert.Equal(9, response.Usage?.OutputTokenCount);
        Assert.Equal(Microsoft.Extensions.AI.ChatFinishReason.Length, response.FinishReason);

        var expectedImage = await Library("Describe it.", png, 9);
        var withImage = new AiChatMessage(AiChatRole.User, new AIContent[] { new TextContent("Describe it."), new DataContent(png, "image/png") });
        var streamed = new System.Text.StringBuilder();
        await foreach (var update in chat.GetStreamingResponseAsync(new[] { withImage }, options)) streamed.Append(update.Text);
        Assert.Equal(expectedImage.Text, streamed.ToString());
        var whole = await chat.GetResponseAsync(new[] { withImage }, options);
        Assert.Equal(expectedImage.Text, whole.Text);
    }
}
