using System.Text.Json;
using System.Text.Json.Nodes;
using ShareGPT4V.Configuration;
using ShareGPT4V.Conversation;
using TorchSharp;

namespace ShareGPT4V.Checkpoints;

/// <summary>How <see cref="ModelConverter"/> lays out the converted model.</summary>
public enum TargetLayout
{
    /// <summary>The layout of the source.</summary>
    Same,
    /// <summary>One llava-hf folder (<c>LlavaForConditionalGeneration</c>, transformers 4.36–4.51 weight names).</summary>
    LlavaHf,
    /// <summary>Original LLaVA-1.5 / ShareGPT4V: an LLM folder (with <c>model.mm_projector.*</c>) and a CLIP tower folder beside it.</summary>
    Original,
}

/// <summary>Options of <see cref="ModelConverter.Convert"/>.</summary>
public sealed record ModelConversionOptions
{
    /// <summary>The layout to write (default: the source's).</summary>
    public TargetLayout Layout { get; init; } = TargetLayout.Same;
    /// <summary>Largest shard in data bytes (transformers' default, 5 GB).</summary>
    public long MaxShardBytes { get; init; } = CheckpointConverter.DefaultMaxShardBytes;
    /// <summary>Overrides the CLIP tower folder named by <c>mm_vision_tower</c> of an original-layout source.</summary>
    public string? VisionTowerPath { get; init; }
    /// <summary>Original layout only: the names of the two folders written inside the output folder (defaults: the source's names).</summary>
    public string? LanguageModelFolderName { get; init; }
    /// <inheritdoc cref="LanguageModelFolderName"/>
    public string? VisionTowerFolderName { get; init; }
    /// <summary>
    /// Write the language model's matrices block-quantized (llava-hf layout only), with the per-tensor choice of
    /// <see cref="LoadOptions.Quantization"/>: the blocks are stored as U8 [rows, row bytes] tensors and named in the
    /// header's <c>__metadata__</c> (<see cref="SafeTensorsFile.QuantizationKeyPrefix"/>), so the folder loads with
    /// its matrices memory-mapped as blocks. Every other tensor is written as stored.
    /// </summary>
    public Modeling.QuantizationFormat? Quantization { get; init; }
}

/// <summary>What a model conversion wrote.</summary>
/// <param name="ModelPath">The folder to load the converted model from (the LLM folder for the original layout).</param>
/// <param name="VisionTowerPath">The CLIP tower folder (the model folder itself for llava-hf).</param>
/// <param name="Layout">The layout written.</param>
/// <param name="Tensors">Tensors written, all checkpoints together.</param>
/// <param name="Bytes">Tensor data bytes written.</param>
public sealed record ModelConversionResult(string ModelPath, string VisionTowerPath, CheckpointLayout Layout, int Tensors, long Bytes);

/// <summary>
/// Rewrites a whole model folder of either layout, from any weight format the library reads (safetensors, PyTorch
/// <c>.bin</c>), as safetensors in the layout of the caller's choice. The checkpoint is first checked against the model
/// exactly as a load would check it, then streamed one tensor at a time in its stored dtype (bit-identical), so a
/// 13B model converts in little memory. Configs, tokenizer and preprocessor files come along; the converted folder
/// loads to the same model with the same preprocessing.
/// </summary>
public static class ModelConverter
{
    /// <summary>Files carried over unchanged (except as noted in <see cref="Convert"/>) when present.</summary>
    private static readonly string[] TokenizerFiles =
    {
        "tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
        "generation_config.json", "chat_template.json", "chat_template.jinja",
    };

