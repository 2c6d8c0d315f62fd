using ShareGPT4V.Configuration;
using ShareGPT4V.Modeling;
using ShareGPT4V.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.Checkpoints.Gguf;

/// <summary>The element type of an exported GGUF's matrices (norms and biases stay F32, as llama.cpp's converter writes them).</summary>
public enum GgufTensorType
{
    /// <summary>F32.</summary>
    F32,
    /// <summary>F16.</summary>
    F16,
    /// <summary>Q8_0 blocks (the LLM only; the mmproj then uses F16).</summary>
    Q8_0,
    /// <summary>Q4_0 blocks, the LM head Q8_0 (the LLM only; the mmproj then uses F16).</summary>
    Q4_0,
}

/// <summary>What a GGUF export wrote.</summary>
/// <param name="LlmPath">The LLM GGUF.</param>
/// <param name="MmprojPath">The mmproj GGUF (CLIP tower and projector).</param>
public sealed record GgufExportResult(string LlmPath, string MmprojPath);

/// <summary>
/// Writes a model of either layout as llama.cpp's LLaVA pair: an LLM GGUF (LLaMA architecture, the tokenizer in its
/// metadata, q/k rows in llama.cpp's rotary order) and an mmproj GGUF (the CLIP layers up to the feature layer and the
/// <c>mlp</c> projector), with the tensor names and metadata keys llama.cpp's converters write.
/// </summary>
public static class GgufExporter
{
    /// <summary>Writes <c>llm-TYPE.gguf</c> (the LLM) and <c>mmproj-f32.gguf</c> or <c>mmproj-f16.gguf</c> into <paramref name="outDir"/>.</summary>
    /// <param name="modelPath">A model folder of either layout.</param>
    /// <param name="outDir">The folder to write into (created when missing).</param>
    /// <param name="type">The LLM's tensor type; the mmproj is F32 with F32, else F16.</param>
    /// <param name="visionTowerPath">The CLIP tower folder, when <c>mm_vision_tower</c> cannot be found from the model.</param>
    public static GgufExportResult Export(string modelPath, string outDir, GgufTensorType type = GgufTensorType.F32, string? visionTowerPath = null)
    {
        var folder = ModelFolder.Open(modelPath, visionTowerPath);
        var cfg = folder.Config;
        if (cfg.KeepClsToken)
            throw new ModelConfigurationException("A model that keeps CLIP's class token (select strategy 'full') cannot be written as an mmproj GGUF: llama.cpp always drops it", null, "vision_feature_select_strategy");
        if (cfg.ProjectorDepth != 2)
            throw new ModelConfigurationException($"Projector '{cfg.ProjectorType}' cannot be written as llama.cpp's 'mlp' projector (mlp2x_gelu only)", null, "mm_projector_type");
        var tokenizer = LlavaTokenizer.Load(folder.ModelPath);
        Directory.CreateDirectory(outDir);
        string name = type.ToString().ToLowerInvariant();
        var result = new GgufExportResult(Path.GetFullPath(Path.Combine(outDir, $"llm-{name}.gguf")), Path.GetFullPath(Path.Combine(outDir, $"mmproj-{(type == GgufTensorType.F32 ? "f32" : "f16")}.gguf")));
        var readers = ModelLoader.OpenReaders(folder);
        try
        {
            var (sources, _) = ModelLoader.MatchCheckpoint(cfg, readers, ScalarType.Float32);
            Tensor Read(string our) { var (r, k) = sources[our]; return r.Load(k, ScalarType.Float32); }
            WriteLlm(cfg, tokenizer, Read, type, result.LlmPath);
            WriteMmproj(cfg, folder, Read, type == GgufTensorType.F32 ? GgufTensorType.F32 : GgufTensorType.F16, result.MmprojPath);
        }
        finally
        {
            foreach (var (r, _) in readers) r.Dispose();
        }
        return result;
    }

    private static uint FileType(GgufTensorType t) => t switch { GgufTensorType.F32 => 0, GgufTensorType.F16 => 1, GgufTensorType.Q8_0 => 7, _ => 2 };

