using System.Text.Json.Nodes;

namespace ShareGPT4V.Configuration;

/// <summary>
/// Writes the typed configs back as <c>config.json</c> objects in either layout, with every key our reader (and
/// transformers) needs, so a folder written by the library loads to the same configuration.
/// </summary>
internal static class ConfigJson
{
    /// <summary>A LLaMA config (a whole original-layout config's LLaMA keys, or a llava-hf <c>text_config</c>).</summary>
    public static JsonObject Llama(LlamaConfig t)
    {
        var o = new JsonObject
        {
            ["vocab_size"] = t.VocabSize,
            ["hidden_size"] = t.HiddenSize,
            ["intermediate_size"] = t.IntermediateSize,
            ["num_hidden_layers"] = t.NumHiddenLayers,
            ["num_attention_heads"] = t.NumAttentionHeads,
            ["num_key_value_heads"] = t.NumKeyValueHeads,
            ["head_dim"] = t.HeadDim,
            ["hidden_act"] = t.HiddenAct,
            ["max_position_embeddings"] = t.MaxPositionEmbeddings,
            ["rms_norm_eps"] = t.RmsNormEps,
            ["rope_theta"] = t.RopeTheta,
            ["rope_scaling"] = t.RopeScaling is { } rs ? Rope(rs) : null,
            ["attention_bias"] = t.AttentionBias,
            ["mlp_bias"] = t.MlpBias,
            ["tie_word_embeddings"] = t.TieWordEmbeddings,
            ["bos_token_id"] = t.BosTokenId,
            ["eos_token_id"] = t.EosTokenId,
        };
        if (t.PadTokenId is int pad) o["pad_token_id"] = pad;
        return o;
    }

    private static JsonObject Rope(RopeScaling s)
    {
        var o = new JsonObject { ["rope_type"] = s.Type, ["factor"] = s.Factor };
        if (s.Type == "llama3")
        {
            o["low_freq_factor"] = s.LowFreqFactor;
            o["high_freq_factor"] = s.HighFreqFactor;
            o["original_max_position_embeddings"] = s.OriginalMaxPositionEmbeddings;
        }
        return o;
    }

    /// <summary>A <c>CLIPVisionModel</c> config.</summary>
    public static JsonObject ClipVision(ClipVisionConfig v) => new()
    {
        ["architectures"] = new JsonArray("CLIPVisionModel"),
        ["model_type"] = "clip_vision_model",
        ["hidden_size"] = v.HiddenSize,
        ["intermediate_size"] = v.IntermediateSize,
        ["num_hidden_layers"] = v.NumHiddenLayers,
        ["num_attention_heads"] = v.NumAttentionHeads,
        ["num_channels"] = v.NumChannels,
        ["image_size"] = v.ImageSize,
        ["patch_size"] = v.PatchSize,
        ["hidden_act"] = v.HiddenAct,
        ["layer_norm_eps"] = v.LayerNormEps,
    };

    /// <summary>A llava-hf <c>LlavaForConditionalGeneration</c> config with <paramref name="imageTokenIndex"/> as the image token.</summary>
    public static JsonObject LlavaHf(LlavaConfig c, int imageTokenIndex)
    {
        if (c.ProjectorDepth != 2)
            throw new ModelConfigurationException($"llava-hf has a 2-layer projector; this model's '{c.ProjectorType}' cannot be written in that layout (keep the original layout)", null, "mm_projector_type");
        var text = Llama(c.Text);
        text["model_type"] = "llama";
        var vision = ClipVision(c.Vision);
        vision.Remove("architectures");
        var o = new JsonObject
        {
            ["architectures"] = new JsonArray("LlavaForConditionalGeneration"),
            ["model_type"] = "llava",
            ["image_token_index"] = imageTokenIndex,
            ["projector_hidden_act"] = "gelu",
            ["vision_feature_layer"] = c.VisionFeatureLayer,
            ["vision_feature_select_strategy"] = c.KeepClsToken ? "full" : "default",
            ["tie_word_embeddings"] = c.Text.TieWordEmbeddings,
            ["image_aspect_ratio"] = c.ImageAspectRatio,
            ["text_config"] = text,
            ["vision_config"] = vision,
        };
        if (c.Text.PadTokenId is int pad) o["pad_token_id"] = pad;
        if (c.ConversationTemplate is { } t) o[LlavaConfig.ConversationTemplateKey] = t;
        return o;
    }

    /// <summary>The LLM folder's config of the original LLaVA-1.5 layout (LLaMA keys plus the <c>mm_*</c> keys).</summary>
    public static JsonObject OriginalLanguageModel(LlavaConfig c)
    {
        var o = Llama(c.Text);
        o["architectures"] = new JsonArray("LlavaLlamaForCausalLM");
        o["model_type"] = "llava";
        o["mm_projector_type"] = c.ProjectorType;
        o["mm_hidden_size"] = c.Vision.HiddenSize;
        o["mm_vision_select_layer"] = c.VisionFeatureLayer;
        o["mm_vision_select_feature"] = c.KeepClsToken ? "cls_patch" : "patch";
        o["mm_use_im_start_end"] = false;
        o["mm_use_im_patch_token"] = false;
        o["image_aspect_ratio"] = c.ImageAspectRatio;
        if (c.ConversationTemplate is { } t) o[LlavaConfig.ConversationTemplateKey] = t;
        return o;
    }
}