    /// <summary>
    /// Converts the model in <paramref name="modelPath"/> into <paramref name="outDir"/> (which must not exist or be empty).
    /// llava-hf output: one folder. Original output: <paramref name="outDir"/> holds the LLM folder and the tower folder
    /// side by side, <c>mm_vision_tower</c> naming the latter, so the LLM folder loads as it is.
    /// </summary>
    public static ModelConversionResult Convert(string modelPath, string outDir, ModelConversionOptions? options = null,
        IProgress<CheckpointWriteProgress>? progress = null)
    {
        options ??= new ModelConversionOptions();
        if (options.MaxShardBytes <= 0)
            throw new ModelConfigurationException("MaxShardBytes must be positive", null, nameof(options.MaxShardBytes));
        var folder = ModelFolder.Open(modelPath, options.VisionTowerPath);
        var layout = options.Layout switch
        {
            TargetLayout.LlavaHf => CheckpointLayout.LlavaHf,
            TargetLayout.Original => CheckpointLayout.Original,
            _ => folder.Config.Layout,
        };
        var outFull = Path.GetFullPath(outDir);
        foreach (var src in new[] { folder.ModelPath, folder.VisionTowerPath })
        {
            var s = src.TrimEnd('/') + "/";
            if ((outFull.TrimEnd('/') + "/").StartsWith(s, StringComparison.Ordinal) || s.StartsWith(outFull.TrimEnd('/') + "/", StringComparison.Ordinal))
                throw new ModelConfigurationException($"The output folder '{outFull}' overlaps the source folder '{src}'; convert into a separate folder", null, "output");
        }
        if (Directory.Exists(outFull) && Directory.EnumerateFileSystemEntries(outFull).Any())
            throw new ModelConfigurationException($"The output folder '{outFull}' is not empty", null, "output");

        if (options.Quantization is not null && layout != CheckpointLayout.LlavaHf)
            throw new ModelConfigurationException("A quantized conversion writes the llava-hf layout only; use Layout = LlavaHf (CLI --layout llava-hf)", null, "Layout");
        var readers = ModelLoader.OpenReaders(folder);
        try
        {
            // The same check a load makes: a checkpoint that would not load is not converted.
            var (sources, _) = ModelLoader.MatchCheckpoint(folder.Config, readers, torch.ScalarType.Float32);
            ITensorReader byOurName = new ModelTensors(sources);
            if (options.Quantization is { } q) byOurName = new QuantizingTensors(byOurName, q);
            return WriteModel(folder, byOurName, outFull, layout, options, progress);
        }
        finally
        {
            foreach (var (r, _) in readers) r.Dispose();
        }
    }

    /// <summary>
    /// Writes <paramref name="tensors"/> (under our parameter names) as a model folder of <paramref name="layout"/> in
    /// <paramref name="outDir"/>, with the configs, tokenizer and preprocessor files of <paramref name="folder"/>.
    /// Used by conversion and by training checkpoints (the trained weights in the input's layout).
    /// </summary>
    internal static ModelConversionResult WriteModel(ModelFolder folder, ITensorReader tensors, string outDir, CheckpointLayout layout,
        ModelConversionOptions options, IProgress<CheckpointWriteProgress>? progress = null)
    {
        // The template is chosen from the layout and the folder name when a config names none; both may change here, so
        // the written config names the source's template and the same weights keep getting the same prompts.
        var source = folder.Config;
        var template = ConversationTemplates.ChooseDefault(source.ModelType, source.Layout == CheckpointLayout.LlavaHf,
            Path.GetFileName(folder.ModelPath.TrimEnd('/', '\\')), source.ConversationTemplate).Name;
        var kept = folder with { Config = source with { ConversationTemplate = template } };
        return layout == CheckpointLayout.LlavaHf
            ? WriteLlavaHf(kept, tensors, outDir, options, progress)
            : WriteOriginal(kept, tensors, outDir, options, progress);
    }

    private static ModelConversionResult WriteLlavaHf(ModelFolder folder, ITensorReader tensors, string outDir,
        ModelConversionOptions options, IProgress<CheckpointWriteProgress>? progress)
    {
        Directory.CreateDirectory(outDir);
        // Our parameter names are the llava-hf (4.36–4.51) names, which the hub checkpoints use.
        var written = SafeTensorsWriter.WriteSharded(outDir, tensors, options.MaxShardBytes, null, progress,
            (tensors as QuantizingTensors)?.Metadata);
        var cfg = folder.Config;
        JsonObject config;
        if (cfg.Layout == CheckpointLayout.LlavaHf)
        {
            config = ReadJson(Path.Combine(folder.ModelPath, "config.json"));
            if (cfg.ConversationTemplate is { } t && t != ConversationTemplates.LlavaHf.Name) config[LlavaConfig.ConversationTemplateKey] = t;
        }
        else
        {
            // The placeholder becomes a token id just past the vocabulary (llava-hf needs a non-negative id); it is
            // replaced by image features before any embedding lookup, so the weights need no new row.
            config = ConfigJson.LlavaHf(cfg, imageTokenIndex: cfg.Text.VocabSize);
        }
        WriteJson(Path.Combine(outDir, "config.json"), config);
        CopyTokenizerFiles(folder.ModelPath, outDir);
        if (cfg.Layout == CheckpointLayout.Original)
            AddImageToken(Path.Combine(outDir, "tokenizer_config.json"), cfg.Text.VocabSize);
        if (folder.PreprocessorConfigPath is { } pre)
            File.Copy(pre, Path.Combine(outDir, "preprocessor_config.json"));
        return new ModelConversionResult(outDir, outDir, CheckpointLayout.LlavaHf, written.TensorCount, written.TotalBytes);
    }

