using System.Text;

namespace ShareGPT4V.Tokenization;

/// <summary>Which tokenizer file a <see cref="LlavaTokenizer"/> reads.</summary>
internal enum TokenizerFileKind
{
    /// <summary><c>tokenizer.model</c> when present, else <c>tokenizer.json</c>.</summary>
    Auto,
    /// <summary>SentencePiece <c>tokenizer.model</c> (what LLaVA / ShareGPT4V load: the slow LlamaTokenizer).</summary>
    SentencePieceModel,
    /// <summary>Hugging Face tokenizers <c>tokenizer.json</c> (the fast tokenizer).</summary>
    TokenizerJson,
    /// <summary>The <c>tokenizer.ggml.*</c> metadata of a GGUF file (llama.cpp's <c>llama</c> tokenizer model).</summary>
    Gguf,
}

/// <summary>
/// The LLaMA / Vicuna tokenizer of LLaVA-1.5 and ShareGPT4V models, with LLaVA's image-placeholder splicing.
/// Immutable once loaded: Encode and Decode may be called from any number of threads at once.
/// </summary>
internal sealed class LlavaTokenizer
{
    /// <summary>The image marker written in prompt text.</summary>
    public const string ImageMarker = "<image>";

    /// <summary>The placeholder id original LLaVA / ShareGPT4V put where an image goes (llava-hf uses the id of &lt;image&gt;, 32000).</summary>
    public const int LlavaImageTokenIndex = -200;

    private readonly SentencePieceBpe _bpe;
    private readonly Dictionary<string, int> _addedByContent;
    private readonly Dictionary<int, AddedToken> _addedById;
    private readonly string[] _splitTokens; // longest first, so "<s>" never shadows a longer token
    private readonly Dictionary<char, string[]> _splitByFirstChar; // the same tokens by first character, longest first
    private readonly bool _prefixFirstSegment;
    private readonly bool _prefixAfterSpecial;
    private readonly bool _splitOnWhitespaceSymbol;
    private readonly HashSet<int> _specialIds;

    /// <summary>The file the vocabulary came from.</summary>
    public TokenizerFileKind FileKind { get; }
    /// <summary>Full path of that file.</summary>
    public string SourceFile { get; }
    public int BosId { get; }
    public int EosId { get; }
    public int UnkId { get; }
    /// <summary>Padding id, or null when the files name none.</summary>
    public int? PadId { get; }
    /// <summary>tokenizer_config.json <c>add_bos_token</c> (default true).</summary>
    public bool AddBosToken { get; }
    /// <summary>
    /// tokenizer_config.json <c>legacy</c> (default true, as transformers). Only matters for tokenizer.model: when false,
    /// text right after a special token such as &lt;/s&gt; gets no leading ▁ (transformers 4.37 slow tokenizer).
    /// </summary>
    public bool Legacy { get; }
    /// <summary>One more than the largest id this tokenizer can produce.</summary>
    public int VocabularySize { get; }
    /// <summary>The strings that are turned into their ids wherever they appear in text.</summary>
    public IReadOnlyList<string> SpecialTokens => _splitTokens;

    private LlavaTokenizer(TokenizerFileKind kind, string sourceFile, SentencePieceBpe bpe, IReadOnlyList<AddedToken> added,
        TokenizerSettings settings, bool prefixFirst, bool prefixAfterSpecial, bool splitOnWhitespaceSymbol)
    {
        FileKind = kind;
        SourceFile = sourceFile;
        _bpe = bpe;
        _prefixFirstSegment = prefixFirst;
        _prefixAfterSpecial = prefixAfterSpecial;
        _splitOnWhitespaceSymbol = splitOnWhitespaceSymbol;
        Legacy = settings.Legacy ?? true;
        AddBosToken = settings.AddBosToken;

        var vocab = bpe.Vocabulary;
        _addedById = new Dictionary<int, AddedToken>();
        _addedByContent = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var a in added)
        {
            _addedById[a.Id] = a;
            _addedByContent[a.Content] = a.Id;
        }
        VocabularySize = Math.Max(vocab.Count, _addedById.Count == 0 ? 0 : _addedById.Keys.Max() + 1);

