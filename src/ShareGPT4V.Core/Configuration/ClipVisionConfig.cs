namespace ShareGPT4V.Configuration;

/// <summary>
/// The CLIP vision tower's configuration. Defaults are those of transformers' <c>CLIPVisionConfig</c>
/// (ViT-B/32 at 224 px, <c>quick_gelu</c>), applied to keys a config omits.
/// </summary>
internal sealed record ClipVisionConfig
{
    public int HiddenSize { get; init; } = 768;
    public int IntermediateSize { get; init; } = 3072;
    public int NumHiddenLayers { get; init; } = 12;
    public int NumAttentionHeads { get; init; } = 12;
    public int NumChannels { get; init; } = 3;
    public int ImageSize { get; init; } = 224;
    public int PatchSize { get; init; } = 32;
    public string HiddenAct { get; init; } = "quick_gelu";
    public double LayerNormEps { get; init; } = 1e-5;

    public int NumPatches => (ImageSize / PatchSize) * (ImageSize / PatchSize);

    /// <summary>Most patches (vision tokens per image) a config may ask for.</summary>
    public const int MaxPatches = 16384;
    public int HeadDim => HiddenSize / NumAttentionHeads;

    /// <summary>The real CLIP ViT-L/14-336 tower of LLaVA-1.5 / ShareGPT4V (also what <c>LlavaConfig</c> assumes without a vision_config).</summary>
    public static ClipVisionConfig VitLarge336 { get; } = new()
    {
        HiddenSize = 1024, IntermediateSize = 4096, NumHiddenLayers = 24, NumAttentionHeads = 16,
        ImageSize = 336, PatchSize = 14,
    };

    internal static ClipVisionConfig FromJson(JsonConfigReader r, ClipVisionConfig? defaults = null)
    {
        var d = defaults ?? new ClipVisionConfig();
        var cfg = new ClipVisionConfig
        {
            HiddenSize = r.Int("hidden_size", d.HiddenSize),
            IntermediateSize = r.Int("intermediate_size", d.IntermediateSize),
            NumHiddenLayers = r.Int("num_hidden_layers", d.NumHiddenLayers),
            NumAttentionHeads = r.Int("num_attention_heads", d.NumAttentionHeads),
            NumChannels = r.Int("num_channels", d.NumChannels),
            ImageSize = r.Int("image_size", d.ImageSize),
            PatchSize = r.Int("patch_size", d.PatchSize),
            HiddenAct = r.String("hidden_act", d.HiddenAct)!,
            LayerNormEps = r.Double("layer_norm_eps", d.LayerNormEps),
        };
        cfg.Validate(r.FilePath, r.KeyPrefix);
        return cfg;
    }

    /// <param name="file">The config file, for messages.</param>
    /// <param name="keyPrefix">Where this config sits in the file (e.g. <c>vision_config.</c>), for messages.</param>
    public void Validate(string? file = null, string keyPrefix = "")
    {
        LlamaConfig.Check(HiddenSize, 1, 1 << 15, keyPrefix + "hidden_size", file);
        LlamaConfig.Check(IntermediateSize, 1, 1 << 17, keyPrefix + "intermediate_size", file);
        LlamaConfig.Check(NumHiddenLayers, 1, 256, keyPrefix + "num_hidden_layers", file);
        LlamaConfig.Check(NumAttentionHeads, 1, 256, keyPrefix + "num_attention_heads", file);
        LlamaConfig.Check(NumChannels, 1, 4, keyPrefix + "num_channels", file);
        // The image processor's sides are capped at the same 2048 (PreprocessorConfig.MaxSide): an image's pixels
        // are allocated at this size (CLIP towers use 224 to 448).
        LlamaConfig.Check(ImageSize, 1, Preprocessing.PreprocessorConfig.MaxSide, keyPrefix + "image_size", file);
        LlamaConfig.Check(PatchSize, 1, ImageSize, keyPrefix + "patch_size", file);
        // Every patch is a token of the tower's attention and of the language model's context: bound the grid
        // (ViT-L/14 at 336 px has 24 x 24 = 576) so a tiny patch on a big image cannot ask for millions of tokens.
        if (NumPatches > MaxPatches)
            throw new ModelConfigurationException(
                $"image_size {ImageSize} / patch_size {PatchSize} gives {NumPatches} patches, more than the {MaxPatches} accepted", file, keyPrefix + "patch_size");
        if (HiddenSize % NumAttentionHeads != 0)
            throw new ModelConfigurationException($"hidden_size ({HiddenSize}) is not a multiple of num_attention_heads ({NumAttentionHeads})", file, keyPrefix + "hidden_size");
        if (HiddenAct is not ("quick_gelu" or "gelu" or "gelu_new" or "gelu_pytorch_tanh"))
            throw new ModelConfigurationException($"Unsupported hidden_act '{HiddenAct}' for CLIP (supported: quick_gelu, gelu, gelu_new, gelu_pytorch_tanh)", file, keyPrefix + "hidden_act");
        if (!(LayerNormEps > 0 && LayerNormEps < 1))
            throw new ModelConfigurationException($"layer_norm_eps {LayerNormEps} is out of range", file, keyPrefix + "layer_norm_eps");
    }
}
