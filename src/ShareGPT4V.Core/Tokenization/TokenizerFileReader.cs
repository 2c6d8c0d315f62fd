using System.Text.Json;

namespace ShareGPT4V.Tokenization;

/// <summary>How a Hugging Face <c>tokenizer.json</c> adds the leading ▁ to a text segment.</summary>
internal enum PrefixScheme
{
    /// <summary>Every segment between special tokens (the Prepend normaliser of LLaMA-2's tokenizer.json).</summary>
    Always,
    /// <summary>Only the segment at the very start of the text (Metaspace prepend_scheme "first").</summary>
    First,
    Never,
}

/// <summary>A token added on top of the model's own pieces (special or not).</summary>
internal sealed record AddedToken(int Id, string Content, bool Special);

/// <summary>What a tokenizer.json holds, converted to the SentencePiece form the encoder uses.</summary>
internal sealed record TokenizerJsonContent(
    SentencePieceVocabulary Vocabulary, IReadOnlyList<AddedToken> AddedTokens, PrefixScheme Prefix, bool SplitOnWhitespaceSymbol);

/// <summary>The settings of tokenizer_config.json, special_tokens_map.json and added_tokens.json that matter here.</summary>
internal sealed record TokenizerSettings(
    bool? Legacy, bool AddBosToken, bool AddEosToken,
    string? BosToken, string? EosToken, string? UnkToken, string? PadToken,
    IReadOnlyList<AddedToken> AddedTokens, IReadOnlyList<string> AdditionalSpecialTokens);

/// <summary>Reads and validates the tokenizer files of a model folder. Every problem names the file at fault.</summary>
internal static class TokenizerFileReader
{
    public const long MaxModelFileBytes = 64L << 20;
    public const long MaxConfigFileBytes = 16L << 20;

    public static byte[] ReadCapped(string path, long maxBytes)
    {
        var info = new FileInfo(path);
        if (!info.Exists) throw new ModelConfigurationException("Tokenizer file not found", path);
        if (info.Length > maxBytes)
            throw new ModelConfigurationException($"Tokenizer file is {info.Length} bytes, more than the {maxBytes}-byte limit", path);
        try { return File.ReadAllBytes(path); }
        catch (IOException ex) { throw new ModelConfigurationException($"Cannot read tokenizer file: {ex.Message}", path, inner: ex); }
        catch (UnauthorizedAccessException ex) { throw new ModelConfigurationException($"Cannot read tokenizer file: {ex.Message}", path, inner: ex); }
    }