    private static ModelConversionResult WriteOriginal(ModelFolder folder, ITensorReader tensors, string outDir,
        ModelConversionOptions options, IProgress<CheckpointWriteProgress>? progress)
    {
        var cfg = folder.Config;
        bool fromOriginal = cfg.Layout == CheckpointLayout.Original;
        string llmName = ValidFolderName(options.LanguageModelFolderName ?? Path.GetFileName(folder.ModelPath.TrimEnd('/')), nameof(options.LanguageModelFolderName));
        string towerName = ValidFolderName(options.VisionTowerFolderName
            ?? (fromOriginal ? Path.GetFileName(folder.VisionTowerPath.TrimEnd('/')) : "clip-vision-tower"), nameof(options.VisionTowerFolderName));
        if (llmName == towerName)
            throw new ModelConfigurationException($"The LLM and vision tower folders would both be named '{llmName}'", null, nameof(options.VisionTowerFolderName));
        var llmDir = Path.Combine(outDir, llmName);
        var towerDir = Path.Combine(outDir, towerName);
        Directory.CreateDirectory(llmDir);
        Directory.CreateDirectory(towerDir);

        int depth = cfg.ProjectorDepth;
        var llm = SafeTensorsWriter.WriteSharded(llmDir, tensors, options.MaxShardBytes, n => ToOriginalLanguageModelKey(n, depth), progress);
        var tower = SafeTensorsWriter.WriteSharded(towerDir, tensors, options.MaxShardBytes,
            n => n.StartsWith("vision_tower.", StringComparison.Ordinal) ? n["vision_tower.".Length..] : null, progress);

        JsonObject llmConfig, towerConfig;
        if (fromOriginal)
        {
            llmConfig = ReadJson(Path.Combine(folder.ModelPath, "config.json"));
            if (cfg.ConversationTemplate is { } t) llmConfig[LlavaConfig.ConversationTemplateKey] = t;
            towerConfig = ReadJson(Path.Combine(folder.VisionTowerPath, "config.json"));
            if (towerConfig["model_type"]?.GetValue<string>() == "clip")
                towerConfig = ConfigJson.ClipVision(cfg.Vision); // a full CLIPModel's text tower is not written
        }
        else
        {
            llmConfig = ConfigJson.OriginalLanguageModel(cfg);
            towerConfig = ConfigJson.ClipVision(cfg.Vision);
        }
        llmConfig["mm_vision_tower"] = towerName; // resolved against the LLM folder's parent, i.e. outDir
        WriteJson(Path.Combine(llmDir, "config.json"), llmConfig);
        WriteJson(Path.Combine(towerDir, "config.json"), towerConfig);
        CopyTokenizerFiles(folder.ModelPath, llmDir);
        if (folder.PreprocessorConfigPath is { } pre)
            File.Copy(pre, Path.Combine(towerDir, "preprocessor_config.json"));
        return new ModelConversionResult(llmDir, towerDir, CheckpointLayout.Original, llm.TensorCount + tower.TensorCount, llm.TotalBytes + tower.TotalBytes);
    }

    /// <summary>Our name → the LLM checkpoint key of the original layout; null for the tower's tensors.</summary>
    internal static string? ToOriginalLanguageModelKey(string name, int projectorDepth)
    {
        if (name.StartsWith("language_model.", StringComparison.Ordinal)) return name["language_model.".Length..];
        const string proj = "multi_modal_projector.linear_";
        if (name.StartsWith(proj, StringComparison.Ordinal))
        {
            var rest = name[proj.Length..];
            int dot = rest.IndexOf('.');
            int k = int.Parse(rest[..dot]);
            // A linear projector is one bare Linear; mlpNx_gelu is Sequential(Linear, GELU, Linear, ...): Linear k at 2(k-1).
            return projectorDepth == 1 ? "model.mm_projector" + rest[dot..] : $"model.mm_projector.{2 * (k - 1)}{rest[dot..]}";
        }
        return null;
    }

    private static string ValidFolderName(string name, string option)
    {
        if (string.IsNullOrWhiteSpace(name) || name is "." or ".." || name.IndexOfAny(new[] { '/', '\\' }) >= 0)
            throw new ModelConfigurationException($"'{name}' is not a valid folder name", null, option);
        return name;
    }

    /// <summary>Registers &lt;image&gt; at <paramref name="id"/> in a tokenizer_config.json, as llava-hf folders have it.</summary>
    private static void AddImageToken(string tokenizerConfig, int id)
    {
        if (!File.Exists(tokenizerConfig)) return;
        var o = ReadJson(tokenizerConfig);
        var decoder = o["added_tokens_decoder"] as JsonObject ?? new JsonObject();
        if (decoder.Any(kv => kv.Value?["content"]?.GetValue<string>() == "<image>")) return;
        decoder[id.ToString(System.Globalization.CultureInfo.InvariantCulture)] = new JsonObject
        {
            ["content"] = "<image>", ["lstrip"] = false, ["normalized"] = false, ["rstrip"] = false,
            ["single_word"] = false, ["special"] = true,
        };
        o["added_tokens_decoder"] = decoder;
        WriteJson(tokenizerConfig, o);
    }

