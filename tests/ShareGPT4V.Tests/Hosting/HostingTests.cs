using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using ShareGPT4V.Hosting;
using ShareGPT4V.Tests.Oracle;
using Xunit;

namespace ShareGPT4V.Tests.Hosting;

public class HostingTests
{
    private static ServiceProvider Services(Action<ShareGPT4VOptions> configure) =>
        new ServiceCollection().AddShareGPT4V(configure).BuildServiceProvider();

    [Fact]
    public async Task ChatClientFromDiReproducesTheGoldenCaption()
    {
        var c = GoldenCase.Get("hf_llama2vocab");
        using var sp = Services(o => { o.ModelPath = c.ModelPath; o.Template = "llava_v1"; o.MaxNewTokens = 12; });
        var client = sp.GetRequiredService<IChatClient>();
        var message = new ChatMessage(ChatRole.User, new AIContent[]
        {
            new TextContent("Describe this image in detail."),
            new DataContent(File.ReadAllBytes(System.IO.Path.Combine(c.Dir, "image1.png")), "image/png"),
        });
        var response = await client.GetResponseAsync(new[] { message });
        var pipeline = sp.GetRequiredService<MultimodalPipeline>();
        var expected = c.Prompt("main").GetProperty("generated_ids").EnumerateArray().Select(x => x.GetInt32()).ToArray();
        Assert.Equal(pipeline.Tokenizer.Decode(expected).Trim(), response.Text);
        Assert.Equal(ChatFinishReason.Length, response.FinishReason);
        Assert.Equal(12, response.Usage!.OutputTokenCount);
        Assert.Same(pipeline, client.GetService<MultimodalPipeline>());

        var updates = new List<ChatResponseUpdate>();
        await foreach (var u in client.GetStreamingResponseAsync(new[] { message })) updates.Add(u);
        Assert.Equal(response.Text, string.Concat(updates.Select(u => u.Text)));
        Assert.Equal(ChatFinishReason.Length, updates[^1].FinishReason);
        Assert.Contains(updates[^1].Contents, x => x is UsageContent);
    }

    [Fact]
    public async Task SystemMessageAndOptionsAreHonouredWithoutMutatingThem()
    {
        var c = GoldenCase.Get("hf_llama2vocab");
        using var sp = Services(o => { o.ModelPath = c.ModelPath; o.Template = "llava_v1"; });
        var client = sp.GetRequiredService<IChatClient>();
        var options = new ChatOptions { MaxOutputTokens = 3, StopSequences = new List<string>() };
        var r = await client.GetResponseAsync(new[] { new ChatMessage(ChatRole.System, "Be brief."), new ChatMessage(ChatRole.User, "Hi") }, options);
        Assert.True(r.Usage!.OutputTokenCount <= 3);
        Assert.Empty(options.StopSequences);
        Assert.Equal("Be brief. USER: Hi ASSISTANT:", sp.GetRequiredService<MultimodalPipeline>().BuildPrompt(new[] { new ShareGPT4V.Conversation.ConversationMessage(ShareGPT4V.Conversation.ConversationRole.User, "Hi") }, "Be brief."));
    }

    [Fact]
    public void InvalidOptionsFailWithTheOptionNamed()
    {
        using var sp = Services(o => { o.ModelPath = "/no/such/model"; });
        var e = Assert.Throws<OptionsValidationException>(() => sp.GetRequiredService<MultimodalPipeline>());
        Assert.Contains("ModelPath", e.Message);
        using var sp2 = Services(o => { o.ModelPath = Fixtures.Path("oracle/hf_llama2vocab"); o.TopP = 2; });
        var e2 = Assert.Throws<OptionsValidationException>(() => sp2.GetRequiredService<MultimodalPipeline>());
        Assert.Contains("TopP", e2.Message);
    }
}
