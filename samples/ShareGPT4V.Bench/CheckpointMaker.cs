using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using ShareGPT4V.Checkpoints;
using ShareGPT4V.Configuration;
using ShareGPT4V.Modeling;
using TorchSharp;

namespace ShareGPT4V.Bench;

/// <summary>
/// The dimensions of a benchmark checkpoint. <see cref="Default"/> is the model: the real CLIP ViT-L/14-336
/// tower and a ~1.1B LLaMA (TinyLlama-sized: hidden 2048, 22 layers, 32 heads, 4 KV heads, MLP 5632, vocab 32064).
/// </summary>
internal sealed record BenchModelSpec
{
    public required ClipVisionConfig Vision { get; init; }
    public required LlamaConfig Text { get; init; }

    public static BenchModelSpec Default { get; } = new()
    {
        Vision = ClipVisionConfig.VitLarge336,
        Text = new LlamaConfig
        {
            VocabSize = 32064, HiddenSize = 2048, IntermediateSize = 5632, NumHiddenLayers = 22,
            NumAttentionHeads = 32, NumKeyValueHeads = 4, HeadDim = 64, MaxPositionEmbeddings = 2048,
            RmsNormEps = 1e-5, PadTokenId = 32001,
        },
    };

    /// <summary>ShareGPT4V-7B's dimensions (Vicuna-7B v1.5: hidden 4096, 32 layers, 32 heads without grouped KV, MLP
    /// 11008, 4096 positions) in the llava-hf layout, whose vocabulary is 32064 as llava-1.5-7b-hf's, with the same CLIP
    /// ViT-L/14-336 tower.</summary>
    public static BenchModelSpec SevenB { get; } = Default with
    {
        Text = Default.Text with
        {
            HiddenSize = 4096, IntermediateSize = 11008, NumHiddenLayers = 32, NumKeyValueHeads = 32, HeadDim = 128,
            MaxPositionEmbeddings = 4096,
        },
    };

    /// <summary>The spec of a <c>--preset</c> name: <c>bench</c> (the default) or <c>7b</c>.</summary>
    public static BenchModelSpec Preset(string name) => name switch
    {
        "bench" => Default,
        "7b" => SevenB,
        _ => throw new ArgumentException($"unknown preset '{name}'"),
    };

    public BenchModelSpec WithLlmLayers(int layers) => this with { Text = Text with { NumHiddenLayers = layers } };
}

/// <summary>
/// Writes a llava-hf checkpoint folder with seeded random weights: config files, the LLaMA-2 tokenizer and sharded
/// safetensors with <c>model.safetensors.index.json</c>. The same spec, seed and dtype always give the same bytes.
/// The tensor list comes from building the model on the meta device, so the result loads with <see cref="ModelLoader"/>.
/// </summary>
internal static class CheckpointMaker
{
    /// <summary>Shard limit: transformers' default max_shard_size is below this, and 2 GB keeps files portable.</summary>
    public const long DefaultMaxShardBytes = 2_000_000_000;

    public static SafeTensorsWriteResult Make(string outDir, BenchModelSpec spec, ulong seed, torch.ScalarType dtype,
        bool overwrite = false, long maxShardBytes = DefaultMaxShardBytes, IProgress<CheckpointWriteProgress>? progress = null)
    {
        var dir = Path.GetFullPath(outDir);
        if (Directory.Exists(dir) && Directory.EnumerateFileSystemEntries(dir).Any())
        {
            if (!overwrite)
                throw new ModelConfigurationException("The output folder is not empty (pass --overwrite to replace its checkpoint)", dir, "--out");
            foreach (var f in Directory.EnumerateFiles(dir, "*.safetensors").Concat(Directory.EnumerateFiles(dir, "*.json")))
                File.Delete(f);
        }
        Directory.CreateDirectory(dir);
        WriteConfigFiles(dir, spec, dtype);

        // The names and shapes the model asks for, in construction order (vision tower, projector, LLaMA layer by layer).
        var folder = ModelFolder.Open(dir);
        var meta = new MetaWeightSource(dtype);
        using (new LlavaModel(folder.Config, meta)) { }
        using var source = new RandomTensorReader(meta.Requested, seed, dtype);
        return SafeTensorsWriter.WriteSharded(dir, source, maxShardBytes, progress: progress);
    }

