using System.Text.Json;
using ShareGPT4V.Checkpoints;
using ShareGPT4V.Checkpoints.Gguf;
using ShareGPT4V.Configuration;
using ShareGPT4V.Generation;
using ShareGPT4V.Modeling;
using ShareGPT4V.Tokenization;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace ShareGPT4V.Tests.Checkpoints.Gguf;

/// <summary>Where the GGUF fixtures (written by llama.cpp's converters) and their references are.</summary>
internal static class GgufFixtures
{
    public static string Dir => Fixtures.Path("gguf/hf_llama2vocab");
    public static string File(string name) => System.IO.Path.Combine(Dir, name);
    public static string Image(string name) => System.IO.Path.Combine(Dir, "images", name);

    private static JsonElement Load(string name) => JsonDocument.Parse(System.IO.File.ReadAllBytes(File(name))).RootElement.Clone();
    public static JsonElement Transformers { get; } = Load("transformers_on_gguf.json");
    public static JsonElement LlamaCpp { get; } = Load("llamacpp_reference.json");

    public static IEnumerable<(string Name, string Text, string? Image, int[] Ids, int[] InputIds)> Prompts() =>
        Transformers.GetProperty("prompts").EnumerateObject().Select(p => (p.Name, p.Value.GetProperty("text").GetString()!,
            p.Value.TryGetProperty("image", out var i) && i.ValueKind == JsonValueKind.String ? i.GetString() : null,
            Ints(p.Value.GetProperty("generated_ids")), Ints(p.Value.GetProperty("input_ids"))));

    public static int[] Ints(JsonElement e) => e.EnumerateArray().Select(x => x.GetInt32()).ToArray();
}

/// <summary>llama.cpp's GGUF files of the hf_llama2vocab case against the transformers goldens.</summary>
public sealed class GgufModelTests
{
    private static readonly GenerationOptions Greedy = new() { MaxNewTokens = 12, StopAtEndOfSequence = false };

    private static MultimodalPipeline Load(string llm, string mmproj, string dtype = "auto") => MultimodalPipeline.Load(new PipelineOptions
    {
        ModelPath = GgufFixtures.File(llm), MmprojPath = GgufFixtures.File(mmproj), Template = "raw", DType = dtype,
    });

    private static async Task<int[]> Generate(MultimodalPipeline p, string text, string? image) =>
        (await p.GenerateAsync(text, image is null ? null : new[] { ImageInput.FromFile(GgufFixtures.Image(image)) }, Greedy)).TokenIds.ToArray();

    [Fact]
    public async Task F32FilesGiveTheTransformersGreedyIdsForEveryPrompt()
    {
        using var p = Load("llm-f32.gguf", "mmproj-f32.gguf");
        foreach (var (name, text, image, ids, _) in GgufFixtures.Prompts())
        {
            var got = await Generate(p, text, image);
            Assert.True(Enumerable.SequenceEqual(ids, got), name);
        }
    }

    [Fact]
    public async Task Q4_0FileIsUsedAsStoredAndFollowsTheGoldensAsLlamaCppDoes()
    {
        using var p = Load("llm-q4_0.gguf", "mmproj-f16.gguf");
        var named = p.Model.named_parameters().ToDictionary(x => x.name, x => x.parameter);
        // Stored blocks, no float copy: Q4_0 layers and embeddings, the Q8_0 output, float norms.
        var q = Assert.IsType<QuantizedWeight>(named["language_model.model.layers.0.mlp.up_proj.weight"]);
        Assert.Equal(QuantizationFormat.Q4_0, q.Format);
        Assert.Equal(QuantizationFormat.Q4_0, Assert.IsType<QuantizedWeight>(named["language_model.model.embed_tokens.weight"]).Format);
        Assert.Equal(QuantizationFormat.Q8_0, Assert.IsType<QuantizedWeight>(named["language_model.lm_head.weight"]).Format);
        Assert.Equal(ScalarType.Float32, named["language_model.model.norm.weight"].dtype);
        // llama.cpp's own Q4_0 answers leave the goldens at step 5 at the earliest; ours must hold at least as long.
        foreach (var (name, text, image, ids, _) in GgufFixtures.Prompts())
        {
            var got = await Generate(p, text, image);
            Assert.True(Enumerable.SequenceEqual(ids.Take(5), got.Take(5)), name);
        }
    }