        string folder = Path.GetDirectoryName(sourceFile) ?? "";
        int Resolve(string? content, string fallback, string key)
        {
            content ??= fallback;
            return TokenToId(content) ?? throw new ModelConfigurationException(
                $"The {key} '{content}' is not in the vocabulary (from tokenizer_config.json / special_tokens_map.json)", folder, key);
        }
        BosId = Resolve(settings.BosToken, "<s>", "bos_token");
        EosId = Resolve(settings.EosToken, "</s>", "eos_token");
        UnkId = Resolve(settings.UnkToken, vocab.Pieces[vocab.UnknownId], "unk_token");
        PadId = settings.PadToken is null ? null : Resolve(settings.PadToken, "", "pad_token");

        _specialIds = new HashSet<int> { BosId, EosId, UnkId };
        if (PadId is int pad) _specialIds.Add(pad);
        for (int id = 0; id < vocab.Count; id++)
            if (vocab.Kinds[id] is PieceKind.Control or PieceKind.Unknown) _specialIds.Add(id);
        foreach (var a in added) if (a.Special) _specialIds.Add(a.Id);
        foreach (var extra in settings.AdditionalSpecialTokens)
            if (TokenToId(extra) is int id) _specialIds.Add(id);

        // Every added token and every special token is split out of the text before BPE, as transformers does.
        var split = new HashSet<string>(_addedByContent.Keys, StringComparer.Ordinal);
        foreach (int id in _specialIds) if (IdToToken(id) is { Length: > 0 } s) split.Add(s);
        split.Remove(""); // an empty added token would match everywhere
        _splitTokens = split.OrderByDescending(s => s.Length).ThenBy(s => s, StringComparer.Ordinal).ToArray();
        _splitByFirstChar = _splitTokens.GroupBy(s => s[0]).ToDictionary(g => g.Key, g => g.ToArray());
    }

    /// <summary>Loads the tokenizer of a model folder (tokenizer.model preferred, else tokenizer.json, plus the config files).</summary>
    public static LlavaTokenizer Load(string folder, TokenizerFileKind kind = TokenizerFileKind.Auto)
    {
        ArgumentNullException.ThrowIfNull(folder);
        if (!Directory.Exists(folder)) throw new ModelConfigurationException("Tokenizer folder not found", folder);
        string modelPath = Path.Combine(folder, "tokenizer.model");
        string jsonPath = Path.Combine(folder, "tokenizer.json");
        if (kind == TokenizerFileKind.Auto)
        {
            if (File.Exists(modelPath)) kind = TokenizerFileKind.SentencePieceModel;
            else if (File.Exists(jsonPath)) kind = TokenizerFileKind.TokenizerJson;
            else throw new ModelConfigurationException("Neither tokenizer.model nor tokenizer.json is in the model folder", folder);
        }

        var settings = TokenizerFileReader.ReadSettings(folder);
        if (kind == TokenizerFileKind.SentencePieceModel)
        {
            var vocab = SentencePieceModelReader.Read(TokenizerFileReader.ReadCapped(modelPath, TokenizerFileReader.MaxModelFileBytes), modelPath);
            bool legacy = settings.Legacy ?? true;
            // legacy=false (transformers >= 4.34 slow tokenizer): the ▁ is added to the start of the text only,
            // so a segment after a special token starts without one. legacy=true: every segment gets the model's dummy prefix.
            return new LlavaTokenizer(kind, modelPath, new SentencePieceBpe(vocab), settings.AddedTokens, settings,
                prefixFirst: legacy ? vocab.AddDummyPrefix : true, prefixAfterSpecial: legacy && vocab.AddDummyPrefix, splitOnWhitespaceSymbol: false);
        }

        var json = TokenizerFileReader.ReadTokenizerJson(jsonPath);
        var added = json.AddedTokens.Concat(settings.AddedTokens).GroupBy(a => a.Id).Select(g => g.First()).ToList();
        return new LlavaTokenizer(kind, jsonPath, new SentencePieceBpe(json.Vocabulary), added, settings,
            prefixFirst: json.Prefix != PrefixScheme.Never, prefixAfterSpecial: json.Prefix == PrefixScheme.Always,
            splitOnWhitespaceSymbol: json.SplitOnWhitespaceSymbol);
    }

    /// <summary>
    /// The tokenizer of a GGUF file: pieces, scores and types from <c>tokenizer.ggml.*</c>, merged by score with
    /// byte fallback. As llama.cpp does, every text segment (also after a special token) gets the ▁ prefix unless
    /// <c>tokenizer.ggml.add_space_prefix</c> is false.
    /// </summary>
    /// <summary>Loads the tokenizer a GGUF file carries in its metadata (see <see cref="FromGguf"/>).</summary>
    public static LlavaTokenizer LoadGguf(string ggufPath)
    {
        using var f = Checkpoints.Gguf.GgufFile.Open(ggufPath);
        return FromGguf(f);
    }

    internal static LlavaTokenizer FromGguf(Checkpoints.Gguf.GgufFile f)
    {
        string file = f.FilePath;
        var model = f.String("tokenizer.ggml.model") ?? throw new ModelConfigurationException("Required key is missing", file, "tokenizer.ggml.model");
        if (model != "llama")
            throw new ModelConfigurationException($"Tokenizer model '{model}' is not supported (supported: llama, SentencePiece)", file, "tokenizer.ggml.model");
        var tokens = f.Array<string>("tokenizer.ggml.tokens") ?? throw new ModelConfigurationException("Required key is missing", file, "tokenizer.ggml.tokens");
        if (tokens.Length == 0 || tokens.Length > SentencePieceVocabulary.MaxPieces)
            throw new ModelConfigurationException($"{tokens.Length} tokens is outside [1, {SentencePieceVocabulary.MaxPieces}]", file, "tokenizer.ggml.tokens");
        var scores = f.Array<float>("tokenizer.ggml.scores") ?? new float[tokens.Length];
        var types = f.Array<int>("tokenizer.ggml.token_type") ?? Enumerable.Repeat((int)PieceKind.Normal, tokens.Length).ToArray();
        if (scores.Length != tokens.Length || types.Length != tokens.Length)
            throw new ModelConfigurationException($"tokens, scores and token_type have different lengths ({tokens.Length}, {scores.Length}, {types.Length})", file, "tokenizer.ggml.scores");
        var kinds = new PieceKind[tokens.Length];
        for (int i = 0; i < tokens.Length; i++)
        {
            if (types[i] < 1 || types[i] > 6)
                throw new ModelConfigurationException($"Token {i} has unknown type {types[i]}", file, "tokenizer.ggml.token_type");
            if (tokens[i].Length > SentencePieceVocabulary.MaxPieceChars)
                throw new ModelConfigurationException($"Token {i} is {tokens[i].Length} characters long, more than the {SentencePieceVocabulary.MaxPieceChars} accepted", file, "tokenizer.ggml.tokens");
            if (!float.IsFinite(scores[i]))
                throw new ModelConfigurationException($"Token {i} has a non-finite score", file, "tokenizer.ggml.scores");
            kinds[i] = (PieceKind)types[i];
        }
        int Id(string key, int fallback)
        {
            int id = f.Int(key, -1, int.MaxValue) ?? fallback;
            if (id < 0 || id >= tokens.Length)
                throw new ModelConfigurationException($"Token id {id} is outside the {tokens.Length} tokens", file, key);
            return id;
        }
        int unk = Id("tokenizer.ggml.unknown_token_id", 0), bos = Id("tokenizer.ggml.bos_token_id", 1), eos = Id("tokenizer.ggml.eos_token_id", 2);
        int? pad = f.Has("tokenizer.ggml.padding_token_id") ? Id("tokenizer.ggml.padding_token_id", 0) : null;
        bool prefix = f.Bool("tokenizer.ggml.add_space_prefix") ?? true;
        var vocab = new SentencePieceVocabulary(tokens, scores, kinds, unk, byteFallback: true, addDummyPrefix: prefix, removeExtraWhitespaces: false);
        var settings = new TokenizerSettings(Legacy: true, AddBosToken: f.Bool("tokenizer.ggml.add_bos_token") ?? true,
            AddEosToken: f.Bool("tokenizer.ggml.add_eos_token") ?? false, BosToken: tokens[bos], EosToken: tokens[eos], UnkToken: tokens[unk],
            PadToken: pad is int p ? tokens[p] : null, AddedTokens: Array.Empty<AddedToken>(), AdditionalSpecialTokens: Array.Empty<string>());
        return new LlavaTokenizer(TokenizerFileKind.Gguf, file, new SentencePieceBpe(vocab), settings.AddedTokens, settings,
            prefixFirst: prefix, prefixAfterSpecial: prefix, splitOnWhitespaceSymbol: false);
    }

    /// <summary>The SentencePiece pieces, scores and kinds (without added tokens).</summary>
    internal SentencePieceVocabulary Vocabulary => _bpe.Vocabulary;

    /// <summary>Id of a piece or added token, or null.</summary>
    public int? TokenToId(string token)
    {
        if (_addedByContent.TryGetValue(token, out int id)) return id;
        return _bpe.Vocabulary.AllPieces.TryGetValue(token, out id) ? id : null;
    }

    /// <summary>Piece text (with ▁ and &lt;0xNN&gt; spellings) or added-token text of an id, or null.</summary>
    public string? IdToToken(int id)
    {
        if (_addedById.TryGetValue(id, out var added)) return added.Content;
        return id >= 0 && id < _bpe.Vocabulary.Count ? _bpe.Vocabulary.Pieces[id] : null;
    }

    /// <summary>True for BOS, EOS, UNK, PAD, control pieces and special added tokens such as &lt;image&gt;.</summary>
    public bool IsSpecial(int id) => _specialIds.Contains(id);

    /// <summary>Encodes text; special tokens written in it (&lt;/s&gt;, &lt;image&gt; when it is an added token, ...) become their ids.</summary>
    /// <exception cref="PromptException">The text holds a lone surrogate (it is not valid Unicode).</exception>
    public int[] Encode(string text, bool addBos = true)
    {
        ArgumentNullException.ThrowIfNull(text);
        CheckValidUnicode(text);
        var ids = new List<int>(text.Length / 3 + 2);
        if (addBos) ids.Add(BosId);
        EncodeText(text, ids);
        return ids.ToArray();
    }

    /// <summary>
    /// LLaVA's <c>tokenizer_image_token</c>: each <c>&lt;image&gt;</c>-separated chunk is tokenised on its own
    /// (so the text after an image starts with ▁), one BOS at the front (when <see cref="AddBosToken"/>), and
    /// <paramref name="imageTokenId"/> between chunks: -200 for original LLaVA / ShareGPT4V, 32000 for llava-hf.
    /// </summary>
    /// <exception cref="PromptException">The text holds a lone surrogate (it is not valid Unicode).</exception>
    public int[] EncodePrompt(string text, int imageTokenId)
    {
        ArgumentNullException.ThrowIfNull(text);
        CheckValidUnicode(text);
        var ids = new List<int>(text.Length / 3 + 2);
        if (AddBosToken) ids.Add(BosId);
        var chunks = text.Split(ImageMarker);
        for (int i = 0; i < chunks.Length; i++)
        {
            if (i > 0) ids.Add(imageTokenId);
            EncodeText(chunks[i], ids);
        }
        return ids.ToArray();
    }

    /// <summary>
    /// A lone surrogate has no UTF-8 spelling: byte fallback would silently turn it into U+FFFD, so the text could not
    /// round-trip. Refuse it instead, naming where it is.
    /// </summary>
    private static void CheckValidUnicode(string text)
    {
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            if (!char.IsSurrogate(c)) continue;
            if (char.IsHighSurrogate(c) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1])) { i++; continue; }
            throw new PromptException($"The text is not valid Unicode: a lone surrogate U+{(int)c:X4} at character {i}");
        }
    }

    /// <summary>Number of image placeholders <see cref="EncodePrompt"/> inserts for a text.</summary>
    public static int CountImageMarkers(string text)
    {
        int count = 0;
        for (int i = text.IndexOf(ImageMarker, StringComparison.Ordinal); i >= 0; i = text.IndexOf(ImageMarker, i + ImageMarker.Length, StringComparison.Ordinal))
            count++;
        return count;
    }

    /// <summary>
    /// Decodes ids to text: byte pieces are joined into UTF-8, the leading space of the first piece is dropped.
    /// Negative ids (image placeholders) and ids outside the vocabulary produce nothing when <paramref name="skipSpecialTokens"/>.
    /// </summary>
    public string Decode(IEnumerable<int> ids, bool skipSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(ids);
        var stream = new StreamingDetokenizer(this, skipSpecialTokens);
        var sb = new StringBuilder();
        foreach (int id in ids) sb.Append(stream.Append(id));
        sb.Append(stream.Flush());
        return sb.ToString();
    }

    /// <summary>A detokenizer for one generation stream (not shared between threads).</summary>
    public StreamingDetokenizer CreateStreamingDetokenizer(bool skipSpecialTokens = true) => new(this, skipSpecialTokens);

    /// <summary>
    /// Encodes like the slow <c>LlamaTokenizer</c> LLaVA training loads, whose handling of text right after a special
    /// token (such as the &lt;/s&gt; that closes a round) depends on its version and <c>legacy</c> flag; the text at the
    /// start always gets the dummy prefix. Used by the training preprocessing, which must reproduce each variant's ids.
    /// </summary>
    internal int[] EncodeSlow(string text, bool addBos, AfterSpecialText after)
    {
        ArgumentNullException.ThrowIfNull(text);
        CheckValidUnicode(text);
        var ids = new List<int>(text.Length / 3 + 2);
        if (addBos) ids.Add(BosId);
        bool atStart = true;
        int pos = 0;
        while (pos <= text.Length)
        {
            var (at, token) = FindSpecial(text, pos);
            int end = at < 0 ? text.Length : at;
            if (end > pos)
            {
                var segment = text.Substring(pos, end - pos);
                if (atStart || after == AfterSpecialText.DummyPrefix) EncodeSegment(segment, true, ids);
                else if (after == AfterSpecialText.NoPrefix) EncodeSegment(segment, false, ids);
                else
                {
                    // transformers 4.31 (legacy=false): encoded with the dummy prefix, then the first piece loses its ▁.
                    var part = new List<int>();
                    EncodeSegment(segment, true, part);
                    if (part.Count > 0 && IdToToken(part[0]) is { Length: > 0 } first && first[0] == SentencePieceBpe.WhitespaceSymbol)
                    {
                        var rest = first[1..];
                        if (rest.Length == 0) part.RemoveAt(0);
                        else part[0] = TokenToId(rest) ?? UnkId;
                    }
                    ids.AddRange(part);
                }
            }
            if (at < 0) break;
            ids.Add(TokenToId(token!)!.Value);
            atStart = false;
            pos = at + token!.Length;
        }
        return ids.ToArray();
    }

    private void EncodeText(string text, List<int> ids)
    {
        bool atStart = true;
        int pos = 0;
        while (pos <= text.Length)
        {
            var (at, token) = FindSpecial(text, pos);
            int end = at < 0 ? text.Length : at;
            if (end > pos) EncodeSegment(text.Substring(pos, end - pos), atStart ? _prefixFirstSegment : _prefixAfterSpecial, ids);
            if (at < 0) break;
            ids.Add(TokenToId(token!)!.Value);
            atStart = false;
            pos = at + token!.Length;
        }
    }

    private void EncodeSegment(string segment, bool prefix, List<int> ids)
    {
        string normalized = _bpe.Normalize(segment, prefix);
        if (!_splitOnWhitespaceSymbol) { _bpe.Encode(normalized, ids); return; }
        // Metaspace pre-tokeniser: words start at each ▁ and are encoded separately.
        int start = 0;
        for (int i = 1; i <= normalized.Length; i++)
        {
            if (i == normalized.Length || normalized[i] == SentencePieceBpe.WhitespaceSymbol)
            {
                _bpe.Encode(normalized.Substring(start, i - start), ids);
                start = i;
            }
        }
    }

    /// <summary>
    /// The first special token at or after <paramref name="from"/> (the longest one where several start at the same
    /// place). One left-to-right pass: searching for every token from the cursor on each call made a text full of
    /// special tokens quadratic (a million-character prompt of "&lt;/s&gt;" took minutes).
    /// </summary>
    private (int at, string? token) FindSpecial(string text, int from)
    {
        if (_splitByFirstChar.Count == 0) return (-1, null);
        var span = text.AsSpan();
        for (int i = from; i < span.Length; i++)
        {
            if (!_splitByFirstChar.TryGetValue(span[i], out var candidates)) continue;
            foreach (var token in candidates)
                if (span[i..].StartsWith(token, StringComparison.Ordinal)) return (i, token);
        }
        return (-1, null);
    }

    /// <summary>
    /// The UTF-8 bytes an id contributes to decoded text, or null when it contributes nothing.
    /// <paramref name="isWordStart"/> tells whether the text starts with the ▁ that SentencePiece drops at the very start.
    /// </summary>
    internal byte[]? TokenBytes(int id, bool skipSpecialTokens, out bool isWordStart)
    {
        isWordStart = false;
        if (id < 0) return skipSpecialTokens ? null : Encoding.UTF8.GetBytes(ImageMarker);
        if (_addedById.TryGetValue(id, out var added))
            return added.Special && skipSpecialTokens ? null : Encoding.UTF8.GetBytes(added.Content);
        var vocab = _bpe.Vocabulary;
        if (id >= vocab.Count) return null;
        if (vocab.ByteValueOfId[id] >= 0) return [(byte)vocab.ByteValueOfId[id]];
        if (_specialIds.Contains(id)) return skipSpecialTokens ? null : Encoding.UTF8.GetBytes(vocab.Pieces[id]);
        string piece = vocab.Pieces[id];
        isWordStart = piece.Length > 0 && piece[0] == SentencePieceBpe.WhitespaceSymbol;
        return Encoding.UTF8.GetBytes(piece.Replace(SentencePieceBpe.WhitespaceSymbol, ' '));
    }
}

/// <summary>How the slow LLaMA tokenizer encodes text that follows a special token inside one string.</summary>
internal enum AfterSpecialText
{
    /// <summary>With the dummy prefix, like text at the start (<c>legacy=true</c>, any transformers version).</summary>
    DummyPrefix,
    /// <summary>Without it (<c>legacy=false</c>, transformers ≥ 4.34): "&lt;/s&gt;USER" → 2, "USER".</summary>
    NoPrefix,
    /// <summary>With it, then the first piece's ▁ stripped (<c>legacy=false</c>, transformers 4.31): "&lt;/s&gt;USER" → 2, "US", "ER".</summary>
    PrefixPieceStripped,
}
