using ShareGPT4V.Configuration;
using ShareGPT4V.Preprocessing;
using ShareGPT4V.Tokenization;

namespace ShareGPT4V.Checkpoints.Gguf;

/// <summary>
/// A llama.cpp LLaVA model as users have it: the LLM GGUF (LLaMA architecture, tokenizer in the metadata) and the
/// <c>mmproj</c> GGUF (CLIP tower and projector). Builds our configuration, tokenizer and image preprocessing from
/// their metadata; every value is taken from the files (an absent key takes llama.cpp's default) and checked.
/// </summary>
internal static class GgufModel
{
    /// <summary>True when a model path names a GGUF file rather than a folder.</summary>
    public static bool IsGgufPath(string path) =>
        path.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase) || File.Exists(path) && !Directory.Exists(path);

    public static LlavaConfig ReadConfig(GgufFile llm, GgufFile mmproj)
    {
        var text = ReadLlama(llm);
        var (vision, featureLayer) = ReadClip(mmproj);
        var tokens = llm.Array<string>("tokenizer.ggml.tokens");
        int imageToken = tokens is null ? -1 : System.Array.IndexOf(tokens, LlavaTokenizer.ImageMarker);
        var cfg = new LlavaConfig
        {
            Vision = vision,
            Text = text,
            Layout = CheckpointLayout.Original,
            ModelType = "llava",
            ProjectorType = "mlp2x_gelu",
            VisionFeatureLayer = featureLayer,
            KeepClsToken = false, // llama.cpp's LLaVA always drops the class token; no key says otherwise
            // A vocabulary with <image> (converted from llava-hf) uses its id; otherwise LLaVA's placeholder.
            ImageTokenIndex = imageToken >= 0 ? imageToken : LlavaTokenizer.LlavaImageTokenIndex,
            ImageAspectRatio = "pad", // LLaVA-1.5's own preprocessing, and llama.cpp's for mlp projectors
        };
        cfg.Validate(llm.FilePath);
        return cfg;
    }

    internal static LlamaConfig ReadLlama(GgufFile f)
    {
        var arch = f.String("general.architecture") ?? throw new ModelConfigurationException("Required key is missing", f.FilePath, "general.architecture");
        if (arch != "llama")
            throw new ModelConfigurationException($"Architecture '{arch}' is not supported (supported: llama)", f.FilePath, "general.architecture");
        int Req(string key) => f.Int("llama." + key, 1, int.MaxValue) ?? throw new ModelConfigurationException("Required key is missing", f.FilePath, "llama." + key);
        int hidden = Req("embedding_length");
        int heads = Req("attention.head_count");
        int kv = f.Int("llama.attention.head_count_kv", 1, int.MaxValue) ?? heads;
        int headDim = f.Int("llama.attention.key_length", 1, int.MaxValue) ?? hidden / heads;
        if (f.Int("llama.attention.value_length", 1, int.MaxValue) is int vl && vl != headDim)
            throw new ModelConfigurationException($"value_length {vl} differs from key_length {headDim} (not supported)", f.FilePath, "llama.attention.value_length");
        if (f.Int("llama.rope.dimension_count", 1, int.MaxValue) is int rd && rd != headDim)
            throw new ModelConfigurationException($"Rotary dimension {rd} differs from the head size {headDim} (partial rotary is not supported)", f.FilePath, "llama.rope.dimension_count");
        if (!f.TryGetTensor("token_embd.weight", out var embd) || embd.Ne.Length != 2)
            throw new CheckpointFormatException("The LLM file has no 2-D token_embd.weight", f.FilePath, "token_embd.weight");
        long vocab = embd.Ne[1];
        if (f.Int("llama.vocab_size", 1, int.MaxValue) is int vs && vs != vocab)
            throw new ModelConfigurationException($"llama.vocab_size {vs} differs from token_embd.weight's {vocab} rows", f.FilePath, "llama.vocab_size");
        RopeScaling? scaling = null;
        var scalingType = f.String("llama.rope.scaling.type");
        if (scalingType is "linear")
            scaling = new RopeScaling { Type = "linear", Factor = f.Float("llama.rope.scaling.factor") ?? 1.0 };
        else if (scalingType is not (null or "none"))
            throw new ModelConfigurationException($"RoPE scaling '{scalingType}' is not supported (supported: none, linear)", f.FilePath, "llama.rope.scaling.type");
        if (f.Float("llama.rope.scale_linear") is double lin && lin != 1.0)
            scaling = new RopeScaling { Type = "linear", Factor = lin };
        var cfg = new LlamaConfig
        {
            VocabSize = (int)Math.Min(vocab, int.MaxValue),
            HiddenSize = hidden,
            IntermediateSize = Req("feed_forward_length"),
            NumHiddenLayers = Req("block_count"),
            NumAttentionHeads = heads,
            NumKeyValueHeads = kv,
            HeadDim = headDim,
            MaxPositionEmbeddings = f.Int("llama.context_length", 1, int.MaxValue) ?? 2048,
            RmsNormEps = f.Float("llama.attention.layer_norm_rms_epsilon") ?? 1e-5,
            RopeTheta = f.Float("llama.rope.freq_base") ?? 10000.0,
            RopeScaling = scaling,
            TieWordEmbeddings = !f.TryGetTensor("output.weight", out _),
            BosTokenId = f.Int("tokenizer.ggml.bos_token_id", 0, int.MaxValue) ?? 1,
            EosTokenId = f.Int("tokenizer.ggml.eos_token_id", 0, int.MaxValue) ?? 2,
            PadTokenId = f.Int("tokenizer.ggml.padding_token_id", 0, int.MaxValue),
        };
        cfg.Validate(f.FilePath, "llama.");
        return cfg;
    }

    internal static (ClipVisionConfig Vision, int FeatureLayer) ReadClip(GgufFile f)
    {
        var arch = f.String("general.architecture") ?? throw new ModelConfigurationException("Required key is missing", f.FilePath, "general.architecture");
        if (arch != "clip")
            throw new ModelConfigurationException($"The mmproj file's architecture is '{arch}', expected 'clip'", f.FilePath, "general.architecture");
        if (f.Bool("clip.has_vision_encoder") == false)
            throw new ModelConfigurationException("The mmproj file has no vision encoder", f.FilePath, "clip.has_vision_encoder");
        var projector = f.String("clip.projector_type") ?? (f.Bool("clip.has_llava_projector") == true ? "mlp" : null);
        if (projector != "mlp")
            throw new ModelConfigurationException($"Projector type '{projector ?? "(none)"}' is not supported (supported: mlp, LLaVA-1.5's)", f.FilePath, "clip.projector_type");
        int Req(string key) => f.Int("clip.vision." + key, 1, int.MaxValue) ?? throw new ModelConfigurationException("Required key is missing", f.FilePath, "clip.vision." + key);
        int layers = Req("block_count");
        var vision = new ClipVisionConfig
        {
            HiddenSize = Req("embedding_length"),
            IntermediateSize = Req("feed_forward_length"),
            NumHiddenLayers = layers,
            NumAttentionHeads = Req("attention.head_count"),
            ImageSize = Req("image_size"),
            PatchSize = Req("patch_size"),
            HiddenAct = f.Bool("clip.use_gelu") == true ? "gelu" : "quick_gelu",
            LayerNormEps = f.Float("clip.vision.attention.layer_norm_epsilon") ?? 1e-5,
        };
        vision.Validate(f.FilePath, "clip.vision.");
        // feature_layer holds hidden-state indices (0 = embeddings, k = output of layer k-1); without it, every stored
        // layer (the converter already dropped the ones LLaVA does not use).
        int feature = layers;
        if (f.Has("clip.vision.feature_layer"))
        {
            var list = f.Array<int>("clip.vision.feature_layer")?.Select(x => (long)x).ToArray()
                ?? throw new ModelConfigurationException("Expected an array of int32", f.FilePath, "clip.vision.feature_layer");
            if (list.Length != 1)
                throw new ModelConfigurationException($"{list.Length} feature layers are given; only one (LLaVA-1.5's) is supported", f.FilePath, "clip.vision.feature_layer");
            if (list[0] < 0 || list[0] > layers)
                throw new ModelConfigurationException($"Feature layer {list[0]} is outside the {layers + 1} hidden states of the stored tower", f.FilePath, "clip.vision.feature_layer");
            feature = (int)list[0];
        }
        return (vision, feature);
    }

    /// <summary>The image preprocessing of an mmproj file: its size, mean and std (the rest is CLIP's).</summary>
    public static PreprocessorConfig ReadPreprocessor(GgufFile f, ClipVisionConfig vision)
    {
        double[]? Triple(string key)
        {
            if (!f.Has(key)) return null;
            var a = f.Array<float>(key) ?? throw new ModelConfigurationException("Expected an array of float32", f.FilePath, key);
            if (a.Length != 3 || a.Any(x => !float.IsFinite(x)))
                throw new ModelConfigurationException($"Expected 3 finite values, found {a.Length}", f.FilePath, key);
            return a.Select(x => (double)x).ToArray();
        }
        var mean = Triple("clip.vision.image_mean");
        var std = Triple("clip.vision.image_std");
        if (std is not null && std.Any(x => x <= 0))
            throw new ModelConfigurationException("image_std values must be positive", f.FilePath, "clip.vision.image_std");
        return new PreprocessorConfig
        {
            ShortestEdge = vision.ImageSize, CropHeight = vision.ImageSize, CropWidth = vision.ImageSize,
            ImageMean = mean ?? PreprocessorConfig.OpenAIClipMean,
            ImageStd = std ?? PreprocessorConfig.OpenAIClipStd,
            SourcePath = f.FilePath,
        };
    }

    /// <summary>The tensors of the LLM file a load converts to Q8_0, by type (<c>"Q4_K 7, Q6_K 3"</c>), or null when none.</summary>
    public static string? ConvertedAtLoad(GgufFile f)
    {
        var counts = f.Tensors.Where(t => t.Type is GgmlType.Q4_K or GgmlType.Q6_K or GgmlType.Q5_0)
            .GroupBy(t => t.Type).OrderBy(g => g.Key).Select(g => $"{g.Key} {g.Count()}").ToList();
        return counts.Count == 0 ? null : string.Join(", ", counts);
    }

    /// <summary>The SentencePiece-style tokenizer the LLM file carries (<c>tokenizer.ggml.model</c> = <c>llama</c>).</summary>
    public static LlavaTokenizer ReadTokenizer(GgufFile f) => LlavaTokenizer.FromGguf(f);
}
