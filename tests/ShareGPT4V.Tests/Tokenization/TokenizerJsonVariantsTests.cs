using System.Diagnostics;
using ShareGPT4V.Tokenization;
using Xunit;

namespace ShareGPT4V.Tests.Tokenization;

/// <summary>tokenizer.json layouts other than LLaMA-2's Prepend normaliser, on a tiny hand-made vocabulary.</summary>
public class TokenizerJsonVariantsTests
{
    // ids: 0 <unk>, 1 <s>, 2 </s>, 3 ▁, 4 a, 5 b, 6 ▁a, 7 ▁b
    private const string Vocab = "{\"<unk>\": 0, \"<s>\": 1, \"</s>\": 2, \"\u2581\": 3, \"a\": 4, \"b\": 5, \"\u2581a\": 6, \"\u2581b\": 7}";
    private const string Added =
        "[{\"id\": 0, \"content\": \"<unk>\", \"special\": true}, {\"id\": 1, \"content\": \"<s>\", \"special\": true}, {\"id\": 2, \"content\": \"</s>\", \"special\": true}]";

    private static LlavaTokenizer Build(string preTokenizer, string normalizer = "null")
    {
        string dir = TokenizerFixtures.NewTempFolder();
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"),
            $"{{\"added_tokens\": {Added}, \"normalizer\": {normalizer}, \"pre_tokenizer\": {preTokenizer}, " +
            $"\"model\": {{\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"byte_fallback\": false, \"vocab\": {Vocab}, \"merges\": []}}}}");
        return LlavaTokenizer.Load(dir);
    }

    [Fact]
    public void MetaspacePrependFirstPrefixesOnlyTheStartOfTheText()
    {
        var t = Build("{\"type\": \"Metaspace\", \"replacement\": \"\u2581\", \"prepend_scheme\": \"first\", \"split\": true}");
        Assert.Equal([1, 6, 2, 5], t.Encode("a</s>b"));
        Assert.Equal([1, 6, 7], t.Encode("a b"));
    }

    [Fact]
    public void MetaspacePrependAlwaysPrefixesEverySegment()
    {
        var t = Build("{\"type\": \"Metaspace\", \"replacement\": \"\u2581\", \"prepend_scheme\": \"always\"}");
        Assert.Equal([1, 6, 2, 7], t.Encode("a</s>b"));
    }

    [Fact]
    public void NoPrefixRuleMeansNoDummyPrefix()
    {
        var t = Build("null");
        Assert.Equal([1, 4, 2, 5], t.Encode("a</s>b"));
        Assert.Equal([1, 0], t.Encode("c")); // no byte fallback: unknown character is <unk>
    }

    [Fact]
    public void PrependNormalizerPrefixesEverySegment()
    {
        var t = Build("null", "{\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Prepend\", \"prepend\": \"\u2581\"}]}");
        Assert.Equal([1, 6, 2, 7], t.Encode("a</s>b"));
    }

    [Fact]
    public void LongTextEncodesQuicklyAndAgreesAcrossFiles()
    {
        var words = "The quick brown fox jumps over the lazy dog. 日本語 123 😀 € naïve\n".Split(' ');
        var text = string.Join(' ', Enumerable.Range(0, 8000).Select(i => words[i % words.Length]));
        var sw = Stopwatch.StartNew();
        var fromJson = TokenizerFixtures.Json.Encode(text);
        var fromModel = TokenizerFixtures.SpmLegacyFalse.Encode(text);
        sw.Stop();
        Assert.Equal(fromJson, fromModel);
        Assert.Equal(text, TokenizerFixtures.Json.Decode(fromJson));
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(5), $"encoding took {sw.Elapsed}");
    }
}
