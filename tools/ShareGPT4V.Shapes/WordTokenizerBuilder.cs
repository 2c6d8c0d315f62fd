using System.Text.Json.Nodes;

namespace ShareGPT4V.Shapes;

/// <summary>
/// Builds a small word-level tokenizer in LLaMA-2's tokenizer.json form (SentencePiece-style BPE with byte fallback)
/// from a text corpus. Ids: &lt;unk&gt; 0, &lt;s&gt; 1, &lt;/s&gt; 2, byte pieces 3..258, then every character of the
/// corpus, then each word with and without its leading ▁ and all its prefixes. Scores are -(id - 259), so merges go by
/// id; since every prefix of a known word is a piece, BPE always merges a known word into one piece, and anything
/// unknown falls back to characters or bytes.
/// </summary>
internal sealed class WordTokenizerBuilder
{
    public const char Space = '\u2581';
    public const int FirstNormalId = 259;
    private static readonly string[] Specials = ["<image>", "<s>", "</s>"];

    private readonly HashSet<char> _chars = [];
    private readonly Dictionary<string, int> _words = new(StringComparer.Ordinal);

    /// <summary>Adds a text as the tokenizer sees it: split at special tokens, each segment's first word with and without ▁.</summary>
    public void AddText(string text)
    {
        foreach (var segment in SplitSpecials(text))
        {
            if (segment.Length == 0) continue;
            // A segment after a special token gets the ▁ prefix or not depending on the tokenizer mode the trainer
            // reproduces, so its first word is known both ways.
            AddSegment(Space + segment.Replace(' ', Space), firstWordBothWays: true);
        }
    }

    private static IEnumerable<string> SplitSpecials(string text)
    {
        int start = 0;
        while (start <= text.Length)
        {
            int best = -1, bestLen = 0;
            foreach (var s in Specials)
            {
                int i = text.IndexOf(s, start, StringComparison.Ordinal);
                if (i >= 0 && (best < 0 || i < best)) { best = i; bestLen = s.Length; }
            }
            if (best < 0) { yield return text[start..]; yield break; }
            yield return text[start..best];
            start = best + bestLen;
        }
    }

    private void AddSegment(string normalized, bool firstWordBothWays)
    {
        bool first = true;
        for (int i = 0; i < normalized.Length;)
        {
            char c = normalized[i];
            _chars.Add(c);
            int wordStart = c == Space ? i + 1 : i;
            int end = wordStart;
            while (end < normalized.Length && char.IsLetterOrDigit(normalized[end]) && !char.IsSurrogate(normalized[end])) end++;
            if (end == wordStart) { i++; continue; }
            string word = normalized[wordStart..end];
            foreach (char w in word) _chars.Add(w);
            bool spaced = wordStart > i;
            Count(spaced ? Space + word : word);
            if (first && firstWordBothWays) Count(spaced ? word : Space + word);
            first = false;
            i = end;
        }
    }

    private void Count(string word) => _words[word] = _words.TryGetValue(word, out int n) ? n + 1 : 1;

    /// <summary>
    /// Words kept as LLaMA splits them. LLaVA's label masking of the rounds after the first (preprocess_v1, and its
    /// one-token adjustment for newer tokenizers) counts on LLaMA's pieces for the role name that opens each round:
    /// "▁USER" standalone is two pieces (▁US, ER) while "USER" right after &lt;/s&gt; is one (or, with the ▁ of its
    /// first piece stripped, US + ER). With "▁USER" as one piece the trainer's default variant masks every round.
    /// Their pieces come first, so they merge before any other pair of those letters.
    /// </summary>
    private static readonly (string Word, string[] Pieces)[] LlamaSplits = [(Space + "USER", [Space + "U", Space + "US", "ER"])];

