using ShareGPT4V.Tokenization;

namespace ShareGPT4V.Training;

/// <summary>The prompt format a stage trains with.</summary>
internal enum TrainingTemplate
{
    /// <summary>LLaVA's <c>plain</c> (stage 1 / pretrain): <c>&lt;image&gt;</c> + caption + "\n", the caption supervised.</summary>
    Plain,
    /// <summary>LLaVA's <c>conv_vicuna_v1</c> with <c>preprocess_v1</c> masking (stage 2 / finetune): the answers and their &lt;/s&gt; supervised.</summary>
    VicunaV1,
}

/// <summary>
/// Which slow-tokenizer behaviour the labels reproduce. Only text right after a &lt;/s&gt; inside a conversation
/// (the second and later rounds) differs, and with it the per-round masking arithmetic.
/// </summary>
public enum TokenizerVariant
{
    /// <summary>
    /// LLaVA's main branch (transformers 4.37, tokenizers 0.15) with a <c>legacy=false</c> tokenizer such as
    /// vicuna-v1.5's: no dummy prefix after &lt;/s&gt; and LLaVA's one-token adjustment for rounds after the first.
    /// </summary>
    Llava,
    /// <summary>ShareGPT4V and LLaVA-1.5 as released (transformers 4.31, <c>legacy=false</c>): "&lt;/s&gt;USER" → "US", "ER", no adjustment.</summary>
    ShareGPT4V,
    /// <summary>A <c>legacy=true</c> tokenizer (any version): every piece after a special token gets the dummy prefix, no adjustment.</summary>
    Legacy,
}

/// <summary>A record after preprocessing: token ids with one <see cref="ImageToken"/> per image, and labels (-100 = not supervised).</summary>
internal sealed record TokenizedExample(string Id, long[] InputIds, long[] Labels, IReadOnlyList<string> Images)
{
    /// <summary>The record's label images for the auxiliary patch loss (one per image), or empty.</summary>
    public IReadOnlyList<string> PatchLabels { get; init; } = Array.Empty<string>();

    /// <summary>The placeholder id LLaVA puts where an image goes.</summary>
    public const long ImageToken = LlavaTokenizer.LlavaImageTokenIndex;
    public const long IgnoreIndex = -100;
}

/// <summary>
/// LLaVA's training preprocessing: <c>preprocess_multimodal</c> (each turn's <c>&lt;image&gt;</c> moved to its front),
/// the prompt of the template, <c>tokenizer_image_token</c>, and the label masking of <c>preprocess_v1</c> /
/// <c>preprocess_plain</c>, with truncation of text-only records at the model's maximum length (records with images
/// are truncated after their image tokens are counted, as LLaVA's model does).
/// </summary>
internal sealed class TrainingPreprocessor
{
    public const string VicunaSystem =
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.";
    private const string User = "USER", Assistant = "ASSISTANT", Sep = " ", Sep2 = "</s>";
    private const string Image = LlavaTokenizer.ImageMarker;

    private readonly LlavaTokenizer _tok;
    private readonly TrainingTemplate _template;
    private readonly TokenizerVariant _variant;
    private readonly int _maxLength;

    public TrainingPreprocessor(LlavaTokenizer tokenizer, TrainingTemplate template, TokenizerVariant variant, int modelMaxLength)
    {
        _tok = tokenizer;
        _template = template;
        _variant = variant;
        _maxLength = modelMaxLength;
    }

    private AfterSpecialText After => _variant switch
    {
        TokenizerVariant.Llava => AfterSpecialText.NoPrefix,
        TokenizerVariant.ShareGPT4V => AfterSpecialText.PrefixPieceStripped,
        _ => AfterSpecialText.DummyPrefix,
    };

    /// <summary>LLaVA's <c>tokenizer_image_token</c>: chunks between images tokenised on their own, one BOS, -200 between.</summary>
    public long[] TokenizeWithImages(string text)
    {
        var ids = new List<long>();
        var chunks = text.Split(Image);
        for (int i = 0; i < chunks.Length; i++)
        {
            var c = _tok.EncodeSlow(chunks[i], _tok.AddBosToken, After);
            int offset = _tok.AddBosToken && c.Length > 0 && c[0] == _tok.BosId ? 1 : 0;
            if (i == 0 && offset == 1) ids.Add(c[0]);
            if (i > 0) ids.Add(TokenizedExample.ImageToken);
            for (int k = offset; k < c.Length; k++) ids.Add(c[k]);
        }
        return ids.ToArray();
    }

    /// <summary><c>tokenizer(text).input_ids</c> (no image splitting), for text-only records.</summary>
    private long[] TokenizePlain(string text) => _tok.EncodeSlow(text, _tok.AddBosToken, After).Select(i => (long)i).ToArray();

    /// <summary>LLaVA's <c>preprocess_multimodal</c> for one turn: the image markers leave the text and lead it, each on its own line.</summary>
    public static string MoveImagesToFront(string value)
    {
        int n = LlavaTokenizer.CountImageMarkers(value);
        if (n == 0) return value;
        var text = value.Replace(Image, "").Trim();
        return (string.Concat(Enumerable.Repeat(Image + "\n", n)) + text).Trim();
    }

    /// <summary>The prompt of a vicuna_v1 conversation (<c>conv.get_prompt()</c>), the turns already checked.</summary>
    public static string VicunaPrompt(IReadOnlyList<ConversationTurn> turns)
    {
        var sb = new System.Text.StringBuilder(VicunaSystem).Append(Sep);
        for (int i = 0; i < turns.Count; i++)
        {
            string role = i % 2 == 0 ? User : Assistant;
            if (turns[i].Value.Length > 0) sb.Append(role).Append(": ").Append(turns[i].Value).Append(i % 2 == 0 ? Sep : Sep2);
            else sb.Append(role).Append(':');
        }
        return sb.ToString();
    }