    private static void WriteLlm(LlavaConfig cfg, LlavaTokenizer tok, Func<string, Tensor> read, GgufTensorType type, string path)
    {
        var t = cfg.Text;
        var w = new GgufWriter();
        w.Add("general.architecture", "llama");
        w.Add("general.type", "model");
        w.Add("llama.block_count", (uint)t.NumHiddenLayers);
        w.Add("llama.context_length", (uint)t.MaxPositionEmbeddings);
        w.Add("llama.embedding_length", (uint)t.HiddenSize);
        w.Add("llama.feed_forward_length", (uint)t.IntermediateSize);
        w.Add("llama.attention.head_count", (uint)t.NumAttentionHeads);
        w.Add("llama.attention.head_count_kv", (uint)t.NumKeyValueHeads);
        w.Add("llama.rope.freq_base", (float)t.RopeTheta);
        w.Add("llama.attention.layer_norm_rms_epsilon", (float)t.RmsNormEps);
        w.Add("llama.attention.key_length", (uint)t.HeadDim);
        w.Add("llama.attention.value_length", (uint)t.HeadDim);
        w.Add("general.file_type", FileType(type));
        w.Add("llama.vocab_size", (uint)t.VocabSize);
        w.Add("llama.rope.dimension_count", (uint)t.HeadDim);
        if (t.RopeScaling is { } rs)
        {
            if (rs.Type != "linear")
                throw new ModelConfigurationException($"rope_scaling '{rs.Type}' is not written to GGUF here (linear only)", null, "rope_scaling");
            w.Add("llama.rope.scaling.type", "linear");
            w.Add("llama.rope.scaling.factor", (float)rs.Factor);
        }
        w.Add("general.quantization_version", 2u);
        AddTokenizer(w, tok, t.VocabSize);

        const string p = "language_model.";
        void Matrix(string gguf, string our, GgufTensorType ty, int permuteHeads = 0)
        {
            var shape = new[] { 0L, 0L };
            using (var probe = read(our)) shape = probe.shape;
            var ggml = ty switch
            {
                GgufTensorType.F16 => GgmlType.F16,
                GgufTensorType.Q8_0 when QuantizedWeight.Fits(shape[1]) => GgmlType.Q8_0,
                GgufTensorType.Q4_0 when QuantizedWeight.Fits(shape[1]) => GgmlType.Q4_0,
                GgufTensorType.Q8_0 or GgufTensorType.Q4_0 => GgmlType.F16, // rows of part blocks: llama.cpp keeps F16
                _ => GgmlType.F32,
            };
            w.AddTensor(gguf, ggml, shape, () =>
            {
                using var scope = NewDisposeScope();
                var x = read(our);
                if (permuteHeads > 0) x = PermuteRows(x, permuteHeads);
                return ggml switch
                {
                    GgmlType.F16 => GgufWriter.Bytes(x.to(ScalarType.Float16)),
                    GgmlType.Q8_0 => GgufWriter.Bytes(QuantizedWeight.Quantize(x, QuantizationFormat.Q8_0)),
                    GgmlType.Q4_0 => GgufWriter.Bytes(QuantizedWeight.Quantize(x, QuantizationFormat.Q4_0)),
                    _ => GgufWriter.Bytes(x),
                };
            });
        }
        void Vector(string gguf, string our)
        {
            long[] shape;
            using (var probe = read(our)) shape = probe.shape;
            w.AddTensor(gguf, GgmlType.F32, shape, () => { using var x = read(our); return GgufWriter.Bytes(x); });
        }
        // llama.cpp's Q4_0 recipe keeps the output projection at higher precision.
        if (!t.TieWordEmbeddings) Matrix("output.weight", p + "lm_head.weight", type == GgufTensorType.Q4_0 ? GgufTensorType.Q8_0 : type);
        Matrix("token_embd.weight", p + "model.embed_tokens.weight", type);
        Vector("output_norm.weight", p + "model.norm.weight");
        for (int i = 0; i < t.NumHiddenLayers; i++)
        {
            string l = $"{p}model.layers.{i}.", b = $"blk.{i}.";
            Vector(b + "attn_norm.weight", l + "input_layernorm.weight");
            Vector(b + "ffn_norm.weight", l + "post_attention_layernorm.weight");
            Matrix(b + "attn_q.weight", l + "self_attn.q_proj.weight", type, t.NumAttentionHeads);
            Matrix(b + "attn_k.weight", l + "self_attn.k_proj.weight", type, t.NumKeyValueHeads);
            Matrix(b + "attn_v.weight", l + "self_attn.v_proj.weight", type);
            Matrix(b + "attn_output.weight", l + "self_attn.o_proj.weight", type);
            Matrix(b + "ffn_gate.weight", l + "mlp.gate_proj.weight", type);
            Matrix(b + "ffn_up.weight", l + "mlp.up_proj.weight", type);
            Matrix(b + "ffn_down.weight", l + "mlp.down_proj.weight", type);
            if (t.AttentionBias || t.MlpBias)
                throw new ModelConfigurationException("LLaMA layers with biases are not written to GGUF here", null, "attention_bias");
        }
        w.Write(path);
    }

