using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text.Json;
using System.Text.RegularExpressions;
using Xunit;

namespace ShareGPT4V.Server.Tests;

/// <summary>The server as a process, started the way users start it (<c>--model DIR --urls ... --api-key KEY</c>).</summary>
public sealed class ProcessTests
{
    private static ProcessStartInfo Server(params string[] args)
    {
        var psi = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        psi.Environment.Remove("SHAREGPT4V_API_KEY");
        psi.Environment.Remove("ASPNETCORE_URLS");
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "sharegpt4v-server.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        return psi;
    }

    [Fact]
    public async Task StartedFromTheCommandLineItServesWithTheKey()
    {
        using var p = Process.Start(Server("--model", ServerFixture.ModelDir, "--urls", "http://127.0.0.1:0", "--api-key", "k-123"))!;
        try
        {
            var address = new TaskCompletionSource<string>();
            var log = new System.Text.StringBuilder();
            void OnLine(string? line)
            {
                if (line is null) return;
                lock (log) log.AppendLine(line);
                var m = Regex.Match(line, @"Now listening on: (http://\S+)");
                if (m.Success) address.TrySetResult(m.Groups[1].Value);
            }
            p.OutputDataReceived += (_, e) => OnLine(e.Data);
            p.ErrorDataReceived += (_, e) => OnLine(e.Data);
            p.BeginOutputReadLine();
            p.BeginErrorReadLine();
            var url = await address.Task.WaitAsync(TimeSpan.FromSeconds(60));
            using var http = new HttpClient { BaseAddress = new Uri(url) };
            var until = DateTime.UtcNow.AddSeconds(60);
            while ((await http.GetAsync("/health")).StatusCode != HttpStatusCode.OK)
            {
                Assert.True(DateTime.UtcNow < until, "not healthy within 60 s:\n" + log);
                await Task.Delay(100);
            }
            var body = new { model = "hf_llama2vocab", messages = new[] { new { role = "user", content = "Hi" } }, max_tokens = 3, temperature = 0 };
            Assert.Equal(HttpStatusCode.Unauthorized, (await http.PostAsJsonAsync("/v1/chat/completions", body)).StatusCode);
            http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", "k-123");
            var response = await http.PostAsJsonAsync("/v1/chat/completions", body);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            var json = JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement;
            Assert.Equal(3, json.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
            Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("/")).StatusCode); // the demo
            lock (log) Assert.Contains("Chat completion", log.ToString()); // the per-request log line
        }
        finally
        {
            if (!p.HasExited) p.Kill(entireProcessTree: true);
            await p.WaitForExitAsync();
        }
    }

    [Theory]
    [InlineData("--model is required", "--urls", "http://127.0.0.1:0")]
    [InlineData("Unknown option --modle", "--modle", "x")]
    [InlineData("does not exist", "--model", "/no/such/folder")]
    [InlineData("--max-queue must be positive", "--model", ".", "--max-queue", "0")]
    [InlineData("is not an absolute http, https or file URL prefix", "--model", ".", "--allow-image-url", "ftp://x/")]
    public async Task ABadCommandLineExitsWith2(string message, params string[] args)
    {
        using var p = Process.Start(Server(args))!;
        var err = await p.StandardError.ReadToEndAsync();
        await p.WaitForExitAsync();
        Assert.Equal(2, p.ExitCode);
        Assert.Contains(message, err);
    }
}
