using Microsoft.Playwright;
using ShareGPT4V.Generation;
using Xunit;
using LibMessage = ShareGPT4V.Conversation.ConversationMessage;
using LibRole = ShareGPT4V.Conversation.ConversationRole;

namespace ShareGPT4V.Server.Tests;

/// <summary>
/// The web demo in headless Chromium (the system's chromium; set SHAREGPT4V_CHROMIUM to use another): upload an image,
/// get a streamed answer equal to the library's, regenerate, stop a long answer, clear. Screenshots go to TestResults/.
/// </summary>
[Collection(ServerCollection.Name)]
public sealed class DemoBrowserTests(ServerFixture server)
{
    private static string Chromium()
    {
        var candidates = new[] { Environment.GetEnvironmentVariable("SHAREGPT4V_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome" };
        return candidates.FirstOrDefault(c => !string.IsNullOrEmpty(c) && File.Exists(c))
            ?? throw new InvalidOperationException("No Chromium found: install it (apt-get install -y chromium; .ci/run does) or set SHAREGPT4V_CHROMIUM");
    }

    private static string Artifacts()
    {
        // tests/ShareGPT4V.Server.Tests/TestResults, next to the project (bin/<config>/<tfm>/ is three levels down).
        var dir = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "TestResults"));
        Directory.CreateDirectory(dir);
        return dir;
    }

    [Fact]
    public async Task UploadStreamControlsRegenerateStopClear()
    {
        using var playwright = await Playwright.CreateAsync();
        await using var browser = await playwright.Chromium.LaunchAsync(new BrowserTypeLaunchOptions
        {
            ExecutablePath = Chromium(), Headless = true, Args = new[] { "--no-sandbox", "--disable-gpu" },
        });
        var page = await browser.NewPageAsync(new BrowserNewPageOptions { ViewportSize = new ViewportSize { Width = 1200, Height = 800 } });
        var external = new List<string>();
        page.Request += (_, r) => { if (!r.Url.StartsWith(server.BaseUrl, StringComparison.Ordinal) && !r.Url.StartsWith("data:", StringComparison.Ordinal)) external.Add(r.Url); };
        await page.GotoAsync(server.BaseUrl + "/");
        await page.FillAsync("#api-key", ServerFixture.ApiKey);
        await page.DispatchEventAsync("#api-key", "change");
        await Assertions.Expect(page.Locator("#model")).ToHaveTextAsync(server.ModelName);

        // Upload, set the controls, ask: the streamed answer equals the library's for the same request.
        await page.SetInputFilesAsync("#image-input", ServerFixture.ImagePath(1));
        await Assertions.Expect(page.Locator("#image-preview")).ToBeVisibleAsync();
        await page.FillAsync("#temperature", "0");
        await page.FillAsync("#top-p", "1");
        await page.FillAsync("#max-tokens", "10");
        await page.FillAsync("#prompt", "What is in the picture?");
        await page.ClickAsync("#send");
        var answer = page.Locator(".message.assistant").Last;
        await Assertions.Expect(answer).ToHaveAttributeAsync("data-state", "done", new() { Timeout = 30_000 });
        var expected = await server.Pipeline.ChatAsync(new[] { new LibMessage(LibRole.User, "What is in the picture?", 1) },
            new[] { ImageInput.FromFile(ServerFixture.ImagePath(1)) }, new GenerationOptions { MaxNewTokens = 10, Temperature = 0 });
        Assert.Equal(expected.Text, await answer.InnerTextAsync());
        Assert.True(int.Parse((await answer.GetAttributeAsync("data-chunks"))!) > 1, "the answer did not arrive as a stream");
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Path.Combine(Artifacts(), "demo-answer.png") });

        // Regenerate: greedy, so the same answer again, replacing the old one.
        await page.ClickAsync("#regenerate");
        await Assertions.Expect(page.Locator(".message.assistant")).ToHaveCountAsync(1);
        await Assertions.Expect(page.Locator(".message.assistant").Last).ToHaveAttributeAsync("data-state", "done", new() { Timeout = 30_000 });
        Assert.Equal(expected.Text, await page.Locator(".message.assistant").Last.InnerTextAsync());

        // Stop a long answer mid-stream: the page says so and the server is free at once.
        await page.FillAsync("#max-tokens", "1500");
        await page.FillAsync("#prompt", "Now talk for a very long time.");
        await page.ClickAsync("#send");
        var longAnswer = page.Locator(".message.assistant").Last;
        await Assertions.Expect(longAnswer).ToHaveAttributeAsync("data-chunks", new System.Text.RegularExpressions.Regex("^[1-9]"), new() { Timeout = 30_000 });
        await page.ClickAsync("#stop");
        await Assertions.Expect(longAnswer).ToHaveAttributeAsync("data-state", "stopped");
        await Assertions.Expect(page.Locator("#status")).ToHaveTextAsync("stopped");
        await server.WaitIdleAsync(TimeSpan.FromSeconds(2));
        Assert.True(int.Parse((await longAnswer.GetAttributeAsync("data-chunks"))!) < 1500);
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Path.Combine(Artifacts(), "demo-stopped.png") });

        await page.ClickAsync("#clear");
        await Assertions.Expect(page.Locator(".message")).ToHaveCountAsync(0);
        await Assertions.Expect(page.Locator("#image-preview")).ToBeHiddenAsync();
        Assert.Empty(external); // everything the page loads comes from the server
    }
}
