using System.Text.Json;
using ShareGPT4V.Checkpoints;
using ShareGPT4V.Tests.Oracle;
using Xunit;

namespace ShareGPT4V.Tests.Samples;

/// <summary>
/// The generation goldens of transformers 4.45.2 (repetition penalty, no-repeat n-grams, beam search) through the
/// command line as a process, on hf_llama2vocab (the oracle case with a tokenizer), in its llava-hf layout and
/// converted to the original layout. The tiny cases without a tokenizer run through the library in
/// GenerationGoldenTests.
/// </summary>
public sealed class CliGenerationTests
{
    private static readonly JsonElement Golden = JsonDocument.Parse(File.ReadAllBytes(Fixtures.Path("generation/golden.json"))).RootElement.Clone();
    private static readonly Lazy<string> Original = new(() =>
    {
        var dir = Directory.CreateTempSubdirectory("sgpt4v-cli-gen-").FullName;
        AppDomain.CurrentDomain.ProcessExit += (_, _) => { try { Directory.Delete(dir, true); } catch (IOException) { } };
        return ModelConverter.Convert(GoldenCase.Get("hf_llama2vocab").ModelPath, Path.Combine(dir, "out"),
            new ModelConversionOptions { Layout = TargetLayout.Original }).ModelPath;
    });

    [Theory]
    [InlineData("chat", "main", "greedy_rep0.5", "--repetition-penalty", "0.5")]
    [InlineData("chat", "text", "greedy_rep1.3", "--repetition-penalty", "1.3")]
    [InlineData("chat", "text", "greedy_ngram2", "--no-repeat-ngram-size", "2")]
    [InlineData("caption", "main", "beam3", "--num-beams", "3", "--length-penalty", "1.0")]
    [InlineData("chat", "text", "beam2_rep0.9_lp0.5", "--num-beams", "2", "--length-penalty", "0.5", "--repetition-penalty", "0.9")]
    // No hypothesis ever ends with EOS in these models, so --early-stopping changes nothing here: the flag is accepted.
    [InlineData("chat", "main", "beam3_ngram2", "--num-beams", "3", "--no-repeat-ngram-size", "2", "--early-stopping")]
    // Without penalty or n-grams the history does not matter, so the original layout must give llava-hf's ids.
    [InlineData("chat", "text", "beam2_lp0.5", "--num-beams", "2", "--length-penalty", "0.5", "original")]
    public void TheCommandLineReproducesTransformersIds(string command, string prompt, string setting, params string[] options)
    {
        var c = GoldenCase.Get("hf_llama2vocab");
        var gc = Golden.GetProperty("cases").GetProperty("hf_llama2vocab");
        var p = gc.GetProperty("prompts").GetProperty(prompt);
        bool original = options.Contains("original");
        var args = new List<string> { command, "--model", original ? Original.Value : c.ModelPath, "--temperature", "0", "--json", "--max-new-tokens", "12" };
        if (command == "caption") args.AddRange(new[] { "--template", "llava_v1" }); // renders exactly the golden's main prompt
        else args.AddRange(new[] { "--template", "raw", "--prompt", p.GetProperty("text").GetString()! });
        if (p.GetProperty("image").ValueKind == JsonValueKind.String) args.AddRange(new[] { "--image", Path.Combine(c.Dir, p.GetProperty("image").GetString()!) });
        args.AddRange(options.Where(o => o != "original"));

        var r = CliTests.Cli(null, args.ToArray());
        Assert.True(r.ExitCode == 0, r.Err);
        var answer = JsonDocument.Parse(r.Out).RootElement;
        var expected = gc.GetProperty("runs").GetProperty(setting).GetProperty(prompt).GetProperty("generated_ids").EnumerateArray().Select(x => x.GetInt32());
        Assert.Equal(expected, answer.GetProperty("token_ids").EnumerateArray().Select(x => x.GetInt32()));
        Assert.Equal("Length", answer.GetProperty("finish_reason").GetString());
    }

    [Fact]
    public void AFolderIsCaptionedWithBeamSearchOneImageAtATime()
    {
        var c = GoldenCase.Get("hf_llama2vocab");
        var dir = Directory.CreateTempSubdirectory("sgpt4v-cli-beams-").FullName;
        try
        {
            foreach (var name in new[] { "a.png", "b.png" }) File.Copy(Path.Combine(c.Dir, "image1.png"), Path.Combine(dir, name));
            var output = Path.Combine(dir, "captions.jsonl");
            var r = CliTests.Cli(null, "caption", "--model", c.ModelPath, "--image", dir, "--template", "llava_v1", "--max-new-tokens", "12",
                "--num-beams", "2", "--length-penalty", "0.5", "--output", output);
            Assert.True(r.ExitCode == 0, r.Err);
            var expected = Golden.GetProperty("cases").GetProperty("hf_llama2vocab").GetProperty("runs").GetProperty("beam2_lp0.5").GetProperty("main")
                .GetProperty("generated_ids").EnumerateArray().Select(x => x.GetInt32()).ToArray();
            var lines = File.ReadAllLines(output).Select(l => JsonDocument.Parse(l).RootElement).ToArray();
            Assert.Equal(2, lines.Length);
            Assert.All(lines, l => Assert.Equal(expected, l.GetProperty("token_ids").EnumerateArray().Select(x => x.GetInt32())));
        }
        finally { Directory.Delete(dir, true); }
    }

    [Theory]
    [InlineData("caption")]
    [InlineData("chat")]
    public void HelpListsTheGenerationOptions(string command)
    {
        var r = CliTests.Cli(null, command, "--help");
        Assert.Equal(0, r.ExitCode);
        foreach (var option in new[] { "--repetition-penalty <R>", "--no-repeat-ngram-size <K>", "--num-beams <B>", "--length-penalty <L>", "--min-p", "--early-stopping" })
            Assert.Contains(option, r.Out);
    }

    [Fact]
    public void BeamSearchWithSamplingIsABadCommandLine()
    {
        var r = CliTests.Cli(null, "chat", "--model", "M", "--prompt", "hi", "--num-beams", "2", "--temperature", "0.7");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("--num-beams above 1 needs --temperature 0", r.Err);
    }
}