    /// <summary>Preprocesses one record; the prompt text is returned too, for checks.</summary>
    /// <exception cref="TrainingDataException">The conversation cannot be trained on (wrong roles, marker count, nothing supervised).</exception>
    public (TokenizedExample Example, string Prompt) Process(TrainingRecord r)
    {
        bool hasImage = r.Images.Count > 0;
        int markers = r.Conversations.Sum(t => LlavaTokenizer.CountImageMarkers(t.Value));
        if (hasImage && markers != r.Images.Count)
            throw new TrainingDataException($"the conversation has {markers} <image> marker(s) for {r.Images.Count} image(s)", r.Id);
        if (!hasImage && markers > 0)
            throw new TrainingDataException($"the conversation has {markers} <image> marker(s) but the record names no image", r.Id);
        var turns = hasImage ? r.Conversations.Select(t => t with { Value = MoveImagesToFront(t.Value) }).ToList() : r.Conversations.ToList();
        var result = _template == TrainingTemplate.Plain ? Plain(r, turns) : Vicuna(r, turns, hasImage);
        result.Example = result.Example with { PatchLabels = r.PatchLabels };
        if (!result.Example.Labels.Any(l => l != TokenizedExample.IgnoreIndex))
            throw new TrainingDataException("every label is masked (nothing to learn from: empty answers, or a tokenization mismatch)", r.Id);
        return result;
    }

    private (TokenizedExample Example, string Prompt) Plain(TrainingRecord r, List<ConversationTurn> turns)
    {
        if (turns.Count != 2)
            throw new TrainingDataException($"the plain template takes exactly 2 turns (image, caption), got {turns.Count}", r.Id);
        if (r.Images.Count == 0)
            throw new TrainingDataException("the plain template (pretrain) needs an image", r.Id);
        // preprocess_plain: the human turn becomes the image marker(s) alone, whatever it said.
        string head = string.Concat(Enumerable.Repeat(Image, r.Images.Count));
        string prompt = head + turns[1].Value + "\n";
        var ids = TokenizeWithImages(prompt);
        var labels = (long[])ids.Clone();
        int masked = Math.Min(ids.Length, TokenizeWithImages(head).Length);
        for (int i = 0; i < masked; i++) labels[i] = TokenizedExample.IgnoreIndex;
        return (new TokenizedExample(r.Id, ids, labels, r.Images), prompt);
    }

    private (TokenizedExample Example, string Prompt) Vicuna(TrainingRecord r, List<ConversationTurn> turns, bool hasImage)
    {
        // A first turn that is not the human's is skipped, as LLaVA does; then roles must alternate.
        if (turns.Count > 0 && turns[0].From != "human") turns = turns.Skip(1).ToList();
        if (turns.Count == 0) throw new TrainingDataException("the conversation has no human turn", r.Id);
        for (int j = 0; j < turns.Count; j++)
        {
            string want = j % 2 == 0 ? "human" : "gpt";
            if (turns[j].From is not ("human" or "gpt"))
                throw new TrainingDataException($"turn {j} is from '{turns[j].From}' (expected 'human' or 'gpt')", r.Id);
            if (turns[j].From != want)
                throw new TrainingDataException($"turn {j} is from '{turns[j].From}' where '{want}' was expected (turns must alternate)", r.Id);
        }
        string prompt = VicunaPrompt(turns);
        long[] ids = hasImage ? TokenizeWithImages(prompt) : TokenizePlain(prompt);
        // Text-only records go through tokenizer(..., truncation=True); records with images are cut later.
        if (!hasImage && ids.Length > _maxLength) ids = ids[.._maxLength];
        var labels = (long[])ids.Clone();
        long pad = _tok.PadId ?? _tok.UnkId;
        int totalLen = ids.Count(i => i != pad);
        int cur = 1;
        labels[0] = TokenizedExample.IgnoreIndex;
        var rounds = prompt.Split(Sep2);
        const string sep = Sep + Assistant + ": ";
        for (int i = 0; i < rounds.Length; i++)
        {
            var rou = rounds[i];
            if (rou.Length == 0) break;
            var parts = rou.Split(sep);
            if (parts.Length != 2) break;
            parts[0] += sep;
            int roundLen = Length(rou, hasImage);
            int instructionLen = Length(parts[0], hasImage) - 2;
            if (i != 0 && _variant == TokenizerVariant.Llava)
            {
                roundLen -= 1;
                instructionLen -= 1;
            }
            for (int k = cur; k < Math.Min(cur + instructionLen, labels.Length); k++) labels[k] = TokenizedExample.IgnoreIndex;
            cur += roundLen;
        }
        for (int k = Math.Max(cur, 0); k < labels.Length; k++) labels[k] = TokenizedExample.IgnoreIndex;
        if (cur < _maxLength && cur != totalLen)
        {
            // LLaVA's "tokenization mismatch": the whole record is masked, so it teaches nothing.
            Array.Fill(labels, TokenizedExample.IgnoreIndex);
        }
        return (new TokenizedExample(r.Id, ids, labels, r.Images), prompt);
    }

    private int Length(string text, bool hasImage) => hasImage ? TokenizeWithImages(text).Length : TokenizePlain(text).Length;
}
