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
            var log = new System.Text.StringBuilder();
            var url = await StartAndWaitHealthy(p, log);
            using var http = new HttpClient { BaseAddress = new Uri(url) };
            var body = new { model = "hf_llama2vocab", messages = new[] { new { role = "user", content = "Hi" } }, max_tokens = 3, temperature = 0 };
            Assert.Equal(HttpStatusCode.Unauthorized, (await http.PostAsJsonAsync("/v1/chat/completions", body)).StatusCode);
            http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", "k-123");
            var response = await http.PostAsJsonAsync("/v1/chat/completions", body);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            var json = JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement;
            Assert.Equal(3, json.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
            Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("/")).StatusCode); // the demo
            // The per-request log line: the console logger writes on its own thread, so it may follow the response.
            var deadline = DateTime.UtcNow.AddSeconds(20);
            while (!LogHas(log, "Chat completion") && DateTime.UtcNow < deadline) await Task.Delay(50);
            lock (log) Assert.Contains("Chat completion", log.ToString());
        }
        finally
        {
            if (!p.HasExited) p.Kill(entireProcessTree: true);
            await p.WaitForExitAsync();
        }
    }

    private static bool LogHas(System.Text.StringBuilder log, string text)
    {
        lock (log) return log.ToString().Contains(text, StringComparison.Ordinal);
    }

    /// <summary>Starts the server, waits for /health, and returns its address; the log collects stdout and stderr.</summary>
    private static async Task<string> StartAndWaitHealthy(Process p, System.Text.StringBuilder log)
    {
        var address = new TaskCompletionSource<string>();
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
            lock (log) Assert.True(DateTime.UtcNow < until, "not healthy within 60 s:\n" + log);
            await Task.Delay(100);
        }
        return url;
    }

    /// <summary>The greedy answer to one text prompt from a server started with <paramref name="args"/>.</summary>
    private static async Task<(string Model, string Text, string Log)> GreedyAnswer(params string[] args)
    {
        using var p = Process.Start(Server([.. args, "--urls", "http://127.0.0.1:0"]))!;
        var log = new System.Text.StringBuilder();
        try
        {
            var url = await StartAndWaitHealthy(p, log);
            using var http = new HttpClient { BaseAddress = new Uri(url) };
            var models = JsonDocument.Parse(await http.GetStringAsync("/v1/models")).RootElement;
            string model = models.GetProperty("data")[0].GetProperty("id").GetString()!;
            var body = new { model, messages = new[] { new { role = "user", content = "Describe the weather." } }, max_tokens = 6, temperature = 0 };
            var response = await http.PostAsJsonAsync("/v1/chat/completions", body);
            var text = await response.Content.ReadAsStringAsync();
            Assert.True(response.StatusCode == HttpStatusCode.OK, text);
            var json = JsonDocument.Parse(text).RootElement;
            Assert.Equal(6, json.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
            lock (log) return (model, json.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString()!, log.ToString());
        }
        finally
        {
            if (!p.HasExited) p.Kill(entireProcessTree: true);
            await p.WaitForExitAsync();
        }
    }

    [Fact]
    public async Task ALlamaCppGgufPairServesWhatTheFolderServes()
    {
        // llama.cpp's F32 conversion of the same weights gives transformers' ids, so with the same template the
        // answers are equal (by default the llava-hf folder gets llava-hf's template and the GGUF file llava_v1).
        string gguf = Path.Combine(AppContext.BaseDirectory, "Fixtures", "gguf");
        var folder = await GreedyAnswer("--model", ServerFixture.ModelDir, "--template", "vicuna_v1");
        var pair = await GreedyAnswer("--model", Path.Combine(gguf, "llm-f32.gguf"), "--mmproj", Path.Combine(gguf, "mmproj-f32.gguf"), "--template", "vicuna_v1");
        Assert.Equal("llm-f32", pair.Model);
        Assert.Equal(folder.Text, pair.Text);
    }

    [Fact]
    public async Task DTypeQ8_0QuantizesTheLanguageModelAtLoad()
    {
        var q8 = await GreedyAnswer("--model", ServerFixture.ModelDir, "--dtype", "q8_0");
        Assert.Contains("q8_0", q8.Log); // the load logs the storage it chose
    }

    [Theory]
    [InlineData("--model is required", "--urls", "http://127.0.0.1:0")]
    [InlineData("--mmproj goes with a --model that is a .gguf file", "--model", ".", "--mmproj", "x.gguf")]
    [InlineData("--dtype must be auto, fp32, bf16, fp16, q8_0 or q4_0, got 'q5_1'", "--model", ".", "--dtype", "q5_1")]
    [InlineData("the file '/no/such.gguf' does not exist", "--model", "/no/such.gguf")]
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
