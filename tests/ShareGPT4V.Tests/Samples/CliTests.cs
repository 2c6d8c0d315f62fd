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
    [InlineData(2, "Unknown option --temprature for 'caption'", "caption", "--model", "M", "--image", "I", "--temprature", "1")]
    [InlineData(2, "--model is required", "caption", "--image", "I")]
    [InlineData(2, "--temperature must be in [0, 100], got hot", "caption", "--model", "M", "--image", "I", "--temperature", "hot")]
    [InlineData(2, "Unknown command 'describe'", "describe")]
    [InlineData(1, "Configuration file not found", "caption", "--model", "EMPTY", "--image", "I")]
    [InlineData(1, "exceeds the context window of 2048 (give --max-new-tokens", "caption", "--model", "M", "--image", "I", "--max-new-tokens", "5000")]
    // One-shot chat: the overflow advice names the command's flags, not the library's option names.
    [InlineData(1, "--max-new-tokens asks for 5000", "chat", "--model", "M", "--prompt", "hi", "--max-new-tokens", "5000")]
    [InlineData(1, "more than the context window of 64: shorten --prompt or give fewer --image", "chat", "--model", "M", "--prompt", "LONG", "--context-length", "64")]
    [InlineData(2, "--layout must be same, llava-hf or original", "convert", "--model", "M", "--output", "OUT", "--layout", "gguf")]
    // CUDA goes through ShareGPT4V.Cuda's provider: without a CUDA libtorch and driver it is refused, saying why.
    [InlineData(1, "Device 'cuda:0' was requested but CUDA cannot be used: the CUDA build of libtorch", "caption", "--model", "M", "--image", "I", "--device", "cuda:0")]
    // The faults of issue 13: every bad command line exits with 2, and the message says what is allowed.
    [InlineData(2, "'gpu' is not a device this library knows", "caption", "--model", "M", "--image", "I", "--device", "gpu")]
    [InlineData(2, "--template must be one of vicuna_v1, llava_v1", "caption", "--model", "M", "--image", "I", "--template", "vicuna_v9")]
    [InlineData(2, "--dtype must be one of auto, float32, bfloat16, float16, q8_0, q4_0, got 'int3'", "caption", "--model", "M", "--image", "I", "--dtype", "int3")]
    [InlineData(2, "--top-p must be in (0, 1], got 5", "caption", "--model", "M", "--image", "I", "--top-p", "5")]
    [InlineData(2, "--top-p must be in (0, 1], got 0", "chat", "--model", "M", "--prompt", "hi", "--top-p", "0")]
    [InlineData(2, "--max-new-tokens must be a whole number in [0, 1048576], got 'many'", "caption", "--model", "M", "--image", "I", "--max-new-tokens", "many")]
    [InlineData(2, "the model folder 'MISSING' does not exist", "caption", "--model", "MISSING", "--image", "I")]
    [InlineData(2, "--model must be a model folder (or a hub id, or a llama.cpp .gguf file), not a file: 'M/model.safetensors'", "caption", "--model", "M/model.safetensors", "--image", "I")]
    [InlineData(2, "Image 'MISSING' does not exist", "caption", "--model", "M", "--image", "MISSING")]
    [InlineData(2, "--model must be a model folder (or a hub id), not a file: 'M/model.safetensors'", "convert", "--model", "M/model.safetensors", "--output", "OUT")]
    [InlineData(2, "--model: the model folder 'MISSING' does not exist", "train", "--model", "MISSING", "--data", "d.json", "--output", "OUT")]
    [InlineData(2, "Option '--prompt' expects a single argument but 2 were provided", "caption", "--model", "M", "--image", "I", "--prompt", "a", "--prompt", "b")]
    [InlineData(2, "Unknown command 'grade' for 'eval'", "eval", "grade")]
    [InlineData(2, "Required argument 'REPO' missing for command: 'download'", "download")]
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
            "M/model.safetensors" => Path.Combine(_case.ModelPath, "model.safetensors"),
            "MISSING" => Path.Combine(_dir, "no-such-folder"),
            "LONG" => string.Concat(Enumerable.Repeat("word ", 200)),
            "I" => Image("image1"),
            "EMPTY" => Path.Combine(_dir, "empty"),
            "OUT" => Path.Combine(_dir, "out"),
            "LIBTORCH" => libtorch,
            _ => a,
        }).ToArray();
        var r = Cli(null, resolved);
        Assert.Equal(exitCode, r.ExitCode);
        message = message.Replace("M/model.safetensors", Path.Combine(_case.ModelPath, "model.safetensors")).Replace("MISSING", Path.Combine(_dir, "no-such-folder"));
        Assert.Contains(message, r.Err);
        // A bad command line points at the verb's help.
        if (exitCode == 2) Assert.Contains("--help')", r.Err);
    }

    [Fact]
    public void HelpListsEveryOptionOfTheIssue()
    {
        var r = Cli(null, "caption", "--help");
        Assert.Equal(0, r.ExitCode);
        foreach (var option in new[] { "--model", "--vision-tower", "--image", "--prompt", "--template", "--max-new-tokens", "--temperature", "--json", "--device", "--libtorch-dir" })
            Assert.Contains(option, r.Out);
    }

    [Fact]
    public void HelpPutsEachOptionOnItsOwnLine()
    {
        var verbs = new (string[] Verb, string[] Options)[]
        {
            (new[] { "caption" }, new[] { "--model", "--vision-tower", "--top-p", "--no-repeat-ngram-size", "--stop" }),
            (new[] { "train" }, new[] { "--adam-beta1", "--adam-beta2", "--adam-epsilon", "--gradient-accumulation-steps" }),
            (new[] { "convert" }, new[] { "--vision-tower", "--max-shard-size", "--dtype" }),
            (new[] { "eval", "run" }, new[] { "--benchmark", "--skip-missing-images", "--model" }),
        };
        foreach (var (verb, options) in verbs)
        {
            var r = Cli(null, [.. verb, "--help"]);
            Assert.True(r.ExitCode == 0, r.Err);
            var lines = r.Out.Split('\n');
            foreach (var o in options)
                Assert.Single(lines, l => System.Text.RegularExpressions.Regex.IsMatch(l, $@"^\s+{o}( <[^>]+>)?\s{{2,}}\S"));
            Assert.DoesNotContain(lines, l => System.Text.RegularExpressions.Regex.IsMatch(l, @"^\s+--[a-z0-9-]+( <[^>]+>)?,? +--[a-z]"));
        }
    }

    [Fact]
    public void VersionNoArgumentsAndCompletion()
    {
        var v = Cli(null, "--version");
        Assert.Equal(0, v.ExitCode);
        Assert.Matches(@"^\d+\.\d+\.\d+(-[0-9A-Za-z.]+)?$", v.Out.Trim());

        // No verb: the commands are listed, and it is a bad command line.
        var none = Cli(null);
        Assert.Equal(2, none.ExitCode);
        foreach (var verb in new[] { "caption", "chat", "convert", "eval", "download", "merge", "train", "merge-lora" })
            Assert.Contains(verb, none.Out);

        // Tab completion (System.CommandLine's [suggest] directive): options of a verb, and the values of --template.
        string line = "sharegpt4v caption --tem";
        var options = Cli(null, $"[suggest:{line.Length}]", line);
        Assert.Equal(0, options.ExitCode);
        Assert.Equal(new[] { "--temperature", "--template" }, options.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
        line = "sharegpt4v chat --template llava_";
        var templates = Cli(null, $"[suggest:{line.Length}]", line);
        Assert.Contains("llava_v1", templates.Out.Split('\n', StringSplitOptions.TrimEntries));
        Assert.Contains("llava_hf", templates.Out.Split('\n', StringSplitOptions.TrimEntries));
    }
}
