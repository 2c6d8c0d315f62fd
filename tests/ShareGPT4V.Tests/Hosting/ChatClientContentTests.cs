using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using ShareGPT4V.Hosting;
using ShareGPT4V.Tests.Oracle;
using Xunit;

namespace ShareGPT4V.Tests.Hosting;

/// <summary>What the IChatClient takes (images as bytes or data: URIs) and what it refuses out loud.</summary>
public class ChatClientContentTests : IDisposable
{
    private readonly ServiceProvider _services;
    private readonly IChatClient _client;
    private readonly byte[] _png;

    public ChatClientContentTests()
    {
        var c = GoldenCase.Get("hf_llama2vocab");
        _services = new ServiceCollection().AddShareGPT4V(o => { o.ModelPath = c.ModelPath; o.Template = "llava_v1"; o.MaxNewTokens = 4; })
            .BuildServiceProvider();
        _client = _services.GetRequiredService<IChatClient>();
        _png = File.ReadAllBytes(System.IO.Path.Combine(c.Dir, "image1.png"));
    }

    public void Dispose() => _services.Dispose();

    private static ChatMessage User(params AIContent[] contents) => new(ChatRole.User, contents);

    [Fact]
    public async Task ADataUriImageAnswersAsTheSameBytesDo()
    {
        var uri = "data:image/png;base64," + Convert.ToBase64String(_png);
        var fromBytes = await _client.GetResponseAsync([User(new TextContent("What is this?"), new DataContent(_png, "image/png"))]);
        var fromDataContentUri = await _client.GetResponseAsync([User(new TextContent("What is this?"), new DataContent(uri))]);
        var fromUriContent = await _client.GetResponseAsync([User(new TextContent("What is this?"), new UriContent(uri, "image/png"))]);
        var withoutImage = await _client.GetResponseAsync([User(new TextContent("What is this?"))]);
        Assert.Equal(fromBytes.Text, fromDataContentUri.Text);
        Assert.Equal(fromBytes.Text, fromUriContent.Text);
        Assert.Equal(fromBytes.Usage!.InputTokenCount, fromUriContent.Usage!.InputTokenCount);
        Assert.True(withoutImage.Usage!.InputTokenCount < fromBytes.Usage.InputTokenCount); // the image really was used
    }

    public static TheoryData<string> RefusedContents() => new() { "pdf", "http", "file", "pdf-data-uri", "assistant-image", "function-call" };

    [Theory]
    [MemberData(nameof(RefusedContents))]
    public async Task ContentTheModelCannotTakeIsRefusedByName(string kind)
    {
        ChatMessage message = kind switch
        {
            "pdf" => User(new TextContent("Summarise"), new DataContent(new byte[] { 0x25, 0x50, 0x44, 0x46 }, "application/pdf")),
            "http" => User(new UriContent("https://example.invalid/cat.png", "image/png")),
            "file" => User(new UriContent("file:///images/cat.png", "image/png")),
            "pdf-data-uri" => User(new UriContent("data:application/pdf;base64,JVBERg==", "application/pdf")),
            "assistant-image" => new ChatMessage(ChatRole.Assistant, [new DataContent(_png, "image/png")]),
            _ => new ChatMessage(ChatRole.Assistant, [new FunctionCallContent("call1", "lookup")]),
        };
        var e = await Assert.ThrowsAsync<NotSupportedException>(() => _client.GetResponseAsync([message]));
        string expected = kind switch
        {
            "pdf" or "pdf-data-uri" => "application/pdf",
            "http" => "https:",
            "file" => "file:",
            "assistant-image" => "user messages only",
            _ => nameof(FunctionCallContent),
        };
        Assert.Contains(expected, e.Message);
        // The streaming call refuses the same way, before anything is generated.
        await Assert.ThrowsAsync<NotSupportedException>(async () => { await foreach (var _ in _client.GetStreamingResponseAsync([message])) { } });
    }

    [Fact]
    public async Task ToolsJsonFormatsPenaltiesAndToolMessagesAreRefused()
    {
        var hi = new[] { User(new TextContent("Hi")) };
        var tool = AIFunctionFactory.Create(() => 42, "answer");
        Assert.Contains("Tools", (await Assert.ThrowsAsync<NotSupportedException>(() =>
            _client.GetResponseAsync(hi, new ChatOptions { Tools = [tool] }))).Message);
        Assert.Contains("ResponseFormat", (await Assert.ThrowsAsync<NotSupportedException>(() =>
            _client.GetResponseAsync(hi, new ChatOptions { ResponseFormat = ChatResponseFormat.Json }))).Message);
        Assert.Contains("PresencePenalty", (await Assert.ThrowsAsync<NotSupportedException>(() =>
            _client.GetResponseAsync(hi, new ChatOptions { PresencePenalty = 0.5f }))).Message);
        Assert.Contains("role", (await Assert.ThrowsAsync<NotSupportedException>(() =>
            _client.GetResponseAsync([new ChatMessage(ChatRole.Tool, "42")]))).Message);
        // Plain text as the response format is what the model does anyway.
        var ok = await _client.GetResponseAsync(hi, new ChatOptions { ResponseFormat = ChatResponseFormat.Text });
        Assert.NotNull(ok.Text);
    }

    [Fact]
    public async Task AMalformedDataUriIsAnImageError()
    {
        var e = await Assert.ThrowsAsync<ImageInputException>(() =>
            _client.GetResponseAsync([User(new UriContent("data:image/png;base64,@@not-base64@@", "image/png"))]));
        Assert.Contains("data: URI", e.Message);
    }
}