    private static void CopyTokenizerFiles(string from, string to)
    {
        foreach (var f in TokenizerFiles)
        {
            var src = Path.Combine(from, f);
            if (File.Exists(src)) File.Copy(src, Path.Combine(to, f));
        }
    }

    private static JsonObject ReadJson(string path)
    {
        try
        {
            return JsonNode.Parse(File.ReadAllBytes(path), documentOptions: new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip }) as JsonObject
                ?? throw new ModelConfigurationException("Expected a JSON object", path);
        }
        catch (JsonException e)
        {
            throw new ModelConfigurationException($"Not valid JSON: {e.Message}", path, inner: e);
        }
    }

    private static void WriteJson(string path, JsonObject o) =>
        File.WriteAllText(path, o.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");

    /// <summary>The model's tensors under our parameter names, read from whichever checkpoint holds each.</summary>
    /// <summary>The model's tensors with the language model's matrices quantized as they are read.</summary>
    private sealed class QuantizingTensors : ITensorReader
    {
        private readonly ITensorReader _inner;
        private readonly Dictionary<string, Modeling.QuantizationFormat> _formats = new(StringComparer.Ordinal);

        public QuantizingTensors(ITensorReader inner, Modeling.QuantizationFormat requested)
        {
            _inner = inner;
            foreach (var name in inner.Names)
            {
                var info = inner.GetInfo(name);
                if (!name.StartsWith("language_model.", StringComparison.Ordinal) || info.Shape.Length != 2 || !Modeling.QuantizedWeight.Fits(info.Shape[1]))
                    continue;
                // As a quantized load: the LM head keeps Q8_0.
                _formats[name] = name.EndsWith("lm_head.weight", StringComparison.Ordinal) ? Modeling.QuantizationFormat.Q8_0 : requested;
            }
            Metadata = new Dictionary<string, string>(SafeTensorsWriter.DefaultMetadata);
            foreach (var (name, f) in _formats) Metadata[SafeTensorsFile.QuantizationKeyPrefix + name] = Modeling.QuantizationFormats.Name(f);
        }

        public Dictionary<string, string> Metadata { get; }
        public string Source => _inner.Source;
        public IReadOnlyList<string> Names => _inner.Names;
        public bool Contains(string name) => _inner.Contains(name);

        public TensorInfo GetInfo(string name)
        {
            var info = _inner.GetInfo(name);
            if (!_formats.TryGetValue(name, out var f)) return info;
            return info with { DType = torch.ScalarType.Byte, Shape = new[] { info.Shape[0], Modeling.QuantizationFormats.RowBytes(f, info.Shape[1]) }, Format = null };
        }

        public torch.Tensor Load(string name, torch.ScalarType? dtype = null, torch.Device? device = null)
        {
            if (!_formats.TryGetValue(name, out var f)) return _inner.Load(name, dtype, device);
            // Blocks of another format (or a GGUF K-quant, held as Q8_0) are requantized from their exact values.
            using var stored = _inner.GetInfo(name).Format is { } held && held != f ? _inner.Load(name, torch.ScalarType.Float32) : _inner.Load(name);
            if (stored is Modeling.QuantizedWeight sq && sq.Format == f) return sq.alias();
            using var values = stored is Modeling.QuantizedWeight other ? other.Dequantize() : stored.alias();
            return Modeling.QuantizedWeight.Quantize(values, f);
        }

        public void Dispose() { }
    }

    private sealed class ModelTensors(Dictionary<string, (ITensorReader Reader, string Key)> sources) : ITensorReader
    {
        private readonly List<string> _names = sources.Keys.ToList();
        public string Source => string.Join(", ", sources.Values.Select(v => v.Reader.Source).Distinct());
        public IReadOnlyList<string> Names => _names;
        public bool Contains(string name) => sources.ContainsKey(name);
        public TensorInfo GetInfo(string name)
        {
            var (r, k) = Get(name);
            return r.GetInfo(k) with { Name = name };
        }
        public torch.Tensor Load(string name, torch.ScalarType? dtype = null, torch.Device? device = null)
        {
            var (r, k) = Get(name);
            return r.Load(k, dtype, device);
        }
        private (ITensorReader, string) Get(string name) =>
            sources.TryGetValue(name, out var v) ? v : throw new CheckpointFormatException($"No tensor '{name}'", Source, name);
        public void Dispose() { } // the readers belong to the caller
    }
}
