using System.Diagnostics;
using System.Text.Json;
using ShareGPT4V.Tests.Oracle;
using Xunit;

namespace ShareGPT4V.Tests.Samples;

/// <summary>The <c>sharegpt4v</c> command-line sample, run as a process the way a user runs it, on the hf_llama2vocab oracle case.</summary>
public sealed class CliTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("sgpt4v-cli-").FullName;
    private readonly GoldenCase _case = GoldenCase.Get("hf_llama2vocab");

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    internal sealed record Run(int ExitCode, string Out, string Err);

    internal static Run Cli(string? stdin, params string[] args)
    {
        using var p = Process.Start(CliProcess.StartInfo(args, input: true))!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (stdin is not null) p.StandardInput.Write(stdin);
        p.StandardInput.Close();
        if (!p.WaitForExit(120_000))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail("the CLI did not finish within 2 minutes");
        }
        return new Run(p.ExitCode, stdout.Result, stderr.Result);
    }

    private int[] GoldenIds(string prompt) => _case.Prompt(prompt).GetProperty("generated_ids").EnumerateArray().Select(x => x.GetInt32()).ToArray();
    private string Image(string name) => Path.Combine(_case.Dir, name + ".png");
    private static int[] Ids(JsonElement answer) => answer.GetProperty("token_ids").EnumerateArray().Select(x => x.GetInt32()).ToArray();

    [Fact]
    public void CaptionAsJsonReproducesTheGoldenIds()
    {
        var r = Cli(null, "caption", "--model", _case.ModelPath, "--image", Image("image1"), "--template", "llava_v1",
            "--max-new-tokens", "12", "--json");
        Assert.True(r.ExitCode == 0, r.Err);
        var answer = JsonDocument.Parse(r.Out).RootElement;
        Assert.Equal(GoldenIds("main"), Ids(answer));
        Assert.Equal("Length", answer.GetProperty("finish_reason").GetString());
        Assert.False(string.IsNullOrEmpty(answer.GetProperty("text").GetString()));
    }

    [Fact]
    public void GgufF32PairThroughCaptionAndChatGivesTheTransformersIds()
    {
        // llama.cpp's LLM + mmproj files, the issue's command lines exactly.
        var prompts = Checkpoints.Gguf.GgufFixtures.Prompts().ToDictionary(p => p.Name);
        string llm = Checkpoints.Gguf.GgufFixtures.File("llm-f32.gguf"), mmproj = Checkpoints.Gguf.GgufFixtures.File("mmproj-f32.gguf");
        var main = prompts["main"];
        var r = Cli(null, "caption", "--model", llm, "--mmproj", mmproj, "--image", Checkpoints.Gguf.GgufFixtures.Image(main.Image!),
            "--prompt", main.Text, "--template", "raw", "--temperature", "0", "--max-new-tokens", "12", "--json");
        Assert.True(r.ExitCode == 0, r.Err);
        Assert.Equal(main.Ids, Ids(JsonDocument.Parse(r.Out).RootElement));
        var text = prompts["text"];
        r = Cli(null, "chat", "--model", llm, "--mmproj", mmproj, "--prompt", text.Text, "--template", "raw", "--temperature", "0",
            "--max-new-tokens", "12", "--json");
        Assert.True(r.ExitCode == 0, r.Err);
        Assert.Equal(text.Ids, Ids(JsonDocument.Parse(r.Out).RootElement));
    }

    [Fact]
    public void RawTemplateUsesThePromptAsWritten()
    {
        var main = _case.Prompt("main");
        var r = Cli(null, "chat", "--model", _case.ModelPath, "--image", Image("image1"), "--template", "raw",
            "--prompt", main.GetProperty("text").GetString()!, "--max-new-tokens", "12", "--json");
        Assert.True(r.ExitCode == 0, r.Err);
        var answer = JsonDocument.Parse(r.Out).RootElement;
        Assert.Equal(GoldenIds("main"), Ids(answer));
        Assert.Equal(main.GetProperty("expanded_length").GetInt32(), answer.GetProperty("prompt_tokens").GetInt32());
    }

    [Fact]
    public void AFolderIsCaptionedAsJsonLinesAndABadImageIsReportedNotFatal()
    {
        var folder = Path.Combine(_dir, "images");
        Directory.CreateDirectory(folder);
        File.Copy(Image("image1"), Path.Combine(folder, "a.png"));
        File.WriteAllText(Path.Combine(folder, "b.png"), "not an image");
        File.Copy(Image("image2"), Path.Combine(folder, "c.png"));
        File.WriteAllText(Path.Combine(folder, "notes.txt"), "ignored");
        var output = Path.Combine(_dir, "captions.jsonl");
        var r = Cli(null, "caption", "--model", _case.ModelPath, "--image", folder, "--template", "llava_v1",
            "--max-new-tokens", "12", "--output", output);
        Assert.Equal(1, r.ExitCode); // one image failed
        Assert.Contains("b.png", r.Err);
        var lines = File.ReadAllLines(output).Select(l => JsonDocument.Parse(l).RootElement).ToArray();
        Assert.Equal(new[] { "a.png", "b.png", "c.png" }, lines.Select(l => Path.GetFileName(l.GetProperty("image").GetString())));
        Assert.Equal(GoldenIds("main"), Ids(lines[0]));
        Assert.Contains("not an image", lines[1].GetProperty("error").GetString());
        Assert.Equal("ImageInputException", lines[1].GetProperty("error_type").GetString());
        Assert.Equal(12, Ids(lines[2]).Length);
    }

    [Fact]
    public void InteractiveChatKeepsTheConversation()
    {
        var stdin = $"What is the capital of France?\n/image {Image("image2")}\nAnd in this picture?\n/exit\n";
        var r = Cli(stdin, "chat", "--model", _case.ModelPath, "--template", "llava_v1", "--max-new-tokens", "6", "--temperature", "0");
        Assert.True(r.ExitCode == 0, r.Err);
        var answers = r.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(2, answers.Length);
        Assert.DoesNotContain("error", r.Err);
    }

    [Fact]
    public void ConvertThenCaptionFromTheConvertedFolder()
    {
        var output = Path.Combine(_dir, "converted");
        var r = Cli(null, "convert", "--model", _case.ModelPath, "--output", output, "--layout", "original", "--max-shard-size", "4MB");
        Assert.True(r.ExitCode == 0, r.Err);
        var llm = Path.Combine(output, "hf_llama2vocab");
        Assert.Contains($"--model {llm}", r.Out);
        Assert.True(File.Exists(Path.Combine(llm, "model.safetensors.index.json")));
        var c = Cli(null, "caption", "--model", llm, "--image", Image("image1"), "--template", "llava_v1", "--max-new-tokens", "12", "--json");
        Assert.True(c.ExitCode == 0, c.Err);
        Assert.Equal(GoldenIds("main"), Ids(JsonDocument.Parse(c.Out).RootElement));
    }

    [Theory]
    [InlineData(2, "Unknown option --temprature", "caption", "--model", "M", "--image", "I", "--temprature", "1")]
    [InlineData(2, "--model is required", "caption", "--image", "I")]
    [InlineData(2, "must be a number in [0, 100]", "caption", "--model", "M", "--image", "I", "--temperature", "hot")]
    [InlineData(2, "Unknown command 'describe'", "describe")]
    [InlineData(1, "Configuration file not found", "caption", "--model", "EMPTY", "--image", "I")]
    [InlineData(1, "exceeds the context window of 2048", "caption", "--model", "M", "--image", "I", "--max-new-tokens", "5000")]
    [InlineData(2, "--layout must be same, llava-hf or original", "convert", "--model", "M", "--output", "OUT", "--layout", "gguf")]
    // CUDA goes through ShareGPT4V.Cuda's provider: without a CUDA libtorch and driver it is refused, saying why.
    [InlineData(1, "Device 'cuda:0' was requested but CUDA cannot be used: the CUDA build of libtorch", "caption", "--model", "M", "--image", "I", "--device", "cuda:0")]
    [InlineData(1, "Device 'gpu' is not a device this library knows", "caption", "--model", "M", "--image", "I", "--device", "gpu")]
    // This CLI carries the CPU libtorch package: another libtorch next to it would abort the process, so it is refused.
    [InlineData(1, "the app carries its own libtorch", "caption", "--model", "M", "--image", "I", "--libtorch-dir", "LIBTORCH")]
    public void BadCommandLinesFailWithAClearMessage(int exitCode, string message, params string[] args)
    {
        Directory.CreateDirectory(Path.Combine(_dir, "empty"));
        var libtorch = Directory.CreateDirectory(Path.Combine(_dir, "libtorch")).FullName;
        foreach (var lib in new[] { "libc10.so", "libtorch_cpu.so" }) File.WriteAllBytes(Path.Combine(libtorch, lib), Array.Empty<byte>());
        var resolved = args.Select(a => a switch
        {
            "M" => _case.ModelPath,
            "I" => Image("image1"),
            "EMPTY" => Path.Combine(_dir, "empty"),
            "OUT" => Path.Combine(_dir, "out"),
            "LIBTORCH" => libtorch,
            _ => a,
        }).ToArray();
        var r = Cli(null, resolved);
        Assert.Equal(exitCode, r.ExitCode);
        Assert.Contains(message, r.Err);
    }

    [Fact]
    public void HelpListsEveryOptionOfTheIssue()
    {
        var r = Cli(null, "caption", "--help");
        Assert.Equal(0, r.ExitCode);
        foreach (var option in new[] { "--model", "--vision-tower", "--image", "--prompt", "--template", "--max-new-tokens", "--temperature", "--json", "--device", "--libtorch-dir" })
            Assert.Contains(option, r.Out);
    }
}
