using System.Text.Json;
using ShareGPT4V.Configuration;
using ShareGPT4V.Tokenization;
using ShareGPT4V.Training;
using Xunit;

namespace ShareGPT4V.Tests.Shapes;

/// <summary>The model folder init-model writes: the library reads its configs, and its word-level tokenizer gives one token per known word.</summary>
public class ShapesTokenizerTests(ShapesDataset data) : IClassFixture<ShapesDataset>
{
    /// <summary>The pieces a text should become: each space-separated word split into letter/digit runs and single other characters.</summary>
    private static List<string> ExpectedPieces(string text)
    {
        var pieces = new List<string>();
        foreach (var word in text.Split(' '))
        {
            bool first = true;
            for (int i = 0; i < word.Length;)
            {
                int j = i;
                while (j < word.Length && char.IsLetterOrDigit(word[j])) j++;
                if (j == i) j = i + 1;
                pieces.Add((first ? "\u2581" : "") + word[i..j]);
                first = false;
                i = j;
            }
        }
        return pieces;
    }

    [Fact]
    public void KnownWordsAreOneTokenEachAndTextRoundTrips()
    {
        var tok = LlavaTokenizer.Load(data.ModelDir);
        Assert.Equal(TokenizerFileKind.TokenizerJson, tok.FileKind);
        Assert.Equal((0, 1, 2), (tok.UnkId, tok.BosId, tok.EosId));
        var records = TrainingDataFile.Read(Path.Combine(data.Dir, "stage1.json")).Concat(TrainingDataFile.Read(Path.Combine(data.Dir, "stage2.json")));
        int checkedTexts = 0;
        foreach (var r in records)
        {
            foreach (var turn in r.Conversations.Where(t => t.From == "gpt"))
            {
                var ids = tok.Encode(turn.Value, addBos: false);
                Assert.Equal(ExpectedPieces(turn.Value), ids.Select(id => tok.IdToToken(id)!));
                Assert.All(ids, id => Assert.True(id >= 259 && id < tok.VocabularySize));
                Assert.Equal(turn.Value, tok.Decode(ids));
                checkedTexts++;
            }
        }
        Assert.True(checkedTexts > 12);

        var caption = "The image shows three shapes on a light gray background: a large red circle in the top left, a small blue square in the center, and a yellow triangle at the bottom right.";
        var capIds = tok.Encode(caption, addBos: true);
        Assert.Equal(tok.BosId, capIds[0]);
        Assert.Equal(ExpectedPieces(caption).Count, capIds.Length - 1);
        Assert.Equal(caption, tok.Decode(capIds));
    }

    [Fact]
    public void UnknownWordsFallBackToCharactersOrBytesAndRoundTrip()
    {
        var tok = LlavaTokenizer.Load(data.ModelDir);
        foreach (var text in new[] { "A zebra café near the circle.", "naïve 日本 ✓", "Xyzzy" })
        {
            var ids = tok.Encode(text, addBos: false);
            Assert.Equal(text, tok.Decode(ids));
            Assert.DoesNotContain(tok.UnkId, ids);
        }
        var cafe = tok.Encode("café", addBos: false);
        // "é" is not in the data: it is spelled as its two UTF-8 byte pieces.
        Assert.Equal(["<0xC3>", "<0xA9>"], cafe.TakeLast(2).Select(id => tok.IdToToken(id)!));
        Assert.Equal(["\u2581circle"], tok.Encode("circle", addBos: false).Select(id => tok.IdToToken(id)!));
    }

    [Fact]
    public void TheVicunaPromptOfEveryRecordNeedsNoBytes()
    {
        var tok = LlavaTokenizer.Load(data.ModelDir);
        int imageId = tok.TokenToId("<image>")!.Value;
        foreach (var r in TrainingDataFile.Read(Path.Combine(data.Dir, "stage2.json")))
        {
            var prompt = TrainingPreprocessor.VicunaPrompt(r.Conversations);
            var ids = tok.Encode(prompt);
            Assert.Single(ids, imageId);
            Assert.All(ids, id => Assert.False(id >= 3 && id < 259, $"{r.Id}: byte piece {tok.IdToToken(id)} in the prompt"));
        }
    }

