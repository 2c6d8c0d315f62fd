using System.Text.Json;
using System.Text.Json.Nodes;

namespace ShareGPT4V.Shapes;

/// <summary>The architecture <c>init-model</c> writes (defaults: a ~3-4M-parameter LLaVA for 160 px shapes images).</summary>
internal sealed record InitModelOptions(string DataDir, string OutputDir)
{
    public int ImageSize { get; init; } = 160;
    public int PatchSize { get; init; } = 16;
    public int VisionHidden { get; init; } = 160;
    public int VisionLayers { get; init; } = 5;
    public int VisionHeads { get; init; } = 5;
    public int VisionIntermediate { get; init; } = 640;
    public int Hidden { get; init; } = 192;
    public int Layers { get; init; } = 4;
    public int Heads { get; init; } = 6;
    public int Intermediate { get; init; } = 512;
    public int MaxPositions { get; init; } = 1024;
    public bool Overwrite { get; init; }

    public int Patches => ImageSize / PatchSize * (ImageSize / PatchSize);

    public void Validate()
    {
        static void Range(string name, int v, int lo, int hi)
        {
            if (v < lo || v > hi) throw new ArgumentException($"--{name} must be in [{lo}, {hi}], not {v}");
        }
        Range("image-size", ImageSize, 8, 1024);
        Range("patch-size", PatchSize, 1, 256);
        Range("vision-hidden", VisionHidden, 2, 8192);
        Range("vision-layers", VisionLayers, 1, 64);
        Range("vision-heads", VisionHeads, 1, 128);
        Range("vision-intermediate", VisionIntermediate, 1, 65536);
        Range("hidden", Hidden, 2, 8192);
        Range("layers", Layers, 1, 64);
        Range("heads", Heads, 1, 128);
        Range("intermediate", Intermediate, 1, 65536);
        Range("max-positions", MaxPositions, 16, 131072);
        if (ImageSize % PatchSize != 0) throw new ArgumentException($"--image-size {ImageSize} is not a multiple of --patch-size {PatchSize}");
        if (VisionHidden % VisionHeads != 0) throw new ArgumentException($"--vision-hidden {VisionHidden} is not a multiple of --vision-heads {VisionHeads}");
        if (Hidden % Heads != 0) throw new ArgumentException($"--hidden {Hidden} is not a multiple of --heads {Heads}");
        if (Hidden / Heads % 2 != 0) throw new ArgumentException($"The head dimension --hidden / --heads = {Hidden / Heads} must be even (rotary embeddings)");
        if (Patches + 16 > MaxPositions) throw new ArgumentException($"--max-positions {MaxPositions} leaves no room for text after the {Patches} image tokens");
    }
}

/// <summary>
/// Writes a llava-hf model folder without weights (config, preprocessor, processor, generation and tokenizer files),
/// with a word-level tokenizer built from a shapes dataset and the world's own phrasing.
/// </summary>
internal static class ModelFolderWriter
{
    public const string VicunaSystem =
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.";