    /// <summary>transformers' q/k rows → llama.cpp's order: within each head, row i·d/2 + j becomes row 2j + i.</summary>
    internal static Tensor PermuteRows(Tensor w, int heads)
    {
        long rows = w.shape[0], d = rows / heads;
        var rest = w.shape[1..];
        return w.reshape(new long[] { heads, 2, d / 2 }.Concat(rest).ToArray()).transpose(1, 2).contiguous()
            .reshape(new[] { rows }.Concat(rest).ToArray());
    }

    /// <summary>llama.cpp's SentencePiece vocabulary: pieces, scores and types, special tokens as controls, padded to the embedding rows.</summary>
    private static void AddTokenizer(GgufWriter w, LlavaTokenizer tok, int vocabSize)
    {
        var vocab = tok.Vocabulary;
        var tokens = new string[vocabSize];
        var scores = new float[vocabSize];
        var types = new int[vocabSize];
        for (int id = 0; id < vocabSize; id++)
        {
            var piece = tok.IdToToken(id);
            if (piece is null)
            {
                tokens[id] = $"[PAD{id}]";
                scores[id] = -10000f;
                types[id] = (int)PieceKind.Unused;
            }
            else if (tok.IsSpecial(id))
            {
                tokens[id] = piece;
                scores[id] = -1000f;
                types[id] = (int)PieceKind.Control;
            }
            else if (id < vocab.Count)
            {
                tokens[id] = piece;
                scores[id] = vocab.Scores[id];
                types[id] = (int)vocab.Kinds[id];
            }
            else
            {
                tokens[id] = piece;
                scores[id] = -1000f;
                types[id] = (int)PieceKind.UserDefined;
            }
        }
        w.Add("tokenizer.ggml.model", "llama");
        w.Add("tokenizer.ggml.pre", "default");
        w.Add("tokenizer.ggml.tokens", tokens);
        w.Add("tokenizer.ggml.scores", scores);
        w.Add("tokenizer.ggml.token_type", types);
        w.Add("tokenizer.ggml.bos_token_id", (uint)tok.BosId);
        w.Add("tokenizer.ggml.eos_token_id", (uint)tok.EosId);
        w.Add("tokenizer.ggml.unknown_token_id", (uint)tok.UnkId);
        if (tok.PadId is int pad) w.Add("tokenizer.ggml.padding_token_id", (uint)pad);
        w.Add("tokenizer.ggml.add_bos_token", tok.AddBosToken);
        w.Add("tokenizer.ggml.add_sep_token", false);
        w.Add("tokenizer.ggml.add_eos_token", false);
    }

