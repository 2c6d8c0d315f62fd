using System.Text.Json.Nodes;
using ShareGPT4V.Checkpoints;
using ShareGPT4V.Configuration;
using ShareGPT4V.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.GpuCheck;

/// <summary>
/// Writes a llava-hf folder with random weights for timing runs: the configuration, tokenizer and processor files
/// of a real checkpoint (e.g. the llava-1.5-7b-hf anchors), weights drawn N(0, 0.02) (norm weights 1, biases 0) in
/// the transformers >= 4.52 names, sharded safetensors plus index. transformers and this library then load the
/// very same files. --layers / --vision-layers shrink the model for a quick check.
/// </summary>
internal static class MakeCheckpointCommand
{
    private static readonly string[] CopiedFiles =
    {
        "config.json", "generation_config.json", "preprocessor_config.json", "processor_config.json", "tokenizer_config.json",
        "special_tokens_map.json", "added_tokens.json", "chat_template.json",
    };

    public static JsonObject Run(Args opts)
    {
        var from = opts.Get("from") ?? throw new ArgumentException("--from DIR (a folder with a llava-hf config.json) is required");
        var tokenizer = opts.Get("tokenizer-model") ?? throw new ArgumentException("--tokenizer-model FILE is required");
        var outDir = opts.Get("out") ?? throw new ArgumentException("--out DIR is required");
        var device = new Device(opts.Get("device", "cpu"));
        var dtype = opts.Get("dtype", "float16") switch { "float32" => ScalarType.Float32, "bfloat16" => ScalarType.BFloat16, _ => ScalarType.Float16 };
        long shardBytes = (long)(double.Parse(opts.Get("shard-gib", "4")) * (1L << 30));
        int seed = opts.GetInt("seed", 0);

        Directory.CreateDirectory(outDir);
        foreach (var f in CopiedFiles.Where(f => File.Exists(Path.Combine(from, f))))
            File.Copy(Path.Combine(from, f), Path.Combine(outDir, f), overwrite: true);
        File.Copy(tokenizer, Path.Combine(outDir, "tokenizer.model"), overwrite: true);
        if (opts.Get("layers") is { } layers || opts.Get("vision-layers") is not null)
        {
            var cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "config.json")))!.AsObject();
            if (opts.Get("layers") is { } l) ((JsonObject)(cfg["text_config"] ??= new JsonObject()))["num_hidden_layers"] = int.Parse(l);
            if (opts.Get("vision-layers") is { } v) ((JsonObject)(cfg["vision_config"] ??= new JsonObject()))["num_hidden_layers"] = int.Parse(v);
            File.WriteAllText(Path.Combine(outDir, "config.json"), cfg.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
        }

        var config = ModelFolder.Open(outDir).Config;
        var meta = new MetaWeightSource(dtype);
        using (var _ = new LlavaModel(config, meta)) { }
        using var source = new RandomWeights(meta.Requested, dtype, device, seed);
        var written = SafeTensorsWriter.WriteSharded(outDir, source, shardBytes, NewName);
        Console.WriteLine($"wrote {written.TensorCount} tensors, {written.TotalBytes / 1e9:F2} GB in {written.Files.Count} file(s) to {outDir}");
        return new JsonObject { ["ok"] = true, ["out"] = outDir, ["tensors"] = written.TensorCount, ["bytes"] = written.TotalBytes, ["files"] = written.Files.Count };
    }

    /// <summary>Our (transformers 4.36-4.51) names to the >= 4.52 names that current transformers saves and loads natively.</summary>
    internal static string NewName(string name) =>
        name.StartsWith("language_model.model.", StringComparison.Ordinal) ? "model.language_model." + name["language_model.model.".Length..]
        : name.StartsWith("language_model.lm_head.", StringComparison.Ordinal) ? name["language_model.".Length..]
        : name.StartsWith("vision_tower.", StringComparison.Ordinal) || name.StartsWith("multi_modal_projector.", StringComparison.Ordinal) ? "model." + name
        : name;

    /// <summary>A tensor source that draws each weight when it is read (one tensor in memory at a time).</summary>
    private sealed class RandomWeights : ITensorReader
    {
        private readonly Dictionary<string, long[]> _shapes;
        private readonly List<string> _names;
        private readonly ScalarType _dtype;
        private readonly Device _device;
        private readonly int _seed;

        public RandomWeights(IEnumerable<(string Name, long[] Shape)> requested, ScalarType dtype, Device device, int seed)
        {
            _names = requested.Select(r => r.Name).ToList();
            _shapes = requested.ToDictionary(r => r.Name, r => r.Shape);
            _dtype = dtype;
            _device = device;
            _seed = seed;
        }

        public string Source => "random weights";
        public IReadOnlyList<string> Names => _names;
        public bool Contains(string name) => _shapes.ContainsKey(name);
        public TensorInfo GetInfo(string name) => new(name, _dtype, _shapes[name], Source);

        public Tensor Load(string name, ScalarType? dtype = null, Device? device = null)
        {
            var shape = _shapes[name];
            using var scope = NewDisposeScope();
            bool isNorm = shape.Length == 1 && (name.Contains("norm", StringComparison.Ordinal) || name.Contains("layrnorm", StringComparison.Ordinal));
            Tensor t;
            if (name.EndsWith(".bias", StringComparison.Ordinal)) t = torch.zeros(shape, _dtype, _device);
            else if (isNorm) t = torch.ones(shape, _dtype, _device);
            else
            {
                // A generator per tensor, seeded from its name, so a tensor's values do not depend on the order of writing.
                using var g = new Generator((ulong)(_seed * 1_000_003L + StableHash(name)), _device);
                t = (torch.randn(shape, ScalarType.Float32, _device, generator: g) * 0.02).to(_dtype);
            }
            return t.to(dtype ?? _dtype).cpu().MoveToOuterDisposeScope();
        }

        private static long StableHash(string s)
        {
            long h = 1469598103934665603L;
            foreach (char c in s) h = (h ^ c) * 1099511628211L;
            return h & 0x7fffffff;
        }

        public void Dispose() { }
    }
}
