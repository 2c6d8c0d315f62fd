namespace ShareGPT4V.Configuration;

/// <summary>How a checkpoint folder is organised.</summary>
public enum CheckpointLayout
{
    /// <summary>transformers' <c>LlavaForConditionalGeneration</c>: one folder, nested vision/text configs.</summary>
    LlavaHf,
    /// <summary>Original LLaVA-1.5 / ShareGPT4V: LLM + <c>mm_projector</c> in one folder, the CLIP tower in another.</summary>
    Original,
}

/// <summary>
/// The whole multimodal model's configuration: CLIP tower, projector, LLaMA, and how image features are selected and
/// merged. Built from either layout by <see cref="ModelFolder"/>.
/// </summary>
internal sealed record LlavaConfig
{
    public required ClipVisionConfig Vision { get; init; }
    public required LlamaConfig Text { get; init; }
    public required CheckpointLayout Layout { get; init; }
    /// <summary><c>model_type</c> as written (<c>llava</c> or <c>share4v</c>).</summary>
    public string ModelType { get; init; } = "llava";
    /// <summary><c>mlp2x_gelu</c> (LLaVA-1.5), any <c>mlpNx_gelu</c>, or <c>linear</c>.</summary>
    public string ProjectorType { get; init; } = "mlp2x_gelu";
    /// <summary>Index into the CLIP hidden states (-2 = output of the second-to-last layer).</summary>
    public int VisionFeatureLayer { get; init; } = -2;
    /// <summary>Drop the CLS token (<c>default</c> / <c>patch</c>) or keep it (<c>full</c> / <c>cls_patch</c>).</summary>
    public bool KeepClsToken { get; init; }
    /// <summary>The id that marks an image in the token ids: 32000 for llava-hf, -200 for original LLaVA.</summary>
    public int ImageTokenIndex { get; init; } = 32000;
    /// <summary><c>pad</c> (expand to square with the mean colour) or <c>square</c> / anything else (plain resize + crop).</summary>
    public string ImageAspectRatio { get; init; } = "square";
    /// <summary>The <c>mm_vision_tower</c> value of an original-layout config.</summary>
    public string? VisionTowerName { get; init; }
    /// <summary>
    /// <c>sharegpt4v_conv_mode</c>: the conversation template a converted or trained folder keeps from its source, so the
    /// same weights get the same prompts whatever layout or folder name they end up with (not a transformers or LLaVA
    /// key; both ignore it). Null when the config names none.
    /// </summary>
    public string? ConversationTemplate { get; init; }

    /// <summary>The config.json key of <see cref="ConversationTemplate"/>.</summary>
    public const string ConversationTemplateKey = "sharegpt4v_conv_mode";

    /// <summary>Number of language-model positions one image takes.</summary>
    public int ImageSeqLength => Vision.NumPatches + (KeepClsToken ? 1 : 0);

    /// <summary>Number of Linear layers of the projector (1 for <c>linear</c>, N for <c>mlpNx_gelu</c>).</summary>
    public int ProjectorDepth => ParseProjectorDepth(ProjectorType, null);

    internal static int ParseProjectorDepth(string type, string? file)
    {
        if (type == "linear") return 1;
        if (type.StartsWith("mlp", StringComparison.Ordinal) && type.EndsWith("x_gelu", StringComparison.Ordinal)
            && int.TryParse(type.AsSpan(3, type.Length - 3 - "x_gelu".Length), out var n) && n >= 1 && n <= 16)
            return n;
        throw new ModelConfigurationException($"Unsupported projector type '{type}' (supported: linear, mlpNx_gelu)", file, "mm_projector_type");
    }

    public void Validate(string? file = null)
    {
        bool hf = Layout == CheckpointLayout.LlavaHf;
        Vision.Validate(file, hf ? "vision_config." : "");
        Text.Validate(file, hf ? "text_config." : "");
        ParseProjectorDepth(ProjectorType, file);
        int nStates = Vision.NumHiddenLayers + 1;
        if (VisionFeatureLayer >= nStates || VisionFeatureLayer < -nStates)
            throw new ModelConfigurationException($"Vision feature layer {VisionFeatureLayer} is outside the {nStates} hidden states of a {Vision.NumHiddenLayers}-layer tower", file,
                Layout == CheckpointLayout.Original ? "mm_vision_select_layer" : "vision_feature_layer");
    }
}