    private static void WriteMmproj(LlavaConfig cfg, ModelFolder folder, Func<string, Tensor> read, GgufTensorType type, string path)
    {
        var v = cfg.Vision;
        int states = v.NumHiddenLayers + 1;
        int feature = cfg.VisionFeatureLayer < 0 ? states + cfg.VisionFeatureLayer : cfg.VisionFeatureLayer;
        var pre = folder.PreprocessorConfigPath is { } pp ? Preprocessing.PreprocessorConfig.Load(pp) : new Preprocessing.PreprocessorConfig();
        var w = new GgufWriter();
        w.Add("general.architecture", "clip");
        w.Add("clip.has_text_encoder", false);
        w.Add("clip.has_vision_encoder", true);
        w.Add("clip.has_llava_projector", true);
        w.Add("general.file_type", FileType(type));
        w.Add("clip.projector_type", "mlp");
        w.Add("clip.vision.image_size", (uint)v.ImageSize);
        w.Add("clip.vision.patch_size", (uint)v.PatchSize);
        w.Add("clip.vision.embedding_length", (uint)v.HiddenSize);
        w.Add("clip.vision.feed_forward_length", (uint)v.IntermediateSize);
        w.Add("clip.vision.projection_dim", (uint)cfg.Text.HiddenSize);
        w.Add("clip.vision.attention.head_count", (uint)v.NumAttentionHeads);
        w.Add("clip.vision.attention.layer_norm_epsilon", (float)v.LayerNormEps);
        w.Add("clip.vision.block_count", (uint)feature);
        w.Add("clip.vision.feature_layer", new[] { feature });
        w.Add("clip.vision.image_mean", pre.ImageMean.Select(x => (float)x).ToArray());
        w.Add("clip.vision.image_std", pre.ImageStd.Select(x => (float)x).ToArray());
        w.Add("clip.use_gelu", v.HiddenAct != "quick_gelu");

        const string vp = "vision_tower.vision_model.";
        void Add(string gguf, string our, bool matrix)
        {
            long[] shape;
            using (var probe = read(our)) shape = probe.shape;
            // As llama.cpp's converter: the patch kernel and the projector matrices are always F16, other matrices per the type.
            bool half = matrix && (type == GgufTensorType.F16 || gguf is "v.patch_embd.weight" or "mm.0.weight" or "mm.2.weight");
            w.AddTensor(gguf, half ? GgmlType.F16 : GgmlType.F32, shape, () =>
            {
                using var x = read(our);
                if (!half) return GgufWriter.Bytes(x);
                using var h = x.to(ScalarType.Float16);
                return GgufWriter.Bytes(h);
            });
        }
        Add("v.class_embd", vp + "embeddings.class_embedding", false);
        Add("v.patch_embd.weight", vp + "embeddings.patch_embedding.weight", true);
        Add("v.position_embd.weight", vp + "embeddings.position_embedding.weight", true);
        Add("v.pre_ln.weight", vp + "pre_layrnorm.weight", false);
        Add("v.pre_ln.bias", vp + "pre_layrnorm.bias", false);
        for (int i = 0; i < feature; i++)
        {
            string l = $"{vp}encoder.layers.{i}.", b = $"v.blk.{i}.";
            // The legacy converter's names, fc1 as ffn_down (llama.cpp and our reader tell the two apart by shape).
            foreach (var (g, o) in new[] { ("attn_q", "self_attn.q_proj"), ("attn_k", "self_attn.k_proj"), ("attn_v", "self_attn.v_proj"), ("attn_out", "self_attn.out_proj"),
                         ("ffn_down", "mlp.fc1"), ("ffn_up", "mlp.fc2") })
            {
                Add(b + g + ".weight", l + o + ".weight", true);
                Add(b + g + ".bias", l + o + ".bias", false);
            }
            foreach (var (g, o) in new[] { ("ln1", "layer_norm1"), ("ln2", "layer_norm2") })
            {
                Add(b + g + ".weight", l + o + ".weight", false);
                Add(b + g + ".bias", l + o + ".bias", false);
            }
        }
        Add("mm.0.weight", "multi_modal_projector.linear_1.weight", true);
        Add("mm.0.bias", "multi_modal_projector.linear_1.bias", false);
        Add("mm.2.weight", "multi_modal_projector.linear_2.weight", true);
        Add("mm.2.bias", "multi_modal_projector.linear_2.bias", false);
        w.Write(path);
    }
}
