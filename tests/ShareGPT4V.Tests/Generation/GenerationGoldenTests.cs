using System.Text.Json;
using ShareGPT4V.Generation;
using ShareGPT4V.Tests.Oracle;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace ShareGPT4V.Tests.Decoding;

/// <summary>
/// transformers 4.45.2 <c>generate()</c> goldens (Fixtures/generation/golden.json) with repetition penalty, no-repeat
/// n-grams and beam search, on the three oracle models of both layouts, through the library's sampler and beam search
/// (hf_tiny and llava_tiny336 have no tokenizer, so the command line cannot drive them; CliGenerationTests runs the
/// command line on hf_llama2vocab).
/// </summary>
public sealed class GenerationGoldenTests
{
    private static readonly Lazy<JsonElement> Golden = new(() =>
        JsonDocument.Parse(File.ReadAllBytes(Fixtures.Path("generation/golden.json"))).RootElement.Clone());

    public static TheoryData<string, string> Runs()
    {
        var data = new TheoryData<string, string>();
        foreach (var c in Golden.Value.GetProperty("cases").EnumerateObject())
            foreach (var s in c.Value.GetProperty("runs").EnumerateObject())
                data.Add(c.Name, s.Name);
        return data;
    }

    [Theory, MemberData(nameof(Runs))]
    public void GeneratedIdsMatchTransformers(string caseName, string setting)
    {
        var gc = Golden.Value.GetProperty("cases").GetProperty(caseName);
        var oracle = GoldenCase.Get(caseName);
        var model = OracleModelTests.Model(oracle);
        var kwargs = Golden.Value.GetProperty("settings").GetProperty(setting).GetProperty("generate_kwargs");
        int maxNew = gc.GetProperty("max_new_tokens").GetInt32();
        var options = ProcessorGoldens.OptionsFor(kwargs) with { MaxNewTokens = maxNew };
        int eos = gc.GetProperty("generation_config").GetProperty("eos_token_id").GetInt32();
        foreach (var run in gc.GetProperty("runs").GetProperty(setting).EnumerateObject())
        {
            var prompt = gc.GetProperty("prompts").GetProperty(run.Name);
            var ids = GoldenCase.Ids(prompt.GetProperty(prompt.TryGetProperty("generate_input_ids", out var g) ? "generate_input_ids" : "input_ids"));
            var expected = run.Value.GetProperty("generated_ids").EnumerateArray().Select(x => x.GetInt32()).ToArray();
            var actual = Generate(model, oracle, prompt, ids, options, eos);
            Assert.True(expected.SequenceEqual(actual),
                $"{caseName} {setting} {run.Name}: expected [{string.Join(", ", expected)}], got [{string.Join(", ", actual)}]");
        }
    }

    [Theory]
    [InlineData("hf_tiny")]
    [InlineData("hf_llama2vocab")]
    [InlineData("llava_tiny336")]
    public void TheProcessorsSeeWhatEachLayoutsReferencePassesThem(string caseName)
    {
        // llava-hf: the expanded prompt generate() was called with (from the one-placeholder prompt our tokenizer
        // gives); original layout: nothing, since LLaVA calls generate(inputs_embeds=...) without ids.
        var config = ShareGPT4V.Configuration.ModelFolder.Open(GoldenCase.Get(caseName).ModelPath).Config;
        foreach (var prompt in Golden.Value.GetProperty("cases").GetProperty(caseName).GetProperty("prompts").EnumerateObject())
        {
            var p = prompt.Value;
            if (p.TryGetProperty("generate_input_ids", out var expected))
            {
                var single = GoldenCase.Ids(p.GetProperty("input_ids_single_placeholder")).Select(x => (int)x).ToArray();
                Assert.Equal(GoldenCase.Ids(expected).Select(x => (int)x), ProcessorHistory.ForPrompt(config, single));
                Assert.Equal(GoldenCase.Ids(expected).Select(x => (int)x), ProcessorHistory.ForPrompt(config, GoldenCase.Ids(expected).Select(x => (int)x).ToArray()));
            }
            else Assert.Empty(ProcessorHistory.ForPrompt(config, GoldenCase.Ids(p.GetProperty("input_ids")).Select(x => (int)x).ToArray()));
        }
    }

    /// <summary>
    /// Generated ids through the generation engine users call, the EOS included when it ended generation (as
    /// transformers reports them). Beam search takes one slot per beam.
    /// </summary>
    private static int[] Generate(LlavaModel model, GoldenCase oracle, JsonElement prompt, long[] ids, GenerationOptions options, int eos)
    {
        Assert.Equal(eos, model.Config.Text.EosTokenId); // the engine without a tokenizer stops at the config's EOS
        using var scope = NewDisposeScope();
        var images = prompt.GetProperty("image").ValueKind == JsonValueKind.String
            ? new[] { new EngineImage(oracle.Pixels(Path.GetFileNameWithoutExtension(prompt.GetProperty("image").GetString()!), prompt.GetProperty("pixel_variant").GetString()!)) }
            : Array.Empty<EngineImage>();
        using var engine = OracleModelTests.EngineFor(oracle, model, Math.Max(1, options.NumBeams));
        var request = new SequenceRequest { PromptIds = ids.Select(x => (int)x).ToArray(), Images = images, Options = options };
        var result = options.IsBeamSearch ? engine.RunBeams(request) : engine.Run(new[] { request })[0];
        Assert.Equal(0, engine.ActiveCount);
        return result.FinishReason == FinishReason.EndOfSequence ? result.TokenIds.Append(eos).ToArray() : result.TokenIds.ToArray();
    }
}