    [Theory]
    [InlineData(TokenizerVariant.Llava)]
    [InlineData(TokenizerVariant.ShareGPT4V)]
    [InlineData(TokenizerVariant.Legacy)]
    public void TheTrainersLabelsSuperviseExactlyTheAnswers(TokenizerVariant variant)
    {
        var tok = LlavaTokenizer.Load(data.ModelDir);
        // Stage 2, vicuna_v1: every answer and its </s>, nothing else (LLaVA masks a whole record on a length mismatch).
        var vicuna = new TrainingPreprocessor(tok, TrainingTemplate.VicunaV1, variant, 1024);
        foreach (var r in TrainingDataFile.Read(Path.Combine(data.Dir, "stage2.json")))
        {
            var (ex, _) = vicuna.Process(r);
            var supervised = ex.Labels.Where(l => l != TokenizedExample.IgnoreIndex).Select(l => (int)l).ToList();
            var answers = r.Conversations.Where(t => t.From == "gpt").ToList();
            Assert.Equal(answers.Sum(a => tok.Encode(a.Value, addBos: false).Length + 1), supervised.Count);
            Assert.Equal(answers.Count, supervised.Count(id => id == tok.EosId));
            Assert.Equal(string.Join(" ", answers.Select(a => a.Value)), tok.Decode(supervised).Trim());
        }
        // Stage 1, plain: the caption and its newline.
        var plain = new TrainingPreprocessor(tok, TrainingTemplate.Plain, variant, 1024);
        foreach (var r in TrainingDataFile.Read(Path.Combine(data.Dir, "stage1.json")))
        {
            var (ex, _) = plain.Process(r);
            var supervised = ex.Labels.Where(l => l != TokenizedExample.IgnoreIndex).Select(l => (int)l).ToList();
            Assert.Equal(r.Conversations[1].Value + "\n", tok.Decode(supervised).TrimStart());
            Assert.All(supervised, id => Assert.False(id >= 3 && id < 259));
        }
    }

    [Fact]
    public void TheLibraryReadsTheModelFolder()
    {
        var folder = ModelFolder.Open(data.ModelDir);
        var cfg = folder.Config;
        var tok = LlavaTokenizer.Load(data.ModelDir);
        Assert.Equal(tok.VocabularySize, cfg.Text.VocabSize);
        Assert.Equal(tok.TokenToId("<image>"), cfg.ImageTokenIndex);
        Assert.Equal(tok.TokenToId("<pad>"), cfg.Text.PadTokenId);
        Assert.Equal(tok.PadId, cfg.Text.PadTokenId);
        Assert.Equal((160, 16, 160, 5, 5, 640), (cfg.Vision.ImageSize, cfg.Vision.PatchSize, cfg.Vision.HiddenSize, cfg.Vision.NumHiddenLayers, cfg.Vision.NumAttentionHeads, cfg.Vision.IntermediateSize));
        Assert.Equal((192, 4, 6, 512, 32, 1024), (cfg.Text.HiddenSize, cfg.Text.NumHiddenLayers, cfg.Text.NumAttentionHeads, cfg.Text.IntermediateSize, cfg.Text.HeadDim, cfg.Text.MaxPositionEmbeddings));
        Assert.Equal(-1, cfg.VisionFeatureLayer);
        Assert.False(cfg.KeepClsToken);
        Assert.Equal("pad", cfg.ImageAspectRatio);
        Assert.Equal("vicuna_v1", cfg.ConversationTemplate);
        Assert.Equal("gelu", cfg.Vision.HiddenAct);
        using var config = JsonDocument.Parse(File.ReadAllText(Path.Combine(data.ModelDir, "config.json")));
        Assert.Equal(100, config.RootElement.GetProperty("image_seq_length").GetInt32());
        Assert.NotNull(folder.PreprocessorConfigPath);
        Assert.False(File.Exists(Path.Combine(data.ModelDir, "model.safetensors")));
        // The vocabulary is small: word pieces, not LLaMA's 32000.
        Assert.InRange(cfg.Text.VocabSize, 300, 3000);
    }
}
