using System.Text.Json;
using ShareGPT4V.Checkpoints;
using ShareGPT4V.Configuration;
using ShareGPT4V.Modeling;
using Xunit;

namespace ShareGPT4V.Tests.Checkpoints;

/// <summary>
/// The real checkpoints' weight lists (from their published indexes and configs) against our models built at full
/// size on the meta device: every name must map to a parameter of the same shape and every parameter must be covered,
/// so these checkpoints load without our having the weights here.
/// </summary>
public class RealCheckpointKeyTests
{
    private static Dictionary<string, long[]> Keys(string relative)
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(Fixtures.Path("anchors/" + relative)));
        return doc.RootElement.EnumerateObject().ToDictionary(p => p.Name, p => p.Value.EnumerateArray().Select(x => x.GetInt64()).ToArray());
    }

    private static Dictionary<string, long[]> Model(LlavaConfig config)
    {
        var meta = new MetaWeightSource();
        using var model = new LlavaModel(config, meta);
        var names = model.named_parameters().Select(p => (p.name, p.parameter.shape)).ToList();
        // The names the constructors asked the weight source for are exactly the module tree's state-dict names.
        Assert.Equal(meta.Requested.Select(r => r.Name).OrderBy(x => x, StringComparer.Ordinal), names.Select(n => n.name).OrderBy(x => x, StringComparer.Ordinal));
        Assert.All(model.parameters(), p => Assert.Equal(TorchSharp.DeviceType.META, p.device.type));
        return names.ToDictionary(n => n.name, n => n.shape);
    }

    private static void AssertCovers(Dictionary<string, long[]> model, IEnumerable<(Dictionary<string, long[]> Keys, CheckpointPart Part)> checkpoints, LlavaConfig config)
    {
        var covered = new HashSet<string>();
        int skipped = 0;
        foreach (var (keys, part) in checkpoints)
            foreach (var (key, shape) in keys)
            {
                var name = CheckpointKeyMap.Map(key, part, config);
                if (name is null) { skipped++; continue; }
                Assert.True(model.TryGetValue(name, out var expected), $"checkpoint key '{key}' maps to '{name}', which the model does not have");
                Assert.True(expected!.SequenceEqual(shape), $"'{key}': checkpoint shape [{string.Join(",", shape)}], model [{string.Join(",", expected!)}]");
                Assert.True(covered.Add(name), $"two keys map to '{name}'");
            }
        var missing = model.Keys.Where(k => !covered.Contains(k)).ToList();
        Assert.True(missing.Count == 0, "parameters not in the checkpoint: " + string.Join(", ", missing.Take(10)));
    }

    [Fact]
    public void ShareGPT4V7B_MatchesItsRealWeightIndexAndTower()
    {
        var preset = ModelPresets.Get("ShareGPT4V-7B");
        var model = Model(preset.Config);
        // The real index lists names only; the derived list adds shapes from the config (checked equal to the index).
        var index = JsonDocument.Parse(File.ReadAllBytes(Fixtures.Path("anchors/Lin-Chen__ShareGPT4V-7B/pytorch_model.bin.index.json")));
        var indexNames = index.RootElement.GetProperty("weight_map").EnumerateObject().Select(p => p.Name).ToHashSet();
        var llm = Keys("Lin-Chen__ShareGPT4V-7B/derived_keys_ShareGPT4V-7B.json");
        Assert.Equal(indexNames.OrderBy(x => x), llm.Keys.OrderBy(x => x));
        Assert.Equal(32, indexNames.Count(n => n.EndsWith("rotary_emb.inv_freq")));
        var tower = Keys("Lin-Chen__ShareGPT4V-7B_Pretrained_vit-large336-l12/derived_keys_ShareGPT4V-7B_Pretrained_vit-large336-l12.json");
        AssertCovers(model, new[] { (llm, CheckpointPart.OriginalLanguageModel), (tower, CheckpointPart.VisionTower) }, preset.Config);
        long llmParams = model.Where(kv => !kv.Key.StartsWith("vision_tower.")).Sum(kv => kv.Value.Aggregate(1L, (a, b) => a * b));
        // total_size = 2 bytes per bf16 parameter + 32 fp32 inv_freq buffers of 64.
        Assert.Equal(13_518_798_848L, llmParams * 2 + 32 * 64 * 4);
        Assert.Equal(303_507_456L, model.Where(kv => kv.Key.StartsWith("vision_tower.")).Sum(kv => kv.Value.Aggregate(1L, (a, b) => a * b)));
    }

    [Fact]
    public void ShareGPT4V13B_MatchesItsDerivedKeys()
    {
        var preset = ModelPresets.Get("ShareGPT4V-13B");
        var model = Model(preset.Config);
        var llm = Keys("Lin-Chen__ShareGPT4V-13B/derived_keys_ShareGPT4V-13B.json");
        var tower = Keys("Lin-Chen__ShareGPT4V-7B_Pretrained_vit-large336-l12/derived_keys_ShareGPT4V-7B_Pretrained_vit-large336-l12.json");
        AssertCovers(model, new[] { (llm, CheckpointPart.OriginalLanguageModel), (tower, CheckpointPart.VisionTower) }, preset.Config);
    }

    [Theory]
    [InlineData("LLaVA-1.5-7B", "liuhaotian__llava-v1.5-7b/derived_keys_llava-v1.5-7b.json")]
    [InlineData("LLaVA-1.5-13B", "liuhaotian__llava-v1.5-13b/derived_keys_llava-v1.5-13b.json")]
    public void Llava15_MatchesItsKeysWithTheOpenAiTower(string presetName, string keys)
    {
        var preset = ModelPresets.Get(presetName);
        var model = Model(preset.Config);
        var llm = Keys(keys);
        var tower = Keys("openai__clip-vit-large-patch14-336/derived_keys_clip-vit-large-patch14-336_vision_model_only.json");
        // A full CLIPModel checkpoint also carries the text tower: those keys are known and skipped.
        tower["text_model.embeddings.token_embedding.weight"] = new long[] { 49408, 768 };
        tower["logit_scale"] = Array.Empty<long>();
        tower["visual_projection.weight"] = new long[] { 768, 1024 };
        AssertCovers(model, new[] { (llm, CheckpointPart.OriginalLanguageModel), (tower, CheckpointPart.VisionTower) }, preset.Config);
    }

    [Theory]
    [InlineData("derived_keys_llava-1.5-7b-hf_legacy-hub-naming.json")]
    [InlineData("derived_keys_llava-1.5-7b-hf_transformers-ge-4.52-naming.json")]
    public void LlavaHf7B_MatchesBothNamingSchemes(string keys)
    {
        var preset = ModelPresets.Get("llava-1.5-7b-hf");
        Assert.Equal(32064, preset.Config.Text.VocabSize);
        Assert.Equal(4096, preset.Config.Text.HiddenSize); // omitted in the hub config: LlamaConfig's default
        var model = Model(preset.Config);
        AssertCovers(model, new[] { (Keys("llava-hf__llava-1.5-7b-hf/" + keys), CheckpointPart.LlavaHf) }, preset.Config);
    }

    [Fact]
    public void EveryRealConfigLoads()
    {
        foreach (var name in ModelPresets.Names)
        {
            var p = ModelPresets.Get(name);
            Assert.Equal(576, p.Config.ImageSeqLength);
            Assert.Equal(-2, p.Config.VisionFeatureLayer);
            Assert.Equal(1e-5, p.Config.Text.RmsNormEps);
        }
        Assert.Equal("pad", ModelPresets.Get("ShareGPT4V-7B").Config.ImageAspectRatio);
        Assert.Equal(-200, ModelPresets.Get("ShareGPT4V-7B").Config.ImageTokenIndex);
        Assert.Equal(32000, ModelPresets.Get("llava-1.5-7b-hf").Config.ImageTokenIndex);
    }
}
