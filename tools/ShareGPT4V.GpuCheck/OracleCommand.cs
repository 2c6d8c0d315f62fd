using System.Text.Json;
using System.Text.Json.Nodes;
using ShareGPT4V.Checkpoints;
using ShareGPT4V.Generation;
using ShareGPT4V.Language;
using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.GpuCheck;

/// <summary>
/// The oracle comparisons of tests/ShareGPT4V.Tests/Oracle on any device and dtype: every stage against the
/// transformers goldens (max abs difference per check) and KV-cache greedy ids. float32 must pass the tests'
/// tolerance (1e-4); half precision is reported.
/// </summary>
internal static class OracleCommand
{
    private const double Fp32Tol = 1e-4;
    private static readonly string[] Cases = { "hf_tiny", "llava_tiny336", "hf_llama2vocab", "llava_tiny336_bin" };

    public static JsonObject Run(CommandLine opts)
    {
        // CUDA goes through the provider first: a missing or mismatched libtorch becomes a DeviceException here.
        var placement = new ShareGPT4V.Cuda.CudaDeviceProvider(new ShareGPT4V.Cuda.CudaOptions { LibTorchDirectory = opts.Value("libtorch-dir") })
            .Resolve(new ShareGPT4V.Devices.DeviceResolutionRequest { Device = opts.Value("device", "cuda:0"), DType = "float32" }, new ConsoleLogger());
        var device = placement.Device;
        var fixtures = Path.GetFullPath(opts.Value("fixtures", "tests/ShareGPT4V.Tests/Fixtures"));
        var modes = opts.Value("modes", device.type == DeviceType.CUDA ? "fp32,fp32-tf32,fp16,bf16" : "fp32").Split(',', StringSplitOptions.RemoveEmptyEntries);
        var result = new JsonObject { ["device"] = device.ToString(), ["fixtures"] = fixtures };
        bool ok = true;
        var table = new List<string> { $"{"mode",-10} {"case",-18} {"worst check",-34} {"max |diff|",10}  greedy ids" };
        foreach (var mode in modes)
        {
            var (dtype, tf32) = mode switch
            {
                "fp32" => (ScalarType.Float32, false),
                "fp32-tf32" => (ScalarType.Float32, true),
                "fp16" => (ScalarType.Float16, false),
                "bf16" => (ScalarType.BFloat16, false),
                _ => throw new ArgumentException($"Unknown mode '{mode}' (fp32, fp32-tf32, fp16, bf16)"),
            };
            using var _ = Tf32.Set(device, tf32);
            var modeNode = new JsonObject();
            foreach (var name in Cases)
            {
                var c = new Golden(fixtures, name);
                var r = RunCase(c, device, dtype);
                bool pass = dtype != ScalarType.Float32 || tf32 || (r.Worst <= Fp32Tol && r.GreedyRowsMatched == r.GreedyRows);
                if (dtype == ScalarType.Float32 && !tf32) ok &= pass;
                modeNode[name] = r.ToJson(dtype == ScalarType.Float32 && !tf32 ? Fp32Tol : null, pass);
                table.Add($"{mode,-10} {name,-18} {r.WorstCheck,-34} {r.Worst,10:E2}  {r.GreedyTokensMatched}/{r.GreedyTokens} tokens, {r.GreedyRowsMatched}/{r.GreedyRows} rows"
                          + (dtype == ScalarType.Float32 && !tf32 ? (pass ? "  PASS" : "  FAIL") : ""));
            }
            result[mode] = modeNode;
        }
        Console.WriteLine(string.Join(Environment.NewLine, table));
        result["ok"] = ok;
        result["table"] = string.Join("\n", table);
        return result;
    }

    private sealed class CaseResult
    {
        public Dictionary<string, double> Diffs { get; } = new();
        public int GreedyRows, GreedyRowsMatched, GreedyTokens, GreedyTokensMatched;
        public double Worst => Diffs.Count == 0 ? 0 : Diffs.Values.Max();
        public string WorstCheck => Diffs.Count == 0 ? "-" : Diffs.MaxBy(kv => kv.Value).Key;

        public void Record(string check, Tensor expected, Tensor actual)
        {
            if (!expected.shape.SequenceEqual(actual.shape))
                throw new InvalidOperationException($"{check}: shape [{string.Join(",", actual.shape)}], expected [{string.Join(",", expected.shape)}]");
            using var a = actual.to(ScalarType.Float64).cpu();
            using var e = expected.to(ScalarType.Float64).cpu();
            using var d = (a - e).abs().max();
            double v = d.item<double>();
            Diffs[check] = Math.Max(Diffs.GetValueOrDefault(check), double.IsNaN(v) ? double.PositiveInfinity : v);
        }

