using ShareGPT4V.Training;
using Xunit;

namespace ShareGPT4V.Tests.Training;

/// <summary>LLaVA's training preprocessing (prompt, tokenizer_image_token, label masking) against the oracle's ids and labels, per tokenizer variant.</summary>
public sealed class TrainingDataTests
{
    public static TheoryData<string, string, TokenizerVariant> Cases() => new()
    {
        { "finetune", "llava_tf4.37_legacy_false", TokenizerVariant.Llava },
        { "finetune", "sharegpt4v_tf4.31_legacy_false", TokenizerVariant.ShareGPT4V },
        { "finetune", "legacy_true", TokenizerVariant.Legacy },
        { "pretrain", "llava_tf4.37_legacy_false", TokenizerVariant.Llava },
        { "pretrain", "sharegpt4v_tf4.31_legacy_false", TokenizerVariant.ShareGPT4V },
        { "pretrain", "legacy_true", TokenizerVariant.Legacy },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void IdsAndLabelsMatchTheReference(string stage, string variantKey, TokenizerVariant variant)
    {
        var g = new TrainingGolden(stage);
        var pre = new TrainingPreprocessor(TrainingGolden.Tokenizer(), g.Template, variant, 2048);
        for (int i = 0; i < g.Examples.Count; i++)
        {
            var ex = g.Examples[i];
            var (tokenized, prompt) = pre.Process(g.Record(i));
            Assert.Equal(ex.GetProperty("prompt").GetString(), prompt);
            var v = ex.GetProperty("tokenizer_variants").GetProperty(variantKey);
            Assert.Equal(TrainingGolden.Longs(v.GetProperty("input_ids")), tokenized.InputIds);
            Assert.Equal(TrainingGolden.Longs(v.GetProperty("labels")), tokenized.Labels);
        }
    }

    [Fact]
    public void PreprocessMultimodalMovesTheImageToTheFront()
    {
        var g = new TrainingGolden("finetune");
        foreach (var ex in g.Examples)
        {
            var before = ex.GetProperty("data").GetProperty("conversations").EnumerateArray().Select(t => t.GetProperty("value").GetString()!).ToList();
            var after = ex.GetProperty("after_preprocess_multimodal").EnumerateArray().Select(t => t.GetProperty("value").GetString()!).ToList();
            Assert.Equal(after, before.Select(TrainingPreprocessor.MoveImagesToFront).ToList());
        }
    }

    [Fact]
    public void JsonLinesAndTextOnlyRecordsAreRead()
    {
        var path = Path.GetTempFileName();
        try
        {
            File.WriteAllText(path, """
                {"id": "a", "image": "x.png", "conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Hello"}]}
                {"id": 7, "conversations": [{"from": "human", "value": "Text only"}, {"from": "gpt", "value": "Yes"}]}
                {"id": "b", "image": ["p.png", "q.png"], "conversations": [{"from": "human", "value": "<image> and <image>"}, {"from": "gpt", "value": "Two"}]}
                not json
                {"id": "c", "conversations": []}
                """);
            var bad = new List<TrainingDataException>();
            var records = TrainingDataFile.Read(path, bad.Add);
            Assert.Equal(new[] { "a", "7", "b" }, records.Select(r => r.Id));
            Assert.Empty(records[1].Images);
            Assert.Equal(2, records[2].Images.Count);
            Assert.Equal(2, bad.Count);
            Assert.Contains("'c'", bad[1].Message);
            Assert.Throws<TrainingDataException>(() => TrainingDataFile.Read(path));

            var pre = new TrainingPreprocessor(TrainingGolden.Tokenizer(), TrainingTemplate.VicunaV1, TokenizerVariant.Llava, 2048);
            var (textOnly, prompt) = pre.Process(records[1]);
            Assert.DoesNotContain(TokenizedExample.ImageToken, textOnly.InputIds);
            Assert.EndsWith("USER: Text only ASSISTANT: Yes</s>", prompt);
            var (two, _) = pre.Process(records[2]);
            Assert.Equal(2, two.InputIds.Count(i => i == TokenizedExample.ImageToken));
        }
        finally { File.Delete(path); }
    }

    [Fact]
    public void BadRecordsAreRefusedNamingTheRecord()
    {
        var pre = new TrainingPreprocessor(TrainingGolden.Tokenizer(), TrainingTemplate.VicunaV1, TokenizerVariant.Llava, 2048);
        TrainingRecord R(string id, string[] images, params (string, string)[] turns) =>
            new(id, images, turns.Select(t => new ConversationTurn(t.Item1, t.Item2)).ToList());
        var e1 = Assert.Throws<TrainingDataException>(() => pre.Process(R("m1", new[] { "a.png" }, ("human", "<image> <image> x"), ("gpt", "y"))));
        Assert.Contains("'m1'", e1.Message);
        Assert.Contains("2 <image> marker(s) for 1 image(s)", e1.Message);
        var e2 = Assert.Throws<TrainingDataException>(() => pre.Process(R("m2", Array.Empty<string>(), ("human", "x"), ("human", "y"))));
        Assert.Contains("'m2'", e2.Message);
        var e3 = Assert.Throws<TrainingDataException>(() => pre.Process(R("m3", Array.Empty<string>(), ("human", "only a question"))));
        Assert.Contains("every label is masked", e3.Message);
    }
}
