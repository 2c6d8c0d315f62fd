namespace ShareGPT4V.Configuration;

/// <summary>RoPE scaling as real configs carry it (<c>rope_scaling</c>): <c>linear</c>, <c>dynamic</c> or <c>llama3</c>.</summary>
internal sealed record RopeScaling
{
    public required string Type { get; init; }
    public double Factor { get; init; } = 1.0;
    /// <summary>llama3 only.</summary>
    public double LowFreqFactor { get; init; } = 1.0;
    /// <summary>llama3 only.</summary>
    public double HighFreqFactor { get; init; } = 4.0;
    /// <summary>llama3 only.</summary>
    public int OriginalMaxPositionEmbeddings { get; init; } = 8192;
}

/// <summary>
/// The LLaMA language model's configuration. Defaults are those of transformers' <c>LlamaConfig</c>, applied to keys
/// a hub config omits (llava-hf's <c>text_config</c> lists only a few keys).
/// </summary>
internal sealed record LlamaConfig
{
    public int VocabSize { get; init; } = 32000;
    public int HiddenSize { get; init; } = 4096;
    public int IntermediateSize { get; init; } = 11008;
    public int NumHiddenLayers { get; init; } = 32;
    public int NumAttentionHeads { get; init; } = 32;
    /// <summary>Defaults to <see cref="NumAttentionHeads"/> (no grouped-query attention).</summary>
    public int NumKeyValueHeads { get; init; } = 32;
    public int HeadDim { get; init; } = 128;
    public string HiddenAct { get; init; } = "silu";
    public int MaxPositionEmbeddings { get; init; } = 2048;
    public double RmsNormEps { get; init; } = 1e-6;
    public double RopeTheta { get; init; } = 10000.0;
    public RopeScaling? RopeScaling { get; init; }
    public bool AttentionBias { get; init; }
    public bool MlpBias { get; init; }
    public bool TieWordEmbeddings { get; init; }
    public int BosTokenId { get; init; } = 1;
    public int EosTokenId { get; init; } = 2;
    public int? PadTokenId { get; init; }

    /// <summary>Reads a LLaMA config from a JSON object (a whole <c>config.json</c> or a llava-hf <c>text_config</c>).</summary>
    internal static LlamaConfig FromJson(JsonConfigReader r, bool? tieFallback = null)
    {
        int hidden = r.Int("hidden_size", 4096);
        int heads = r.Int("num_attention_heads", 32);
        var cfg = new LlamaConfig
        {
            VocabSize = r.Int("vocab_size", 32000),
            HiddenSize = hidden,
            IntermediateSize = r.Int("intermediate_size", 11008),
            NumHiddenLayers = r.Int("num_hidden_layers", 32),
            NumAttentionHeads = heads,
            NumKeyValueHeads = r.Int("num_key_value_heads", heads),
            HeadDim = r.Int("head_dim", heads > 0 ? hidden / heads : 0),
            HiddenAct = r.String("hidden_act", "silu")!,
            MaxPositionEmbeddings = r.Int("max_position_embeddings", 2048),
            RmsNormEps = r.Double("rms_norm_eps", 1e-6),
            RopeTheta = r.Double("rope_theta", 10000.0),
            RopeScaling = ReadRopeScaling(r),
            AttentionBias = r.Bool("attention_bias", false),
            MlpBias = r.Bool("mlp_bias", false),
            TieWordEmbeddings = r.Bool("tie_word_embeddings", tieFallback ?? false),
            BosTokenId = r.Int("bos_token_id", 1),
            EosTokenId = r.IntOrFirst("eos_token_id", 2) ?? 2,
            PadTokenId = r.Int("pad_token_id", (int?)null),
        };
        cfg.Validate(r.FilePath, r.KeyPrefix);
        return cfg;
    }

    private static RopeScaling? ReadRopeScaling(JsonConfigReader r)
    {
        var rs = r.Object("rope_scaling");
        if (rs is null) return null;
        var type = rs.String("rope_type") ?? rs.String("type")
            ?? throw new ModelConfigurationException("rope_scaling has neither 'rope_type' nor 'type'", r.FilePath, "rope_scaling");
        if (type == "default") return null;
        if (type is not ("linear" or "dynamic" or "llama3"))
            throw new ModelConfigurationException($"Unsupported rope_scaling type '{type}' (supported: linear, dynamic, llama3)", r.FilePath, "rope_scaling.type");
        var s = new RopeScaling
        {
            Type = type,
            Factor = rs.Double("factor", 1.0),
            LowFreqFactor = rs.Double("low_freq_factor", 1.0),
            HighFreqFactor = rs.Double("high_freq_factor", 4.0),
            OriginalMaxPositionEmbeddings = rs.Int("original_max_position_embeddings", 8192),
        };
        if (s.Factor < 1.0 && type != "linear" || s.Factor <= 0)
            throw new ModelConfigurationException($"rope_scaling factor {s.Factor} is out of range", r.FilePath, "rope_scaling.factor");
        return s;
    }

    /// <summary>Checks ranges before anything is allocated, so an absurd config cannot exhaust memory.</summary>
    /// <param name="file">The config file, for messages.</param>
    /// <param name="keyPrefix">Where this config sits in the file (e.g. <c>text_config.</c>), for messages.</param>
    public void Validate(string? file = null, string keyPrefix = "")
    {
        Check(VocabSize, 1, 1 << 21, keyPrefix + "vocab_size", file);
        Check(HiddenSize, 1, 1 << 16, keyPrefix + "hidden_size", file);
        Check(IntermediateSize, 1, 1 << 18, keyPrefix + "intermediate_size", file);
        Check(NumHiddenLayers, 1, 1024, keyPrefix + "num_hidden_layers", file);
        Check(NumAttentionHeads, 1, 1024, keyPrefix + "num_attention_heads", file);
        Check(NumKeyValueHeads, 1, NumAttentionHeads, keyPrefix + "num_key_value_heads", file);
        Check(HeadDim, 2, 1024, keyPrefix + "head_dim", file);
        Check(MaxPositionEmbeddings, 1, 1 << 24, keyPrefix + "max_position_embeddings", file);
        if (NumAttentionHeads % NumKeyValueHeads != 0)
            throw new ModelConfigurationException($"num_attention_heads ({NumAttentionHeads}) is not a multiple of num_key_value_heads ({NumKeyValueHeads})", file, keyPrefix + "num_key_value_heads");
        if (HeadDim % 2 != 0)
            throw new ModelConfigurationException($"head_dim ({HeadDim}) must be even for rotary embeddings", file, keyPrefix + "head_dim");
        if (HiddenAct != "silu")
            throw new ModelConfigurationException($"Unsupported hidden_act '{HiddenAct}' for LLaMA (supported: silu)", file, keyPrefix + "hidden_act");
        if (!(RmsNormEps > 0 && RmsNormEps < 1))
            throw new ModelConfigurationException($"rms_norm_eps {RmsNormEps} is out of range", file, keyPrefix + "rms_norm_eps");
        if (!(RopeTheta > 0))
            throw new ModelConfigurationException($"rope_theta {RopeTheta} must be positive", file, keyPrefix + "rope_theta");
    }

    internal static void Check(int value, int min, int max, string key, string? file)
    {
        if (value < min || value > max)
            throw new ModelConfigurationException($"Value {value} is out of the accepted range [{min}, {max}]", file, key);
    }
}
