namespace ShareGPT4V.Configuration;

/// <summary>
/// Where everything of one model lives on disk, and its configuration: reads <c>config.json</c> of either layout,
/// finds the CLIP tower folder of an original-layout checkpoint, and names the preprocessor config.
/// </summary>
internal sealed record ModelFolder
{
    public required string ModelPath { get; init; }
    /// <summary>Folder of the CLIP tower weights: the model folder itself for llava-hf.</summary>
    public required string VisionTowerPath { get; init; }
    public required LlavaConfig Config { get; init; }
    /// <summary><c>preprocessor_config.json</c>, or null when none exists (CLIP defaults for the tower's size apply).</summary>
    public string? PreprocessorConfigPath { get; init; }
    /// <summary>
    /// For a llama.cpp model: the mmproj GGUF (CLIP tower and projector); <see cref="ModelPath"/> is then the LLM GGUF
    /// and <see cref="VisionTowerPath"/> this file. Null for checkpoint folders.
    /// </summary>
    public string? MmprojPath { get; init; }

    /// <summary>True for a llama.cpp model (LLM GGUF + mmproj GGUF).</summary>
    public bool IsGguf => MmprojPath is not null;

    /// <summary>
    /// A llama.cpp LLaVA model: the LLM GGUF and the mmproj GGUF. The configuration comes from their metadata; both
    /// headers are fully checked here.
    /// </summary>
    public static ModelFolder OpenGguf(string llmPath, string? mmprojPath)
    {
        var llm = Path.GetFullPath(llmPath);
        if (string.IsNullOrWhiteSpace(mmprojPath))
            throw new ModelConfigurationException("A GGUF model needs its mmproj file (the CLIP tower and projector): set MmprojPath / --mmproj", llm, "MmprojPath");
        var mmproj = Path.GetFullPath(mmprojPath);
        using var l = Checkpoints.Gguf.GgufFile.Open(llm);
        using var m = Checkpoints.Gguf.GgufFile.Open(mmproj);
        return new ModelFolder
        {
            ModelPath = llm,
            VisionTowerPath = mmproj,
            MmprojPath = mmproj,
            Config = Checkpoints.Gguf.GgufModel.ReadConfig(l, m),
        };
    }

    /// <summary>
    /// Reads a model folder. <paramref name="visionTowerOverride"/> replaces the tower named by <c>mm_vision_tower</c>
    /// (original layout only).
    /// </summary>
    public static ModelFolder Open(string modelPath, string? visionTowerOverride = null)
    {
        var dir = Path.GetFullPath(modelPath);
        if (!Directory.Exists(dir))
            throw new ModelConfigurationException("Model folder not found", dir);
        var configPath = Path.Combine(dir, "config.json");
        var r = JsonConfigReader.Load(configPath);
        var modelType = r.String("model_type")
            ?? throw new ModelConfigurationException("Required key is missing", configPath, "model_type");

        if (r.Has("text_config") || r.Has("vision_config") || (modelType == "llava" && !r.Has("mm_vision_tower") && !r.Has("mm_projector_type")))
            return OpenLlavaHf(dir, configPath, r, modelType);
        if (modelType is "llava" or "share4v" or "llava_llama" || r.Has("mm_vision_tower"))
            return OpenOriginal(dir, configPath, r, modelType, visionTowerOverride);
        throw new ModelConfigurationException($"model_type '{modelType}' is not a LLaVA / ShareGPT4V model (expected 'llava' or 'share4v')", configPath, "model_type");
    }

    private static ModelFolder OpenLlavaHf(string dir, string configPath, JsonConfigReader r, string modelType)
    {
        var cfg = ParseLlavaHf(r, modelType);
        var pre = Path.Combine(dir, "preprocessor_config.json");
        return new ModelFolder
        {
            ModelPath = dir,
            VisionTowerPath = dir,
            Config = cfg,
            PreprocessorConfigPath = File.Exists(pre) ? pre : null,
        };
    }