    private static void WriteConfigFiles(string dir, BenchModelSpec spec, torch.ScalarType dtype)
    {
        var v = spec.Vision;
        var t = spec.Text;
        string dtypeName = dtype switch
        {
            torch.ScalarType.BFloat16 => "bfloat16",
            torch.ScalarType.Float16 => "float16",
            _ => "float32",
        };
        var config = ConfigJson.LlavaHf(new LlavaConfig { Vision = v, Text = t, Layout = CheckpointLayout.LlavaHf }, imageTokenIndex: 32000);
        config["torch_dtype"] = dtypeName;
        config["text_config"]!["torch_dtype"] = dtypeName;
        WriteJson(dir, "config.json", config);
        WriteJson(dir, "generation_config.json", new JsonObject { ["bos_token_id"] = 1, ["eos_token_id"] = 2, ["pad_token_id"] = 32001 });
        WriteJson(dir, "preprocessor_config.json", new JsonObject
        {
            ["crop_size"] = new JsonObject { ["height"] = v.ImageSize, ["width"] = v.ImageSize },
            ["do_center_crop"] = true,
            ["do_convert_rgb"] = true,
            ["do_normalize"] = true,
            ["do_rescale"] = true,
            ["do_resize"] = true,
            ["image_mean"] = new JsonArray(0.48145466, 0.4578275, 0.40821073),
            ["image_processor_type"] = "CLIPImageProcessor",
            ["image_std"] = new JsonArray(0.26862954, 0.26130258, 0.27577711),
            ["processor_class"] = "LlavaProcessor",
            ["resample"] = 3,
            ["rescale_factor"] = 1.0 / 255,
            ["size"] = new JsonObject { ["shortest_edge"] = v.ImageSize },
        });
        WriteJson(dir, "processor_config.json", new JsonObject
        {
            ["image_token"] = "<image>",
            ["num_additional_image_tokens"] = 1,
            ["patch_size"] = v.PatchSize,
            ["processor_class"] = "LlavaProcessor",
            ["vision_feature_select_strategy"] = "default",
        });

        JsonObject Added(string content) => new()
        {
            ["content"] = content, ["lstrip"] = false, ["normalized"] = false, ["rstrip"] = false,
            ["single_word"] = false, ["special"] = true,
        };
        WriteJson(dir, "tokenizer_config.json", new JsonObject
        {
            ["add_bos_token"] = true,
            ["add_eos_token"] = false,
            ["added_tokens_decoder"] = new JsonObject
            {
                ["0"] = Added("<unk>"), ["1"] = Added("<s>"), ["2"] = Added("</s>"),
                ["32000"] = Added("<image>"), ["32001"] = Added("<pad>"),
            },
            ["bos_token"] = "<s>",
            ["clean_up_tokenization_spaces"] = false,
            ["eos_token"] = "</s>",
            ["legacy"] = false,
            ["model_max_length"] = t.MaxPositionEmbeddings,
            ["pad_token"] = "<pad>",
            ["padding_side"] = "left",
            ["processor_class"] = "LlavaProcessor",
            ["tokenizer_class"] = "LlamaTokenizer",
            ["unk_token"] = "<unk>",
        });
        WriteJson(dir, "special_tokens_map.json", new JsonObject
        {
            ["bos_token"] = "<s>", ["eos_token"] = "</s>", ["unk_token"] = "<unk>", ["pad_token"] = "<pad>",
        });
        WriteJson(dir, "added_tokens.json", new JsonObject { ["<image>"] = 32000, ["<pad>"] = 32001 });

        using var res = typeof(CheckpointMaker).Assembly.GetManifestResourceStream("llama2-tokenizer.model")
            ?? throw new InvalidOperationException("The embedded tokenizer.model resource is missing from the bench assembly");
        using var file = File.Create(Path.Combine(dir, "tokenizer.model"));
        res.CopyTo(file);
    }