    /// <summary>The normal pieces in id order (from <see cref="FirstNormalId"/>).</summary>
    public List<string> Pieces()
    {
        var pieces = new List<string>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        void Add(string p) { if (seen.Add(p)) pieces.Add(p); }
        _chars.Add(Space);
        foreach (char c in _chars.OrderBy(c => c)) Add(c.ToString());
        foreach (var (_, split) in LlamaSplits)
            foreach (var p in split) Add(p);
        foreach (var word in _words.OrderByDescending(kv => kv.Value).ThenBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => kv.Key))
        {
            if (LlamaSplits.Any(x => x.Word == word)) continue;
            for (int len = 2; len <= word.Length; len++) Add(word[..len]);
        }
        return pieces;
    }

    /// <summary>The tokenizer.json text, with &lt;image&gt; and &lt;pad&gt; added after the vocabulary.</summary>
    public static JsonObject TokenizerJson(IReadOnlyList<string> pieces, int imageId, int padId)
    {
        var vocab = new JsonObject { ["<unk>"] = 0, ["<s>"] = 1, ["</s>"] = 2 };
        for (int b = 0; b < 256; b++) vocab[$"<0x{b:X2}>"] = 3 + b;
        var merges = new JsonArray();
        for (int i = 0; i < pieces.Count; i++)
        {
            vocab[pieces[i]] = FirstNormalId + i;
            // Each longer piece is its prefix plus one character, both already pieces.
            if (pieces[i].Length > 1) merges.Add($"{pieces[i][..^1]} {pieces[i][^1]}");
        }
        static JsonObject Added(int id, string content) => new()
        {
            ["id"] = id, ["content"] = content, ["single_word"] = false, ["lstrip"] = false, ["rstrip"] = false,
            ["normalized"] = false, ["special"] = true,
        };
        return new JsonObject
        {
            ["version"] = "1.0",
            ["truncation"] = null,
            ["padding"] = null,
            ["added_tokens"] = new JsonArray(Added(0, "<unk>"), Added(1, "<s>"), Added(2, "</s>"), Added(imageId, "<image>"), Added(padId, "<pad>")),
            ["normalizer"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["normalizers"] = new JsonArray(
                    new JsonObject { ["type"] = "Prepend", ["prepend"] = Space.ToString() },
                    new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = " " }, ["content"] = Space.ToString() }),
            },
            ["pre_tokenizer"] = null,
            ["post_processor"] = new JsonObject
            {
                ["type"] = "TemplateProcessing",
                ["single"] = new JsonArray(
                    new JsonObject { ["SpecialToken"] = new JsonObject { ["id"] = "<s>", ["type_id"] = 0 } },
                    new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "A", ["type_id"] = 0 } }),
                ["pair"] = new JsonArray(
                    new JsonObject { ["SpecialToken"] = new JsonObject { ["id"] = "<s>", ["type_id"] = 0 } },
                    new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "A", ["type_id"] = 0 } },
                    new JsonObject { ["SpecialToken"] = new JsonObject { ["id"] = "<s>", ["type_id"] = 1 } },
                    new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "B", ["type_id"] = 1 } }),
                ["special_tokens"] = new JsonObject
                {
                    ["<s>"] = new JsonObject { ["id"] = "<s>", ["ids"] = new JsonArray(1), ["tokens"] = new JsonArray("<s>") },
                },
            },
            ["decoder"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["decoders"] = new JsonArray(
                    new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = Space.ToString() }, ["content"] = " " },
                    new JsonObject { ["type"] = "ByteFallback" },
                    new JsonObject { ["type"] = "Fuse" },
                    new JsonObject { ["type"] = "Strip", ["content"] = " ", ["start"] = 1, ["stop"] = 0 }),
            },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE",
                ["dropout"] = null,
                ["unk_token"] = "<unk>",
                ["continuing_subword_prefix"] = null,
                ["end_of_word_suffix"] = null,
                ["fuse_unk"] = true,
                ["byte_fallback"] = true,
                ["vocab"] = vocab,
                ["merges"] = merges,
            },
        };
    }

    /// <summary>Whether a text's characters are all pieces (the rest would be spelled as bytes).</summary>
    public bool Covers(string text) => text.All(c => c == ' ' || _chars.Contains(c));

    public int WordCount => _words.Count;
}