    /// <summary>Parses a llava-hf <c>config.json</c> (nested vision/text configs, transformers defaults for omitted keys).</summary>
    internal static LlavaConfig ParseLlavaHf(JsonConfigReader r, string modelType)
    {
        var configPath = r.FilePath;
        var vr = r.Object("vision_config");
        var vision = vr is null ? ClipVisionConfig.VitLarge336 : ClipVisionConfig.FromJson(vr, vr.String("model_type") is null or "clip_vision_model" ? null : null);
        var tr = r.Object("text_config");
        var text = tr is null ? new LlamaConfig() : LlamaConfig.FromJson(tr, r.Bool("tie_word_embeddings", false));
        if (tr?.String("model_type") is { } tm && tm != "llama")
            throw new ModelConfigurationException($"text_config.model_type '{tm}' is not supported (supported: llama)", configPath, "text_config.model_type");
        var strategy = r.String("vision_feature_select_strategy", "default")!;
        if (strategy is not ("default" or "full"))
            throw new ModelConfigurationException($"Unknown vision_feature_select_strategy '{strategy}' (expected 'default' or 'full')", configPath, "vision_feature_select_strategy");
        var act = r.String("projector_hidden_act", "gelu")!;
        if (act != "gelu")
            throw new ModelConfigurationException($"Unsupported projector_hidden_act '{act}' (supported: gelu)", configPath, "projector_hidden_act");
        var layerEl = r.Raw("vision_feature_layer");
        if (layerEl is { ValueKind: System.Text.Json.JsonValueKind.Array })
            throw new ModelConfigurationException("A list of vision feature layers is not supported", configPath, "vision_feature_layer");
        var cfg = new LlavaConfig
        {
            Vision = vision,
            Text = text with { PadTokenId = text.PadTokenId ?? r.Int("pad_token_id", (int?)null) },
            Layout = CheckpointLayout.LlavaHf,
            ModelType = modelType,
            ProjectorType = "mlp2x_gelu",
            VisionFeatureLayer = r.Int("vision_feature_layer", -2),
            KeepClsToken = strategy == "full",
            ImageTokenIndex = r.Int("image_token_index", r.Int("image_token_id", 32000)),
            // Not a transformers key: llava-hf processors always resize + crop. Folders converted from a "pad" model keep it here.
            ImageAspectRatio = r.String("image_aspect_ratio", "square")!,
            ConversationTemplate = r.String(LlavaConfig.ConversationTemplateKey),
        };
        cfg.Validate(configPath);
        return cfg;
    }

    private static ModelFolder OpenOriginal(string dir, string configPath, JsonConfigReader r, string modelType, string? towerOverride)
    {
        var towerName = r.String("mm_vision_tower") ?? r.String("vision_tower");
        var towerDir = ResolveTower(dir, configPath, towerName, towerOverride);
        var cfg = ParseOriginal(r, modelType, JsonConfigReader.Load(Path.Combine(towerDir, "config.json")));
        var pre = Path.Combine(towerDir, "preprocessor_config.json");
        return new ModelFolder
        {
            ModelPath = dir,
            VisionTowerPath = towerDir,
            Config = cfg,
            PreprocessorConfigPath = File.Exists(pre) ? pre : null,
        };
    }

