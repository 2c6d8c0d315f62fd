using System.Runtime.InteropServices;
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

    private static readonly Dictionary<string, Tensor> Embeddings = new();

    /// <summary>Each image is encoded once per case (the settings share it); the caller gets a copy.</summary>
    private static Tensor ImageEmbeddings(LlavaModel model, GoldenCase oracle, string image, string variant)
    {
        lock (Embeddings)
        {
            var key = $"{oracle.Name}/{image}/{variant}";
            if (!Embeddings.TryGetValue(key, out var e))
            {
                using (torch.no_grad())
                using (var pixels = oracle.Pixels(Path.GetFileNameWithoutExtension(image), variant))
                    e = model.EncodeImages(pixels);
                e.DetachFromDisposeScope();
                Embeddings[key] = e;
            }
            return e.clone();
        }
    }

    /// <summary>Generated ids, the EOS included when it ended generation (as transformers reports them).</summary>
    private static int[] Generate(LlavaModel model, GoldenCase oracle, JsonElement prompt, long[] ids, GenerationOptions options, int eos)
    {
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        Tensor? images = prompt.GetProperty("image").ValueKind == JsonValueKind.String
            ? ImageEmbeddings(model, oracle, prompt.GetProperty("image").GetString()!, prompt.GetProperty("pixel_variant").GetString()!)
            : null;
        var promptHistory = ProcessorHistory.ForPrompt(model.Config, ids.Select(x => (int)x).ToArray());
        int beams = options.NumBeams;
        using var inputs = model.BuildInputs(Enumerable.Repeat(ids, beams).ToList(), images is null || beams == 1 ? images : images.repeat(beams, 1, 1));
        using var cache = model.CreateCache(beams, (int)inputs.Length + options.MaxNewTokens + 1);
        using var generator = new TokenGenerator(model, cache);
        if (beams > 1)
        {
            var (best, endedWithEos, _) = BeamSearchRunner.Run(generator, inputs, new BeamSearch(options, promptHistory, eos, options.MaxNewTokens));
            return endedWithEos ? best.Append(eos).ToArray() : best;
        }
        // The pipeline's per-row step: the sampler with the layout's history, the generated id appended.
        var sampler = new Sampler(options);
        var history = promptHistory;
        var output = new List<int>();
        var logits = generator.Prefill(inputs);
        for (int step = 0; step < options.MaxNewTokens; step++)
        {
            int id = sampler.Sample(logits[0].data<float>().ToArray(), CollectionsMarshal.AsSpan(history));
            output.Add(id);
            history.Add(id);
            if (id == eos || step + 1 == options.MaxNewTokens) break;
            logits = generator.DecodeOneToken(new long[] { id });
        }
        return output.ToArray();
    }
}