        public JsonObject ToJson(double? tol, bool pass) => new()
        {
            ["checks"] = new JsonObject(Diffs.OrderBy(k => k.Key).Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)JsonValue.Create(kv.Value)))),
            ["worst_check"] = WorstCheck, ["worst_max_abs_diff"] = Worst, ["tolerance"] = tol, ["pass"] = pass,
            ["greedy_rows"] = GreedyRows, ["greedy_rows_matched"] = GreedyRowsMatched,
            ["greedy_tokens"] = GreedyTokens, ["greedy_tokens_matched"] = GreedyTokensMatched,
        };
    }

    private static CaseResult RunCase(Golden c, Device device, ScalarType dtype)
    {
        var r = new CaseResult();
        using var model = ModelLoader.Load(c.ModelPath, new LoadOptions { DType = dtype, Device = device });
        using var noGrad = torch.no_grad();

        foreach (var key in c.TensorNames("vision_hidden_states_all.safetensors").Where(k => !k.Contains("pooler")))
        {
            using var scope = NewDisposeScope();
            var expected = c.Tensor("vision_hidden_states_all.safetensors", key);
            var states = model.VisionTower.AllHiddenStates(c.Pixels(key.Split('_')[0], key.Split('_', 2)[1]).to(device));
            for (int i = 0; i < states.Count; i++) r.Record("clip hidden states", expected[i], states[i].squeeze(0));
        }
        foreach (var key in c.TensorNames("vision_hidden_minus2.safetensors"))
        {
            using var scope = NewDisposeScope();
            var parts = key.Split('_', 2);
            var pixels = c.Pixels(parts[0], parts[1]).to(device);
            r.Record("selected features", c.Tensor("vision_hidden_minus2.safetensors", key), model.ImageFeatures(pixels).squeeze(0));
            r.Record("projector", c.Tensor("projector_out.safetensors", key), model.EncodeImages(pixels).squeeze(0));
        }

        var main = c.Prompt("main");
        var forms = new List<string> { "input_ids" };
        if (main.TryGetProperty("input_ids_expanded", out _)) forms.Add("input_ids_expanded");
        foreach (var form in forms)
        {
            using var scope = NewDisposeScope();
            var image = model.EncodeImages(c.Pixels(main.GetProperty("image").GetString()!, main.GetProperty("pixel_variant").GetString()!).to(device));
            using var inputs = model.BuildInputs(new[] { Golden.Ids(main.GetProperty(form)) }, image);
            var hidden = new List<Tensor>();
            var logits = model.LanguageModel.Forward(inputs.Embeddings, inputs.PositionIds, null, null, 0, LogitsMode.All, hidden);
            var positions = Golden.Ids(main.GetProperty("logits_positions"));
            var rows = c.Tensor("logits.safetensors", "main_rows");
            for (int i = 0; i < positions.Length; i++) r.Record("main logits", rows[i], logits[0, positions[i]]);
            var expectedHidden = c.Tensor("logits.safetensors", "main_llm_hidden_last");
            for (int i = 0; i < hidden.Count; i++) r.Record("llm hidden states", expectedHidden[i], hidden[i][0, inputs.Length - 1]);
        }

        using (var scope = NewDisposeScope())
        {
            using var inputs = model.BuildInputs(new[] { Golden.Ids(c.Prompt("text").GetProperty("input_ids")) }, null);
            var logits = model.LanguageModel.Forward(inputs.Embeddings, inputs.PositionIds, null, null, 0, LogitsMode.Last);
            r.Record("text logits", c.Tensor("logits.safetensors", "text_last"), logits[0, 0]);
        }

        foreach (var batch in new[] { "batch_image", "batch_text" })
        {
            using var scope = NewDisposeScope();
            var p = c.Prompt(batch);
            var rows = Golden.IdRows(p.GetProperty("input_ids"));
            Tensor? images = null;
            if (p.GetProperty("images").ValueKind == JsonValueKind.Array)
            {
                var variant = p.GetProperty("pixel_variant").GetString()!;
                images = model.EncodeImages(torch.cat(p.GetProperty("images").EnumerateArray().Select(i => c.Pixels(i.GetString()!, variant)).ToArray(), 0).to(device));
            }
            using var inputs = model.BuildInputs(rows, images);
            var logits = model.LanguageModel.Forward(inputs.Embeddings, inputs.PositionIds, inputs.AttentionMask, null, 0, LogitsMode.Last);
            var expected = c.Tensor("logits.safetensors", p.GetProperty("logits_key").GetString()!);
            for (int i = 0; i < rows.Length; i++) r.Record("left-padded batch logits", expected[i], logits[i, 0]);
        }

        int maxNew = c.Json.GetProperty("max_new_tokens").GetInt32();
        foreach (var prompt in new[] { "main", "text", "batch_image", "batch_text" })
        {
            using var scope = NewDisposeScope();
            var p = c.Prompt(prompt);
            long[][] rows;
            var images = new List<Tensor>();
            string variant = p.TryGetProperty("pixel_variant", out var v) ? v.GetString()! : c.PrimaryVariant;
            if (p.TryGetProperty("texts", out _))
            {
                rows = Golden.IdRows(p.GetProperty("input_ids"));
                if (p.GetProperty("images").ValueKind == JsonValueKind.Array)
                    images.AddRange(p.GetProperty("images").EnumerateArray().Select(i => c.Pixels(i.GetString()!, variant)));
            }
            else
            {
                rows = new[] { Golden.Ids(p.GetProperty("input_ids")) };
                if (p.TryGetProperty("image", out var img)) images.Add(c.Pixels(img.GetString()!, variant));
            }
            // Through the generation engine users call: each row in its own slot, decode steps batched.
            Tensor? steps = prompt == "main" && c.HasTensor("logits.safetensors", "main_gen_step_logits") ? c.Tensor("logits.safetensors", "main_gen_step_logits") : null;
            using var engine = new GenerationEngine(model, null, new EngineOptions
            {
                MaxBatchSize = rows.Length, ContextLength = model.Config.Text.MaxPositionEmbeddings, ImageCacheBytes = 0, PrefixCacheBytes = 0,
            });
            var requests = new List<SequenceRequest>();
            int cursor = 0;
            for (int i = 0; i < rows.Length; i++)
            {
                int count = model.CountImages(rows[i]), row = i;
                requests.Add(new SequenceRequest
                {
                    PromptIds = rows[i].Select(x => (int)x).ToArray(),
                    Images = images.Skip(cursor).Take(count).Select(t => new EngineImage(t)).ToList(),
                    Options = new GenerationOptions { MaxNewTokens = maxNew, StopAtEndOfSequence = false },
                    OnStepLogits = (step, logits) => { if (steps is not null && row == 0) r.Record("greedy step logits", steps[step], logits); },
                });
                cursor += count;
            }
            var outputs = engine.Run(requests).Select(x => x.TokenIds.Select(id => (long)id).ToArray()).ToArray();
            var expected = p.GetProperty("generated_ids");
            var expectedRows = expected[0].ValueKind == JsonValueKind.Array ? Golden.IdRows(expected) : new[] { Golden.Ids(expected) };
            for (int i = 0; i < rows.Length; i++)
            {
                r.GreedyRows++;
                r.GreedyTokens += expectedRows[i].Length;
                r.GreedyTokensMatched += expectedRows[i].Zip(outputs[i]).TakeWhile(x => x.First == x.Second).Count(); // matching prefix
                if (expectedRows[i].SequenceEqual(outputs[i])) r.GreedyRowsMatched++;
            }
        }
        return r;
    }

    /// <summary>Sets cuBLAS and cuDNN TF32 for one mode and restores them after (libtorch's own defaults otherwise).</summary>
    private sealed class Tf32 : IDisposable
    {
        private readonly bool _cublas, _cudnn, _active;
        private Tf32(bool active, bool on)
        {
            _active = active;
            if (!active) return;
            _cublas = torch.backends.cuda.matmul.allow_tf32;
            _cudnn = torch.backends.cudnn.allow_tf32;
            torch.backends.cuda.matmul.allow_tf32 = on;
            torch.backends.cudnn.allow_tf32 = on;
        }
        public static Tf32 Set(Device d, bool on) => new(d.type == DeviceType.CUDA, on);
        public void Dispose()
        {
            if (!_active) return;
            torch.backends.cuda.matmul.allow_tf32 = _cublas;
            torch.backends.cudnn.allow_tf32 = _cudnn;
        }
    }
}

