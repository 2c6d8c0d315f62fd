using System.Text.Json.Nodes;
using ShareGPT4V.Checkpoints;
using ShareGPT4V.Configuration;
using ShareGPT4V.Preprocessing;
using Xunit;

namespace ShareGPT4V.Tests.Safety;

/// <summary>
/// Hostile config.json and preprocessor_config.json files: absurd sizes are refused before anything is allocated,
/// wrong types and malformed JSON are refused, each naming the file and key.
/// </summary>
public sealed class HostileConfigTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("sgpt4v-cfg-").FullName;
    private int _folders;
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string NewDir(string name) => Directory.CreateDirectory(Path.Combine(_dir, $"{name}{_folders++}")).FullName;

    /// <summary>A llava-hf folder: the hf_tiny config edited by <paramref name="edit"/>, next to the real tiny weights.</summary>
    private string Folder(Action<JsonObject> edit)
    {
        var dir = NewDir("m");
        var config = JsonNode.Parse(File.ReadAllText(Fixtures.Path("oracle/hf_tiny/config.json")))!.AsObject();
        edit(config);
        File.WriteAllText(Path.Combine(dir, "config.json"), config.ToJsonString());
        File.CreateSymbolicLink(Path.Combine(dir, "model.safetensors"), Fixtures.Path("oracle/hf_tiny/model.safetensors"));
        return dir;
    }

    private static ModelConfigurationException Refused(string dir, string key, params string[] fragments)
    {
        var e = Assert.Throws<ModelConfigurationException>(() => ModelFolder.Open(dir));
        Assert.Equal(key, e.Key);
        Assert.Contains($"key '{key}'", e.Message);
        Assert.Contains("config.json", e.Message);
        foreach (var f in fragments) Assert.Contains(f, e.Message);
        return e;
    }

    [Fact]
    public void HiddenSizeOfABillionIsRefusedBeforeAllocating() =>
        Refused(Folder(c => c["text_config"]!["hidden_size"] = 1_000_000_000), "text_config.hidden_size", "1000000000", "[1, 65536]");

    [Fact]
    public void VocabularyOfATrillionIsNotEvenAnInteger() =>
        Refused(Folder(c => c["text_config"]!["vocab_size"] = 1_000_000_000_000), "text_config.vocab_size", "Expected an integer", "1000000000000");

    [Fact]
    public void VisionGridOfMillionsOfPatchesIsRefused() =>
        Refused(Folder(c => { c["vision_config"]!["image_size"] = 2048; c["vision_config"]!["patch_size"] = 1; }),
            "vision_config.patch_size", "4194304 patches", ClipVisionConfig.MaxPatches.ToString());

    [Theory]
    [InlineData("num_hidden_layers", "\"32\"", "Expected an integer, found the string \"32\"")]
    [InlineData("num_hidden_layers", "0", "out of the accepted range")]
    [InlineData("num_attention_heads", "-4", "out of the accepted range")]
    [InlineData("rms_norm_eps", "\"small\"", "Expected a number")]
    [InlineData("hidden_act", "7", "Expected a string")]
    [InlineData("tie_word_embeddings", "\"yes\"", "Expected true or false")]
    public void WrongTypesAndRangesNameTheKey(string key, string json, string fragment) =>
        Refused(Folder(c => c["text_config"]![key] = JsonNode.Parse(json)), "text_config." + key, fragment);

    [Fact]
    public void TheLargestSizesTheConfigAllowsAreCheckedAgainstTheCheckpointNotAllocated()
    {
        // Every value in range, together 2^21 x 2^16 floats for the embedding alone (512 GiB): the load must compare
        // shapes with the checkpoint on the meta device and refuse, without allocating any of it.
        var dir = Folder(c =>
        {
            var t = c["text_config"]!;
            t["vocab_size"] = 1 << 21;
            t["hidden_size"] = 1 << 16;
            t["intermediate_size"] = 1 << 18;
            t["num_attention_heads"] = 512;
            t["num_key_value_heads"] = 512;
            t["head_dim"] = 128;
            t["num_hidden_layers"] = 1024;
        });
        long before = GC.GetAllocatedBytesForCurrentThread();
        var e = Assert.Throws<CheckpointFormatException>(() => ModelLoader.Load(dir));
        Assert.Contains("does not match the model", e.Message);
        Assert.Contains("[2097152, 65536]", e.Message);
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 512L << 20, "the refused load allocated more than 512 MiB");
    }

    [Fact]
    public void DeeplyNestedOrTruncatedJsonIsRefused()
    {
        var dir = NewDir("deep");
        File.WriteAllText(Path.Combine(dir, "config.json"), "{\"a\":" + new string('[', 100_000) + new string(']', 100_000) + "}");
        var e = Assert.Throws<ModelConfigurationException>(() => ModelFolder.Open(dir));
        Assert.Contains("not valid JSON", e.Message);
        File.WriteAllText(Path.Combine(dir, "config.json"), "{\"model_type\": \"llava\", \"text_config\": {");
        Assert.Contains("not valid JSON", Assert.Throws<ModelConfigurationException>(() => ModelFolder.Open(dir)).Message);
    }

    [Fact]
    public void OversizedConfigFilesAreRefusedWithoutReadingThem()
    {
        var dir = NewDir("big");
        using (var f = File.Create(Path.Combine(dir, "config.json"))) f.SetLength(JsonConfigReader.MaxConfigBytes + 1); // sparse
        var e = Assert.Throws<ModelConfigurationException>(() => ModelFolder.Open(dir));
        Assert.Contains($"more than the {JsonConfigReader.MaxConfigBytes} accepted", e.Message);

        var pre = Path.Combine(dir, "preprocessor_config.json");
        using (var f = File.Create(pre)) f.SetLength(PreprocessorConfig.MaxFileBytes + 1);
        Assert.Contains("preprocessor config is", Assert.Throws<ModelConfigurationException>(() => PreprocessorConfig.Load(pre)).Message);
    }

    [Theory]
    [InlineData("""{"crop_size": 1000000000}""", "crop_size")]
    [InlineData("""{"crop_size": 3336}""", "crop_size")] // 318 MB of pixel buffers for a 320-byte config (fuzz, 20000 cases)
    [InlineData("""{"size": {"shortest_edge": 100000}}""", "size")]
    [InlineData("""{"size": {"height": 5000, "width": 5000}}""", "size")]
    public void PreprocessorSizesAreBounded(string json, string key)
    {
        // Found by the mutation fuzz: crop_size 10^9 reached the resampler and overflowed an allocation size, and
        // 3336 (then within the cap of 4096) allocated 318 MB for one small image.
        var e = Assert.Throws<ModelConfigurationException>(() => PreprocessorConfig.Parse(json, "preprocessor_config.json"));
        Assert.Equal(key, e.Key);
        Assert.Contains($"at most {PreprocessorConfig.MaxSide}", e.Message);
    }
}