    private static readonly JsonSerializerOptions Indented = new()
    {
        WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    /// <summary>Every conversation as both training templates render it: vicuna_v1 and plain.</summary>
    public static IEnumerable<string> TemplateTexts(IReadOnlyList<(string Human, string Gpt)> turns)
    {
        var v = new System.Text.StringBuilder(VicunaSystem).Append(' ');
        foreach (var (h, g) in turns) v.Append("USER: ").Append(h).Append(" ASSISTANT: ").Append(g).Append("</s>");
        yield return v.ToString();
        // The plain template: image marker, caption, newline; also the bare human turn (the eval prompt's content).
        yield return "<image>" + turns[0].Gpt + "\n";
        foreach (var (h, _) in turns) yield return h;
    }

    /// <summary>The dataset's conversations and eval texts, plus a fixed sample of the world's phrasing (so a small dataset still yields every word).</summary>
    public static WordTokenizerBuilder BuildVocabulary(string dataDir)
    {
        var b = new WordTokenizerBuilder();
        int files = 0;
        foreach (var name in new[] { "stage1.json", "stage2.json" })
        {
            string path = Path.Combine(dataDir, name);
            if (!File.Exists(path)) continue;
            files++;
            foreach (var turns in ReadConversations(path))
                foreach (var t in TemplateTexts(turns)) b.AddText(t);
        }
        foreach (var name in new[] { "questions.jsonl", "questions_short.jsonl", "annotations.jsonl" })
        {
            string path = Path.Combine(dataDir, "eval", name);
            if (!File.Exists(path)) continue;
            files++;
            int line = 0;
            foreach (var raw in File.ReadLines(path))
            {
                line++;
                if (string.IsNullOrWhiteSpace(raw)) continue;
                try
                {
                    using var doc = JsonDocument.Parse(raw);
                    foreach (var key in new[] { "text", "answer" })
                        if (doc.RootElement.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.String)
                            foreach (var t in TemplateTexts([(v.GetString()!, v.GetString()!)])) b.AddText(t);
                }
                catch (JsonException e) { throw new InvalidDataException($"{path}, line {line}: not valid JSON ({e.Message})", e); }
            }
        }
        if (files == 0) throw new FileNotFoundException($"--data '{dataDir}' holds none of stage1.json, stage2.json, eval/questions.jsonl (run generate first)");

        // The generator's own phrasing, from a fixed set of scenes: every template and word the world uses.
        for (int split = 0; split < 3; split++)
            for (int i = 0; i < 1500; i++)
            {
                var (_, _, turns, eval) = DatasetGenerator.Plan(0, split, i, RendererKind.Default, extraQuestions: true);
                foreach (var qs in new[] { turns, eval })
                {
                    if (qs.Count == 0) continue;
                    var pairs = qs.Select((q, k) => ((k == 0 ? "<image>\n" : "") + q.Question, q.Answer)).ToList();
                    foreach (var t in TemplateTexts(pairs)) b.AddText(t);
                    foreach (var q in qs) b.AddText(q.Question + Language.ShortAnswerSuffix);
                }
            }
        foreach (var w in World.NumberWords.Concat(World.Colors.Select(World.Capitalize)).Concat(["Yes", "No", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]))
            b.AddText(w);
        return b;
    }

    private static IEnumerable<IReadOnlyList<(string, string)>> ReadConversations(string path)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(File.ReadAllBytes(path)); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: not valid JSON ({e.Message})", e); }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Array) throw new InvalidDataException($"{path}: expected a JSON array of records");
            int index = 0;
            foreach (var r in doc.RootElement.EnumerateArray())
            {
                index++;
                if (!r.TryGetProperty("conversations", out var conv) || conv.ValueKind != JsonValueKind.Array)
                    throw new InvalidDataException($"{path}: record {index} has no 'conversations' list");
                var values = conv.EnumerateArray()
                    .Select(t => t.TryGetProperty("value", out var v) && v.ValueKind == JsonValueKind.String ? v.GetString()! : throw new InvalidDataException($"{path}: record {index} has a turn without a string 'value'"))
                    .ToList();
                var pairs = new List<(string, string)>();
                for (int i = 0; i + 1 < values.Count; i += 2) pairs.Add((values[i], values[i + 1]));
                if (pairs.Count > 0) yield return pairs;
            }
        }
    }

    public static void Write(InitModelOptions o, TextWriter log)
    {
        o.Validate();
        if (!Directory.Exists(o.DataDir)) throw new DirectoryNotFoundException($"--data '{o.DataDir}' does not exist");
        string target = Path.GetFullPath(o.OutputDir);
        if (File.Exists(target)) throw new IOException($"--out '{target}' is a file, not a folder");
        if (Directory.Exists(target) && Directory.EnumerateFileSystemEntries(target).Any() && !o.Overwrite)
            throw new IOException($"--out '{target}' is not empty (pass --overwrite to replace it)");

        var pieces = BuildVocabulary(o.DataDir).Pieces();
        int imageId = WordTokenizerBuilder.FirstNormalId + pieces.Count, padId = imageId + 1, vocabSize = padId + 1;

        string parent = Path.GetDirectoryName(target) ?? ".";
        Directory.CreateDirectory(parent);
        string temp = Path.Combine(parent, $".{Path.GetFileName(target)}.partial-{Environment.ProcessId}");
        if (Directory.Exists(temp)) Directory.Delete(temp, recursive: true);
        Directory.CreateDirectory(temp);
        try
        {
            void Save(string name, JsonNode node) => File.WriteAllText(Path.Combine(temp, name), node.ToJsonString(Indented) + "\n");
            Save("config.json", Config(o, imageId, padId, vocabSize));
            Save("preprocessor_config.json", Preprocessor(o));
            Save("processor_config.json", new JsonObject
            {
                ["image_token"] = "<image>", ["num_additional_image_tokens"] = 1, ["patch_size"] = o.PatchSize,
                ["processor_class"] = "LlavaProcessor", ["vision_feature_select_strategy"] = "default",
            });
            Save("generation_config.json", new JsonObject
            {
                ["_from_model_config"] = true, ["bos_token_id"] = 1, ["eos_token_id"] = 2, ["pad_token_id"] = padId, ["transformers_version"] = "4.45.2",
            });
            Save("tokenizer_config.json", TokenizerConfig(o, imageId, padId));
            Save("special_tokens_map.json", new JsonObject
            {
                ["bos_token"] = "<s>", ["eos_token"] = "</s>", ["unk_token"] = "<unk>", ["pad_token"] = "<pad>",
                ["additional_special_tokens"] = new JsonArray("<image>"),
            });
            Save("added_tokens.json", new JsonObject { ["<image>"] = imageId, ["<pad>"] = padId });
            Save("tokenizer.json", WordTokenizerBuilder.TokenizerJson(pieces, imageId, padId));
            FolderSwap.Replace(temp, target);
        }
        catch
        {
            try { Directory.Delete(temp, recursive: true); } catch (IOException) { }
            throw;
        }
        log.WriteLine($"init-model: {vocabSize} tokens ({pieces.Count} word pieces), {o.Patches} image tokens -> {target}");
    }

    private static JsonObject Config(InitModelOptions o, int imageId, int padId, int vocabSize) => new()
    {
        ["architectures"] = new JsonArray("LlavaForConditionalGeneration"),
        ["ignore_index"] = -100,
        ["image_seq_length"] = o.Patches,
        ["image_token_index"] = imageId,
        ["model_type"] = "llava",
        ["pad_token_id"] = padId,
        ["projector_hidden_act"] = "gelu",
        ["text_config"] = new JsonObject
        {
            ["architectures"] = new JsonArray("LlamaForCausalLM"),
            ["attention_bias"] = false,
            ["attention_dropout"] = 0.0,
            ["bos_token_id"] = 1,
            ["eos_token_id"] = 2,
            ["head_dim"] = o.Hidden / o.Heads,
            ["hidden_act"] = "silu",
            ["hidden_size"] = o.Hidden,
            ["initializer_range"] = 0.02,
            ["intermediate_size"] = o.Intermediate,
            ["max_position_embeddings"] = o.MaxPositions,
            ["mlp_bias"] = false,
            ["model_type"] = "llama",
            ["num_attention_heads"] = o.Heads,
            ["num_hidden_layers"] = o.Layers,
            ["num_key_value_heads"] = o.Heads,
            ["pad_token_id"] = padId,
            ["pretraining_tp"] = 1,
            ["rms_norm_eps"] = 1e-5,
            ["rope_scaling"] = null,
            ["rope_theta"] = 10000.0,
            ["tie_word_embeddings"] = false,
            ["torch_dtype"] = "float32",
            ["use_cache"] = true,
            ["vocab_size"] = vocabSize,
        },
        ["tie_word_embeddings"] = false,
        ["torch_dtype"] = "float32",
        ["transformers_version"] = "4.45.2",
        ["vision_config"] = new JsonObject
        {
            ["attention_dropout"] = 0.0,
            ["dropout"] = 0.0,
            ["hidden_act"] = "gelu",
            ["hidden_size"] = o.VisionHidden,
            ["image_size"] = o.ImageSize,
            ["initializer_factor"] = 1.0,
            ["initializer_range"] = 0.02,
            ["intermediate_size"] = o.VisionIntermediate,
            ["layer_norm_eps"] = 1e-5,
            ["model_type"] = "clip_vision_model",
            ["num_attention_heads"] = o.VisionHeads,
            ["num_channels"] = 3,
            ["num_hidden_layers"] = o.VisionLayers,
            ["patch_size"] = o.PatchSize,
            ["projection_dim"] = o.VisionHidden,
        },
        ["vision_feature_layer"] = -1,
        ["vision_feature_select_strategy"] = "default",
        ["image_aspect_ratio"] = "pad",
        ["sharegpt4v_conv_mode"] = "vicuna_v1",
    };

    private static JsonObject Preprocessor(InitModelOptions o) => new()
    {
        ["crop_size"] = new JsonObject { ["height"] = o.ImageSize, ["width"] = o.ImageSize },
        ["do_center_crop"] = true,
        ["do_convert_rgb"] = true,
        ["do_normalize"] = true,
        ["do_rescale"] = true,
        ["do_resize"] = true,
        ["image_mean"] = new JsonArray(0.48145466, 0.4578275, 0.40821073),
        ["image_processor_type"] = "CLIPImageProcessor",
        ["image_std"] = new JsonArray(0.26862954, 0.26130258, 0.27577711),
        ["resample"] = 3,
        ["rescale_factor"] = 0.00392156862745098,
        ["size"] = new JsonObject { ["shortest_edge"] = o.ImageSize },
    };

    private static JsonObject TokenizerConfig(InitModelOptions o, int imageId, int padId)
    {
        static JsonObject Entry(string content) => new()
        {
            ["content"] = content, ["lstrip"] = false, ["normalized"] = false, ["rstrip"] = false, ["single_word"] = false, ["special"] = true,
        };
        return new JsonObject
        {
            ["add_bos_token"] = true,
            ["add_eos_token"] = false,
            ["added_tokens_decoder"] = new JsonObject
            {
                ["0"] = Entry("<unk>"), ["1"] = Entry("<s>"), ["2"] = Entry("</s>"),
                [imageId.ToString(System.Globalization.CultureInfo.InvariantCulture)] = Entry("<image>"),
                [padId.ToString(System.Globalization.CultureInfo.InvariantCulture)] = Entry("<pad>"),
            },
            ["additional_special_tokens"] = new JsonArray(),
            ["bos_token"] = "<s>",
            ["clean_up_tokenization_spaces"] = false,
            ["eos_token"] = "</s>",
            ["legacy"] = true,
            ["model_max_length"] = o.MaxPositions,
            ["pad_token"] = "<pad>",
            ["padding_side"] = "right",
            ["sp_model_kwargs"] = new JsonObject(),
            ["spaces_between_special_tokens"] = false,
            ["tokenizer_class"] = "LlamaTokenizer",
            ["unk_token"] = "<unk>",
            ["use_default_system_prompt"] = false,
        };
    }
}