    [Fact]
    public void UnpermutedWeightsEqualTheOriginalCheckpoint()
    {
        // The same weights read from the llava-hf checkpoint the GGUF files were converted from.
        using var fromHf = ModelLoader.Load(Fixtures.Path("oracle/hf_llama2vocab"), new LoadOptions { Prefault = false });
        using var fromGguf = ModelLoader.Load(ModelFolder.OpenGguf(GgufFixtures.File("llm-f32.gguf"), GgufFixtures.File("mmproj-f32.gguf")),
            new LoadOptions { Prefault = false });
        var expected = fromHf.named_parameters().ToDictionary(x => x.name, x => x.parameter);
        int compared = 0;
        foreach (var (name, actual) in fromGguf.named_parameters())
        {
            if (name.Contains("post_layernorm") || name.Contains("encoder.layers.2.")) continue; // not in the mmproj file
            var e = expected[name];
            // The mmproj converter always stores the patch and projector matrices as F16.
            bool half = name.Contains("patch_embedding") || name.StartsWith("multi_modal_projector.", StringComparison.Ordinal) && name.EndsWith(".weight");
            using var want = half ? e.to(ScalarType.Float16).to(ScalarType.Float32) : e.alias();
            Assert.True(want.shape.SequenceEqual(actual.shape), name);
            Assert.True(want.equal(actual.to(ScalarType.Float32)).all().item<bool>(), name);
            compared++;
        }
        Assert.Equal(12 + 9 + 16 * 2, compared); // LLM tensors, embeddings/norms/projector of the tower, 2 stored layers
    }

    [Fact]
    public void ConfigComesFromTheMetadata()
    {
        var f = ModelFolder.OpenGguf(GgufFixtures.File("llm-q4_0.gguf"), GgufFixtures.File("mmproj-f16.gguf"));
        var c = f.Config;
        Assert.Equal((32064, 32, 64, 1, 4, 2, 8), (c.Text.VocabSize, c.Text.HiddenSize, c.Text.IntermediateSize, c.Text.NumHiddenLayers,
            c.Text.NumAttentionHeads, c.Text.NumKeyValueHeads, c.Text.HeadDim));
        Assert.Equal((double)9.99999975e-06f, c.Text.RmsNormEps); // the file's f32, not 1e-5
        Assert.Equal((56, 14, 32, 64, 2, 4, "quick_gelu"), (c.Vision.ImageSize, c.Vision.PatchSize, c.Vision.HiddenSize, c.Vision.IntermediateSize,
            c.Vision.NumHiddenLayers, c.Vision.NumAttentionHeads, c.Vision.HiddenAct));
        Assert.Equal(2, c.VisionFeatureLayer); // hidden state 2 = HF's -2 of the 3-layer tower
        Assert.Equal(32000, c.ImageTokenIndex);
        Assert.Equal(16, c.ImageSeqLength);
        Assert.False(c.Text.TieWordEmbeddings);
    }

    [Fact]
    public void TokenizerFromTheMetadataGivesTheGoldenInputIds()
    {
        var tok = LlavaTokenizer.LoadGguf(GgufFixtures.File("llm-q4_0.gguf"));
        Assert.Equal(TokenizerFileKind.Gguf, tok.FileKind);
        foreach (var (name, text, _, _, inputIds) in GgufFixtures.Prompts())
        {
            Assert.True(inputIds.SequenceEqual(tok.EncodePrompt(text, 32000)), name);
            // Control tokens written in text are split out as single ids.
            Assert.Equal(new[] { 1, 2 }, tok.Encode("</s>", addBos: true).Take(2));
        }
        Assert.Equal(" What is the capital of France?", " " + tok.Decode(tok.Encode("What is the capital of France?")));
    }

    [Fact]
    public void AModelPathWithoutItsMmprojIsRefusedNamingTheOption()
    {
        var e = Assert.Throws<ModelConfigurationException>(() => MultimodalPipeline.Load(new PipelineOptions { ModelPath = GgufFixtures.File("llm-q4_0.gguf") }));
        Assert.Contains("mmproj", e.Message, StringComparison.OrdinalIgnoreCase);
        var swapped = Assert.Throws<ModelConfigurationException>(() => ModelFolder.OpenGguf(GgufFixtures.File("mmproj-f16.gguf"), GgufFixtures.File("llm-q4_0.gguf")));
        Assert.Contains("general.architecture", swapped.Message);
    }
}
