using System.Text;
using ShareGPT4V.Tokenization;
using Xunit;

namespace ShareGPT4V.Tests.Tokenization;

/// <summary>Bad or missing files raise ModelConfigurationException naming the file.</summary>
public class TokenizerLoadErrorTests
{
    private static ModelConfigurationException LoadFails(string folder, TokenizerFileKind kind = TokenizerFileKind.Auto) =>
        Assert.Throws<ModelConfigurationException>(() => LlavaTokenizer.Load(folder, kind));

    private static string JsonFolderWith(string tokenizerJson)
    {
        string dir = TokenizerFixtures.NewTempFolder();
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), tokenizerJson);
        return dir;
    }

    [Fact]
    public void MissingFolder()
    {
        var ex = LoadFails(Path.Combine(Path.GetTempPath(), "no-such-folder-" + Guid.NewGuid().ToString("N")));
        Assert.Contains("folder not found", ex.Message);
    }

    [Fact]
    public void FolderWithoutTokenizerFiles()
    {
        var ex = LoadFails(TokenizerFixtures.NewTempFolder());
        Assert.Contains("Neither tokenizer.model nor tokenizer.json", ex.Message);
    }

    [Fact]
    public void ExplicitlyRequestedFileMissing()
    {
        var ex = LoadFails(TokenizerFixtures.JsonFolder, TokenizerFileKind.SentencePieceModel);
        Assert.Contains("not found", ex.Message);
        Assert.EndsWith("tokenizer.model", ex.FilePath);
    }

    [Fact]
    public void GarbageSentencePieceModel()
    {
        string dir = TokenizerFixtures.NewTempFolder();
        File.WriteAllBytes(Path.Combine(dir, "tokenizer.model"), Encoding.ASCII.GetBytes("this is not a protobuf \xff\xff\xff\xff"));
        var ex = LoadFails(dir);
        Assert.Contains("Malformed SentencePiece model", ex.Message);
        Assert.Contains("tokenizer.model", ex.FilePath);
    }

    [Fact]
    public void TruncatedSentencePieceModel()
    {
        string dir = TokenizerFixtures.NewTempFolder();
        var bytes = File.ReadAllBytes(TokenizerFixtures.ModelFile);
        File.WriteAllBytes(Path.Combine(dir, "tokenizer.model"), bytes.AsSpan(0, bytes.Length / 2).ToArray());
        var ex = LoadFails(dir);
        Assert.Contains("Malformed SentencePiece model", ex.Message);
    }

    [Fact]
    public void EmptySentencePieceModel()
    {
        string dir = TokenizerFixtures.NewTempFolder();
        File.WriteAllBytes(Path.Combine(dir, "tokenizer.model"), []);
        Assert.Contains("no pieces", LoadFails(dir).Message);
    }

    [Fact]
    public void OversizedFileIsRefusedBeforeReading()
    {
        string dir = TokenizerFixtures.NewTempFolder();
        using (var f = File.Create(Path.Combine(dir, "tokenizer.model"))) f.SetLength(TokenizerFileReader.MaxModelFileBytes + 1); // sparse
        Assert.Contains("limit", LoadFails(dir).Message);
    }

    [Fact]
    public void MalformedTokenizerJson()
    {
        var ex = LoadFails(JsonFolderWith("{ \"model\": "));
        Assert.Contains("Malformed JSON", ex.Message);
        Assert.Contains("tokenizer.json", ex.FilePath);
    }

    [Fact]
    public void NonBpeTokenizerJson()
    {
        var ex = LoadFails(JsonFolderWith("{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}"));
        Assert.Contains("Only BPE", ex.Message);
        Assert.Equal("model.type", ex.Key);
    }

    [Fact]
    public void TokenizerJsonWithGapInVocabulary()
    {
        var ex = LoadFails(JsonFolderWith("{\"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"vocab\": {\"<unk>\": 0, \"a\": 2}}}"));
        Assert.Contains("not contiguous", ex.Message);
    }

    [Fact]
    public void TokenizerJsonWithoutUnkPiece()
    {
        var ex = LoadFails(JsonFolderWith("{\"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"vocab\": {\"a\": 0, \"b\": 1}}}"));
        Assert.Contains("unk token '<unk>' is not in the vocabulary", ex.Message);
    }

    [Fact]
    public void BadLegacyFlagInTokenizerConfig()
    {
        string dir = TokenizerFixtures.ModelFolder("anchors/liuhaotian__llava-v1.5-7b", "special_tokens_map.json");
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), "{\"legacy\": \"no\"}");
        var ex = LoadFails(dir);
        Assert.Contains("'legacy' must be true or false", ex.Message);
        Assert.Contains("tokenizer_config.json", ex.FilePath);
    }

    [Fact]
    public void MalformedTokenizerConfig()
    {
        string dir = TokenizerFixtures.ModelFolder("anchors/liuhaotian__llava-v1.5-7b", "special_tokens_map.json");
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), "[1, 2");
        Assert.Contains("Malformed JSON", LoadFails(dir).Message);
    }

    [Fact]
    public void UnknownBosToken()
    {
        string dir = TokenizerFixtures.ModelFolder("anchors/liuhaotian__llava-v1.5-7b", "tokenizer_config.json");
        File.WriteAllText(Path.Combine(dir, "special_tokens_map.json"), "{\"bos_token\": \"<|begin|>\"}");
        var ex = LoadFails(dir);
        Assert.Contains("bos_token '<|begin|>' is not in the vocabulary", ex.Message);
    }

    [Fact]
    public void BadAddedTokensJson()
    {
        string dir = TokenizerFixtures.ModelFolder("anchors/llava-hf__llava-1.5-7b-hf", "tokenizer_config.json");
        File.WriteAllText(Path.Combine(dir, "added_tokens.json"), "{\"<image>\": \"32000\"}");
        var ex = LoadFails(dir);
        Assert.Contains("no valid id", ex.Message);
        Assert.Contains("added_tokens.json", ex.FilePath);
    }

    [Fact]
    public void ConfigWithoutLegacyKeyDefaultsToLegacyTrue()
    {
        string dir = TokenizerFixtures.ModelFolder("anchors/liuhaotian__llava-v1.5-7b", "special_tokens_map.json");
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), "{\"add_bos_token\": true}");
        var t = LlavaTokenizer.Load(dir);
        Assert.True(t.Legacy);
        Assert.Equal([1, 2, 3148, 1001], t.Encode("</s>USER"));
    }
}

public class TokenizerEdgeCaseTests
{
    [Fact]
    public void EmptyAddedTokenIsIgnoredForSplitting()
    {
        string dir = TokenizerFixtures.ModelFolder("anchors/liuhaotian__llava-v1.5-7b", "special_tokens_map.json");
        File.WriteAllText(Path.Combine(dir, "added_tokens.json"), "{\"\": 32000, \"<image>\": 32001}");
        var t = LlavaTokenizer.Load(dir);
        Assert.Equal([1, 15043, 32001], t.Encode("Hello<image>"));
    }
}