/// <summary>One oracle case folder: golden.json, golden tensors and the checkpoint to load.</summary>
internal sealed class Golden
{
    public string Dir { get; }
    public string ModelPath { get; }
    public JsonElement Json { get; }
    public string PrimaryVariant => Json.GetProperty("primary_pixel_variant").GetString()!;

    public Golden(string fixtures, string name)
    {
        // The .bin case carries the weights of llava_tiny336 as PyTorch shards and uses its goldens.
        var goldenFrom = name == "llava_tiny336_bin" ? "llava_tiny336" : name;
        Dir = Path.Combine(fixtures, "oracle", goldenFrom);
        ModelPath = Path.Combine(fixtures, "oracle", name, name.StartsWith("llava_tiny336", StringComparison.Ordinal) ? "model" : "");
        Json = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(Dir, "golden.json"))).RootElement.Clone();
    }

    public JsonElement Prompt(string name) => Json.GetProperty("prompts").GetProperty(name);

    public Tensor Tensor(string file, string key)
    {
        using var f = SafeTensorsFile.Open(Path.Combine(Dir, file));
        using var t = f.Load(key);
        return t.clone();
    }

    public bool HasTensor(string file, string key)
    {
        using var f = SafeTensorsFile.Open(Path.Combine(Dir, file));
        return f.Contains(key);
    }

    public IReadOnlyList<string> TensorNames(string file)
    {
        using var f = SafeTensorsFile.Open(Path.Combine(Dir, file));
        return f.Names.ToList();
    }

    public Tensor Pixels(string image, string variant) => Tensor("pixel_values.safetensors", $"{image}_{variant}").unsqueeze(0);

    public static long[] Ids(JsonElement e) => e.EnumerateArray().Select(x => x.GetInt64()).ToArray();
    public static long[][] IdRows(JsonElement e) => e.EnumerateArray().Select(Ids).ToArray();
}