    private static void WriteJson(string dir, string name, JsonNode node) =>
        File.WriteAllText(Path.Combine(dir, name), node.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n", new UTF8Encoding(false));
}

/// <summary>
/// Tensors made on demand from a seed: each tensor's values depend only on the seed, its name and the element index
/// (blocks of 64 Ki elements get their own generator), so the output is the same for any thread count.
/// Weights of norms are ones; everything else is uniform with standard deviation 0.02 (transformers' initializer_range),
/// which keeps the activations of a deep random model finite.
/// </summary>
internal sealed class RandomTensorReader : ITensorReader
{
    private const int Block = 1 << 16;
    private const double Std = 0.02;
    private readonly Dictionary<string, long[]> _shapes = new(StringComparer.Ordinal);
    private readonly List<string> _names = new();
    private readonly ulong _seed;
    private readonly torch.ScalarType _dtype;

    public RandomTensorReader(IEnumerable<(string Name, long[] Shape)> tensors, ulong seed, torch.ScalarType dtype)
    {
        foreach (var (name, shape) in tensors)
        {
            if (!_shapes.TryAdd(name, shape)) throw new ArgumentException($"Tensor '{name}' is listed twice");
            _names.Add(name);
        }
        _seed = seed;
        _dtype = dtype;
    }

    public string Source => $"random weights (seed {_seed})";
    public IReadOnlyList<string> Names => _names;
    public bool Contains(string name) => _shapes.ContainsKey(name);

    public TensorInfo GetInfo(string name) =>
        _shapes.TryGetValue(name, out var s) ? new TensorInfo(name, _dtype, s, Source) : throw new CheckpointFormatException("Tensor not found", Source, name);

    public torch.Tensor Load(string name, torch.ScalarType? dtype = null, torch.Device? device = null)
    {
        var shape = _shapes.TryGetValue(name, out var s) ? s : throw new CheckpointFormatException("Tensor not found", Source, name);
        using var scope = torch.NewDisposeScope();
        var t = torch.empty(shape, torch.ScalarType.Float32);
        bool ones = shape.Length == 1 && name.EndsWith(".weight", StringComparison.Ordinal);
        if (ones) t.fill_(1.0f);
        else Fill(t, Mix(_seed ^ Fnv1a(name)));
        var result = t.to(dtype ?? _dtype);
        if (device is not null) result = result.to(device);
        return result.MoveToOuterDisposeScope();
    }

    private static unsafe void Fill(torch.Tensor t, ulong tensorSeed)
    {
        long n = t.numel();
        if (n == 0) return;
        fixed (byte* bytes = t.bytes)
            Fill((nint)bytes, n, tensorSeed);
    }

    private static unsafe void Fill(nint data, long n, ulong tensorSeed)
    {
        float scale = (float)(Std * Math.Sqrt(3.0)); // uniform on [-a, a) has std a / sqrt(3)
        long blocks = (n + Block - 1) / Block;
        Parallel.For(0L, blocks, b =>
        {
            ulong state = Mix(tensorSeed + (ulong)b * 0x9E3779B97F4A7C15UL);
            long start = b * Block, end = Math.Min(n, start + Block);
            float* p = (float*)data;
            for (long i = start; i < end; i++)
            {
                state = Mix(state);
                float u = (state >> 40) * (1.0f / (1 << 24)); // 24 random bits: [0, 1)
                p[i] = (2 * u - 1) * scale;
            }
        });
    }

    /// <summary>SplitMix64's finaliser: a well-mixed 64-bit value from any input.</summary>
    private static ulong Mix(ulong z)
    {
        z += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>FNV-1a of the UTF-8 name: stable across processes, unlike string.GetHashCode.</summary>
    private static ulong Fnv1a(string s)
    {
        ulong h = 0xCBF29CE484222325UL;
        foreach (var b in Encoding.UTF8.GetBytes(s)) { h ^= b; h *= 0x100000001B3UL; }
        return h;
    }

    public void Dispose() { }
}