    private static JsonDocument ParseJson(string path, long maxBytes)
    {
        var bytes = ReadCapped(path, maxBytes);
        try
        {
            var doc = JsonDocument.Parse(bytes, new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip, MaxDepth = 64 });
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
            {
                doc.Dispose();
                throw new ModelConfigurationException("Expected a JSON object at the top level", path);
            }
            if (Configuration.JsonText.FindUndecodableString(doc.RootElement) is { } where)
            {
                doc.Dispose();
                throw new ModelConfigurationException(Configuration.JsonText.UndecodableMessage(where), path);
            }
            return doc;
        }
        catch (JsonException ex) { throw new ModelConfigurationException($"Malformed JSON: {ex.Message}", path, inner: ex); }
    }

    /// <summary>
    /// Rebuilds the SentencePiece model of a LLaMA-style BPE tokenizer.json: byte pieces, &lt;unk&gt;, &lt;s&gt;, &lt;/s&gt;
    /// score 0, pieces made only of ▁ score -1e9, every other piece -(id - 259). For the LLaMA vocabulary these
    /// are exactly the scores of tokenizer.model, so both files give the same ids.
    /// </summary>
    public static TokenizerJsonContent ReadTokenizerJson(string path)
    {
        using var doc = ParseJson(path, MaxModelFileBytes);
        var root = doc.RootElement;
        if (!root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object)
            throw new ModelConfigurationException("No 'model' object", path, "model");
        string type = GetString(model, "type") ?? "";
        if (type != "BPE")
            throw new ModelConfigurationException($"Only BPE tokenizer.json files (LLaMA family) are supported, not '{type}'", path, "model.type");
        if (!model.TryGetProperty("vocab", out var vocab) || vocab.ValueKind != JsonValueKind.Object)
            throw new ModelConfigurationException("No 'model.vocab' object", path, "model.vocab");

        var byId = new Dictionary<int, string>();
        foreach (var entry in vocab.EnumerateObject())
        {
            if (byId.Count >= SentencePieceVocabulary.MaxPieces)
                throw new ModelConfigurationException($"The vocabulary has more than {SentencePieceVocabulary.MaxPieces} entries", path, "model.vocab");
            if (entry.Name.Length > SentencePieceVocabulary.MaxPieceChars)
                throw new ModelConfigurationException($"A vocabulary entry is {entry.Name.Length} characters long, more than the {SentencePieceVocabulary.MaxPieceChars} accepted", path, "model.vocab");
            if (entry.Value.ValueKind != JsonValueKind.Number || !entry.Value.TryGetInt32(out int id) || id < 0)
                throw new ModelConfigurationException($"Vocabulary entry '{entry.Name}' has no valid id", path, "model.vocab");
            if (!byId.TryAdd(id, entry.Name))
                throw new ModelConfigurationException($"Id {id} is used twice in the vocabulary", path, "model.vocab");
        }
        int count = byId.Count;
        if (count == 0) throw new ModelConfigurationException("The vocabulary is empty", path, "model.vocab");
        for (int id = 0; id < count; id++)
            if (!byId.ContainsKey(id))
                throw new ModelConfigurationException($"Vocabulary ids are not contiguous: {id} is missing", path, "model.vocab");

        bool byteFallback = model.TryGetProperty("byte_fallback", out var bf) && bf.ValueKind == JsonValueKind.True;
        string unkToken = GetString(model, "unk_token") ?? "<unk>";

        var added = new List<AddedToken>();
        if (root.TryGetProperty("added_tokens", out var addedArray) && addedArray.ValueKind == JsonValueKind.Array)
        {
            foreach (var t in addedArray.EnumerateArray())
            {
                string? content = GetString(t, "content");
                if (content is null || !t.TryGetProperty("id", out var idEl) || idEl.ValueKind != JsonValueKind.Number || !idEl.TryGetInt32(out int id) || id < 0)
                    throw new ModelConfigurationException("An added token has no content or id", path, "added_tokens");
                CheckAddedToken(id, content, added.Count, path, "added_tokens");
                bool special = t.TryGetProperty("special", out var sp) && sp.ValueKind == JsonValueKind.True;
                added.Add(new AddedToken(id, content, special));
            }
        }
        var specialIds = added.Where(a => a.Special).Select(a => a.Id).ToHashSet();

        var pieces = new string[count];
        var scores = new float[count];
        var kinds = new PieceKind[count];
        int unkId = -1;
        for (int id = 0; id < count; id++)
        {
            string piece = byId[id];
            pieces[id] = piece;
            if (piece == unkToken) { kinds[id] = PieceKind.Unknown; unkId = id; scores[id] = 0; }
            else if (byteFallback && SentencePieceVocabulary.ParseBytePiece(piece) >= 0) { kinds[id] = PieceKind.Byte; scores[id] = 0; }
            else if (specialIds.Contains(id)) { kinds[id] = PieceKind.Control; scores[id] = 0; }
            else
            {
                kinds[id] = PieceKind.Normal;
                scores[id] = piece.All(c => c == SentencePieceBpe.WhitespaceSymbol) ? -1e9f : -(id - 259);
            }
        }
        if (unkId < 0) throw new ModelConfigurationException($"The unk token '{unkToken}' is not in the vocabulary", path, "model.unk_token");

        var (prefix, split) = ReadPrefixScheme(root);
        var vocabulary = new SentencePieceVocabulary(pieces, scores, kinds, unkId, byteFallback, addDummyPrefix: prefix != PrefixScheme.Never, removeExtraWhitespaces: false);
        return new TokenizerJsonContent(vocabulary, added, prefix, split);
    }

    private static (PrefixScheme, bool split) ReadPrefixScheme(JsonElement root)
    {
        // LLaMA-2 style: normaliser Prepend("▁") + Replace(" ", "▁"), no pre-tokeniser.
        if (root.TryGetProperty("normalizer", out var norm) && FindByType(norm, "Prepend") is { } prepend
            && GetString(prepend, "prepend") == "\u2581")
            return (PrefixScheme.Always, false);
        // Newer exports: Metaspace pre-tokeniser with a prepend scheme.
        if (root.TryGetProperty("pre_tokenizer", out var pre) && FindByType(pre, "Metaspace") is { } meta)
        {
            bool split = !(meta.TryGetProperty("split", out var s) && s.ValueKind == JsonValueKind.False);
            string? scheme = GetString(meta, "prepend_scheme");
            if (scheme is null)
                scheme = meta.TryGetProperty("add_prefix_space", out var aps) && aps.ValueKind == JsonValueKind.False ? "never" : "always";
            return (scheme switch { "first" => PrefixScheme.First, "never" => PrefixScheme.Never, _ => PrefixScheme.Always }, split);
        }
        return (PrefixScheme.Never, false);
    }

    private static JsonElement? FindByType(JsonElement element, string type)
    {
        if (element.ValueKind != JsonValueKind.Object) return null;
        if (GetString(element, "type") == type) return element;
        foreach (var listName in new[] { "normalizers", "pretokenizers" })
            if (element.TryGetProperty(listName, out var list) && list.ValueKind == JsonValueKind.Array)
                foreach (var child in list.EnumerateArray())
                    if (FindByType(child, type) is { } found) return found;
        return null;
    }

    /// <summary>Reads the optional config files; absent files contribute nothing.</summary>
    public static TokenizerSettings ReadSettings(string folder)
    {
        bool? legacy = null;
        bool addBos = true, addEos = false;
        string? bos = null, eos = null, unk = null, pad = null;
        var added = new Dictionary<int, AddedToken>();
        var additional = new List<string>();

        string configPath = Path.Combine(folder, "tokenizer_config.json");
        if (File.Exists(configPath))
        {
            using var doc = ParseJson(configPath, MaxConfigFileBytes);
            var root = doc.RootElement;
            legacy = GetBool(root, "legacy", configPath);
            addBos = GetBool(root, "add_bos_token", configPath) ?? true;
            addEos = GetBool(root, "add_eos_token", configPath) ?? false;
            bos = GetTokenContent(root, "bos_token", configPath);
            eos = GetTokenContent(root, "eos_token", configPath);
            unk = GetTokenContent(root, "unk_token", configPath);
            pad = GetTokenContent(root, "pad_token", configPath);
            if (root.TryGetProperty("added_tokens_decoder", out var dec) && dec.ValueKind == JsonValueKind.Object)
            {
                foreach (var entry in dec.EnumerateObject())
                {
                    if (!int.TryParse(entry.Name, out int id) || id < 0 || GetString(entry.Value, "content") is not { } content)
                        throw new ModelConfigurationException($"Invalid added token entry '{entry.Name}'", configPath, "added_tokens_decoder");
                    bool special = entry.Value.TryGetProperty("special", out var sp) && sp.ValueKind == JsonValueKind.True;
                    CheckAddedToken(id, content, added.Count, configPath, "added_tokens_decoder");
                    added[id] = new AddedToken(id, content, special);
                }
            }
            ReadStringList(root, "additional_special_tokens", configPath, additional);
        }

        // transformers lets special_tokens_map.json override the config's special tokens (ShareGPT4V: pad "<unk>").
        string mapPath = Path.Combine(folder, "special_tokens_map.json");
        if (File.Exists(mapPath))
        {
            using var doc = ParseJson(mapPath, MaxConfigFileBytes);
            var root = doc.RootElement;
            bos = GetTokenContent(root, "bos_token", mapPath) ?? bos;
            eos = GetTokenContent(root, "eos_token", mapPath) ?? eos;
            unk = GetTokenContent(root, "unk_token", mapPath) ?? unk;
            pad = GetTokenContent(root, "pad_token", mapPath) ?? pad;
            ReadStringList(root, "additional_special_tokens", mapPath, additional);
        }

        string addedPath = Path.Combine(folder, "added_tokens.json");
        if (File.Exists(addedPath))
        {
            using var doc = ParseJson(addedPath, MaxConfigFileBytes);
            foreach (var entry in doc.RootElement.EnumerateObject())
            {
                if (entry.Value.ValueKind != JsonValueKind.Number || !entry.Value.TryGetInt32(out int id) || id < 0)
                    throw new ModelConfigurationException($"Added token '{entry.Name}' has no valid id", addedPath, entry.Name);
                CheckAddedToken(id, entry.Name, added.Count, addedPath, entry.Name);
                // added_tokens.json has no 'special' flag; LLaVA's <image>/<pad> are special, so treat them as such.
                added.TryAdd(id, new AddedToken(id, entry.Name, true));
            }
        }

        return new TokenizerSettings(legacy, addBos, addEos, bos, eos, unk, pad,
            added.Values.OrderBy(a => a.Id).ToList(), additional.Distinct().ToList());
    }

    /// <summary>Bounds an added token: its id sizes the tokenizer's id range, and every token is searched for in every text.</summary>
    private static void CheckAddedToken(int id, string content, int countSoFar, string path, string key)
    {
        if (id >= SentencePieceVocabulary.MaxPieces)
            throw new ModelConfigurationException($"Added token '{Shorten(content)}' has id {id}, beyond the largest accepted vocabulary of {SentencePieceVocabulary.MaxPieces}", path, key);
        if (content.Length > SentencePieceVocabulary.MaxPieceChars)
            throw new ModelConfigurationException($"An added token is {content.Length} characters long, more than the {SentencePieceVocabulary.MaxPieceChars} accepted", path, key);
        if (countSoFar >= SentencePieceVocabulary.MaxAddedTokens)
            throw new ModelConfigurationException($"More than {SentencePieceVocabulary.MaxAddedTokens} added tokens", path, key);
    }

    private static string Shorten(string s) => s.Length <= 40 ? s : s[..40] + "...";

    private static string? GetString(JsonElement obj, string name) =>
        obj.ValueKind == JsonValueKind.Object && obj.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    private static bool? GetBool(JsonElement obj, string name, string path)
    {
        if (!obj.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw new ModelConfigurationException($"'{name}' must be true or false", path, name),
        };
    }

    /// <summary>A special token is written either as a string or as an AddedToken object with "content".</summary>
    private static string? GetTokenContent(JsonElement obj, string name, string path)
    {
        if (!obj.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind == JsonValueKind.String) return v.GetString();
        if (v.ValueKind == JsonValueKind.Object && GetString(v, "content") is { } content) return content;
        throw new ModelConfigurationException($"'{name}' must be a string or an object with 'content'", path, name);
    }

    private static void ReadStringList(JsonElement obj, string name, string path, List<string> into)
    {
        if (!obj.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return;
        if (v.ValueKind != JsonValueKind.Array) throw new ModelConfigurationException($"'{name}' must be a list", path, name);
        foreach (var item in v.EnumerateArray())
        {
            if (item.ValueKind == JsonValueKind.String) into.Add(item.GetString()!);
            else if (item.ValueKind == JsonValueKind.Object && GetString(item, "content") is { } c) into.Add(c);
            else throw new ModelConfigurationException($"'{name}' holds a value that is not a token", path, name);
        }
    }
}