    /// <summary>Parses an original LLaVA / ShareGPT4V <c>config.json</c> together with its CLIP tower's config.</summary>
    internal static LlavaConfig ParseOriginal(JsonConfigReader r, string modelType, JsonConfigReader towerConfig)
    {
        var configPath = r.FilePath;
        var towerDir = Path.GetDirectoryName(towerConfig.FilePath) ?? towerConfig.FilePath;
        var text = LlamaConfig.FromJson(r);
        if (r.Bool("mm_use_im_start_end", false))
            throw new ModelConfigurationException("mm_use_im_start_end = true (image start/end tokens) is not supported; LLaVA-1.5 and ShareGPT4V use false", configPath, "mm_use_im_start_end");
        var towerName = r.String("mm_vision_tower") ?? r.String("vision_tower");
        var vision = ReadTowerConfig(towerConfig);
        var select = r.String("mm_vision_select_feature", "patch")!;
        if (select is not ("patch" or "cls_patch"))
            throw new ModelConfigurationException($"Unknown mm_vision_select_feature '{select}' (expected 'patch' or 'cls_patch')", configPath, "mm_vision_select_feature");
        int mmHidden = r.Int("mm_hidden_size", vision.HiddenSize);
        if (mmHidden != vision.HiddenSize)
            throw new ModelConfigurationException($"mm_hidden_size {mmHidden} does not match the vision tower's hidden_size {vision.HiddenSize} ({towerDir})", configPath, "mm_hidden_size");
        var cfg = new LlavaConfig
        {
            Vision = vision,
            Text = text,
            Layout = CheckpointLayout.Original,
            ModelType = modelType,
            ProjectorType = r.String("mm_projector_type", "linear")!,
            VisionFeatureLayer = r.Int("mm_vision_select_layer", -1),
            KeepClsToken = select == "cls_patch",
            ImageTokenIndex = -200,
            ImageAspectRatio = r.String("image_aspect_ratio", "square")!,
            ConversationTemplate = r.String(LlavaConfig.ConversationTemplateKey),
            VisionTowerName = towerName,
        };
        cfg.Validate(configPath);
        return cfg;
    }

    private static string ResolveTower(string modelDir, string configPath, string? towerName, string? towerOverride)
    {
        if (towerOverride is not null)
        {
            var o = Path.GetFullPath(towerOverride);
            if (!Directory.Exists(o))
                throw new ModelConfigurationException($"Vision tower folder '{o}' given as the override does not exist", null, "VisionTowerPath");
            return o;
        }
        if (string.IsNullOrWhiteSpace(towerName))
            throw new ModelConfigurationException("The config names no vision tower (mm_vision_tower); set the vision tower path option (VisionTowerPath, CLI --vision-tower)", configPath, "mm_vision_tower");
        var candidates = new List<string>();
        if (Path.IsPathRooted(towerName))
            candidates.Add(towerName);
        else
        {
            var parent = Path.GetDirectoryName(modelDir) ?? modelDir;
            candidates.Add(Path.GetFullPath(Path.Combine(parent, towerName)));
            // A hub id "owner/name" downloaded next to the model usually lands in a folder called "name".
            var last = towerName.Replace('\\', '/').Split('/', StringSplitOptions.RemoveEmptyEntries).LastOrDefault();
            if (last is not null && last != towerName)
                candidates.Add(Path.GetFullPath(Path.Combine(parent, last)));
        }
        foreach (var c in candidates)
            if (Directory.Exists(c) && File.Exists(Path.Combine(c, "config.json")))
                return c;
        throw new ModelConfigurationException(
            $"Vision tower '{towerName}' named by mm_vision_tower was not found locally (looked in: {string.Join(", ", candidates)}). " +
            "Loading through MultimodalPipeline (or HuggingFaceHub.ResolveModelAsync) fetches a hub id from the hub; otherwise download the tower and set the vision tower path option (VisionTowerPath, CLI --vision-tower)",
            configPath, "mm_vision_tower");
    }

    /// <summary>Reads a tower's config: a <c>CLIPVisionModel</c> config, or a full <c>CLIPModel</c> one (its vision part).</summary>
    private static ClipVisionConfig ReadTowerConfig(JsonConfigReader r)
    {
        var path = r.FilePath;
        var type = r.String("model_type");
        if (type == "clip")
        {
            var v = r.Object("vision_config") ?? r.Object("vision_config_dict");
            return v is null ? new ClipVisionConfig() : ClipVisionConfig.FromJson(v);
        }
        if (type is null or "clip_vision_model")
            return ClipVisionConfig.FromJson(r);
        throw new ModelConfigurationException($"Vision tower model_type '{type}' is not CLIP (expected 'clip_vision_model' or 'clip')", path, "model_type");
    }
}
