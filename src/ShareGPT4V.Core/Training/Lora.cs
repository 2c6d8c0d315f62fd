using System.Text.Json.Nodes;
using ShareGPT4V.Checkpoints;
using ShareGPT4V.Configuration;
using ShareGPT4V.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.Training;

/// <summary>LoRA on the language model, as LLaVA's <c>finetune_lora.sh</c> (PEFT): rank, alpha and dropout.</summary>
/// <param name="R">Rank of each update (LLaVA's scripts: 128).</param>
/// <param name="Alpha">Scale numerator: the update is (alpha / r)·B·A (LLaVA's scripts: 256; its default 16).</param>
/// <param name="Dropout">Dropout on the adapter's input (LLaVA's default 0.05).</param>
public sealed record LoraOptions(int R, double Alpha = 16, double Dropout = 0.05)
{
    /// <summary>The linear layers adapted: LLaVA's <c>find_all_linear_names</c> over the LLM (lm_head excluded).</summary>
    public static IReadOnlyList<string> TargetModules { get; } = new[] { "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj" };

    /// <summary>Checks the values, naming the option at fault.</summary>
    /// <exception cref="ModelConfigurationException">A value is out of range.</exception>
    public void Validate()
    {
        if (R < 1) throw new ModelConfigurationException($"The LoRA rank must be at least 1, got {R}", null, "lora-r");
        if (!(double.IsFinite(Alpha) && Alpha > 0)) throw new ModelConfigurationException($"LoRA alpha must be positive, got {Alpha}", null, "lora-alpha");
        if (!(Dropout is >= 0 and < 1)) throw new ModelConfigurationException($"LoRA dropout must be in [0, 1), got {Dropout}", null, "lora-dropout");
    }
}

/// <summary>
/// The LoRA adapters of a model: for each adapted linear layer W (out × in), A (r × in) and B (out × r), the layer's
/// output plus (alpha / r)·B·A·dropout(x). A starts uniform in ±1/sqrt(in) (PEFT's kaiming-uniform with a = √5), B at
/// zero, so training starts from the base model's outputs. Saved and loaded in PEFT's format
/// (<c>adapter_config.json</c>, <c>adapter_model.safetensors</c> with <c>base_model.model.….lora_A.weight</c> keys).
/// </summary>
internal sealed class LoraAdapters : IDisposable
{
    public const string ConfigFile = "adapter_config.json";
    public const string WeightsFile = "adapter_model.safetensors";
    /// <summary>The projector, trained in full beside the adapters (LLaVA's <c>non_lora_trainables</c>).</summary>
    public const string NonLoraFile = "non_lora_trainables.safetensors";

    private readonly List<(string Module, Modeling.Linear Layer, Tensor A, Tensor B)> _adapters = new();
    private readonly LoraOptions _options;
    private readonly Scalar _scale;
    private bool _training = true;

    public LoraOptions Options => _options;

    /// <summary>(our name, tensor) of every A and B, e.g. <c>language_model.model.layers.0.self_attn.q_proj.lora_A.weight</c>.</summary>
    public IEnumerable<(string Name, Tensor Tensor)> Parameters =>
        _adapters.SelectMany(a => new[] { (a.Module + ".lora_A.weight", a.A), (a.Module + ".lora_B.weight", a.B) });

    private LoraAdapters(LoraOptions options)
    {
        _options = options;
        _scale = (options.Alpha / options.R).ToScalar();
    }

    /// <summary>Attaches fresh adapters to the LLM's target layers, A drawn from a generator seeded with <paramref name="seed"/>.</summary>
    public static LoraAdapters Attach(LlavaModel model, LoraOptions options, long seed)
    {
        options.Validate();
        var lora = new LoraAdapters(options);
        using var gen = new Generator((ulong)seed);
        foreach (var (name, layer) in Targets(model))
        {
            long inF = layer.InFeatures, outF = layer.OutFeatures;
            double bound = 1.0 / Math.Sqrt(inF);
            var a = torch.empty(new[] { (long)options.R, inF }, ScalarType.Float32).uniform_(-bound, bound, gen).DetachFromDisposeScope();
            var b = torch.zeros(new[] { outF, (long)options.R }, ScalarType.Float32).DetachFromDisposeScope();
            lora.Add(name, layer, a, b);
        }
        return lora;
    }

    private void Add(string module, Modeling.Linear layer, Tensor a, Tensor b)
    {
        a.requires_grad_(true);
        b.requires_grad_(true);
        _adapters.Add((module, layer, a, b));
        layer.Adapter = x =>
        {
            using var scope = NewDisposeScope();
            var h = _training && _options.Dropout > 0 ? nn.functional.dropout(x, _options.Dropout, true) : x;
            h = h.to(a.dtype);
            var y = (Autocast.Applies(h) ? Autocast.Linear(Autocast.Linear(h, a, null), b, null) : nn.functional.linear(nn.functional.linear(h, a), b)).mul(_scale);
            return y.to(x.dtype).MoveToOuterDisposeScope();
        };
    }

    /// <summary>The LLM's linear layers LoRA adapts, by our module name.</summary>
    internal static IEnumerable<(string Name, Modeling.Linear Layer)> Targets(LlavaModel model) =>
        model.named_modules()
            .Where(m => m.module is Modeling.Linear && m.name.StartsWith("language_model.model.layers.", StringComparison.Ordinal)
                && LoraOptions.TargetModules.Contains(m.name[(m.name.LastIndexOf('.') + 1)..]))
            .Select(m => (m.name, (Modeling.Linear)m.module));

    /// <summary>Dropout off (evaluation) or on (training).</summary>
    public void SetTraining(bool training) => _training = training;

    /// <summary>The PEFT key of one of our adapter tensor names, for a base model of <paramref name="layout"/>.</summary>
    private static string PeftKey(string ourName, CheckpointLayout layout, int projectorDepth) =>
        "base_model.model." + (layout == CheckpointLayout.LlavaHf ? ourName : ModelConverter.ToOriginalLanguageModelKey(ourName, projectorDepth));

    /// <summary>Writes adapter_config.json, adapter_model.safetensors and the projector's non_lora_trainables.safetensors.</summary>
    public void Save(string dir, LlavaModel model, ModelFolder baseModel)
    {
        Directory.CreateDirectory(dir);
        var layout = baseModel.Config.Layout;
        int depth = baseModel.Config.ProjectorDepth;
        var tensors = Parameters.Select(p => new KeyValuePair<string, Tensor>(PeftKey(p.Name, layout, depth), p.Tensor.detach())).ToList();
        try { SafeTensorsWriter.Write(Path.Combine(dir, WeightsFile), tensors); }
        finally { foreach (var t in tensors) t.Value.Dispose(); }
        var projector = model.named_parameters().Where(p => p.name.StartsWith("multi_modal_projector.", StringComparison.Ordinal))
            .Select(p => new KeyValuePair<string, Tensor>(PeftKey(p.name, layout, depth), ((Tensor)p.parameter).detach())).ToList();
        try { SafeTensorsWriter.Write(Path.Combine(dir, NonLoraFile), projector); }
        finally { foreach (var t in projector) t.Value.Dispose(); }
        // llava-hf models hold CLIP layers with the same names (q_proj, ...): a pattern keeps PEFT on the LLM there.
        JsonNode targets = layout == CheckpointLayout.LlavaHf
            ? JsonValue.Create($@".*language_model\.model\.layers\.\d+\.(self_attn|mlp)\.({string.Join("|", LoraOptions.TargetModules)})")!
            : new JsonArray(LoraOptions.TargetModules.Select(t => (JsonNode)JsonValue.Create(t)!).ToArray());
        var config = new JsonObject
        {
            ["alpha_pattern"] = new JsonObject(),
            ["base_model_name_or_path"] = baseModel.ModelPath,
            ["bias"] = "none",
            ["fan_in_fan_out"] = false,
            ["inference_mode"] = true,
            ["init_lora_weights"] = true,
            ["layers_pattern"] = null,
            ["layers_to_transform"] = null,
            ["lora_alpha"] = _options.Alpha,
            ["lora_dropout"] = _options.Dropout,
            ["modules_to_save"] = null,
            ["peft_type"] = "LORA",
            ["r"] = _options.R,
            ["rank_pattern"] = new JsonObject(),
            ["revision"] = null,
            ["target_modules"] = targets,
            ["task_type"] = "CAUSAL_LM",
            ["use_dora"] = false,
            ["use_rslora"] = false,
        };
        TrainingCheckpoint.WriteJson(Path.Combine(dir, ConfigFile), config);
    }

    /// <summary>Reads a PEFT adapter folder and attaches it to <paramref name="model"/> (and loads its projector when present).</summary>
    /// <exception cref="CheckpointFormatException">The folder is not a LoRA adapter of this model.</exception>
    public static LoraAdapters Load(string dir, LlavaModel model, ModelFolder baseModel)
    {
        var configPath = Path.Combine(dir, ConfigFile);
        if (!File.Exists(configPath)) throw new CheckpointFormatException("Not a LoRA adapter folder: adapter_config.json is missing", dir);
        JsonObject cfg;
        try { cfg = JsonNode.Parse(File.ReadAllText(configPath))!.AsObject(); }
        catch (Exception e) when (e is System.Text.Json.JsonException or InvalidOperationException or NullReferenceException)
        {
            throw new CheckpointFormatException($"adapter_config.json is not valid: {e.Message}", configPath, inner: e);
        }
        if (cfg["peft_type"]?.GetValue<string>() is { } type && type != "LORA")
            throw new CheckpointFormatException($"The adapter is of type '{type}'; only LORA is supported", configPath);
        int r = cfg["r"]?.GetValue<int>() ?? throw new CheckpointFormatException("adapter_config.json has no 'r'", configPath);
        double alpha = cfg["lora_alpha"]?.GetValue<double>() ?? 8;
        double dropout = cfg["lora_dropout"]?.GetValue<double>() ?? 0;
        var lora = new LoraAdapters(new LoraOptions(r, alpha, dropout));
        var layout = baseModel.Config.Layout;
        int depth = baseModel.Config.ProjectorDepth;
        using var weights = SafeTensorsFile.Open(Path.Combine(dir, WeightsFile));
        var names = new HashSet<string>(weights.Names, StringComparer.Ordinal);
        foreach (var (name, layer) in Targets(model))
        {
            var ka = PeftKey(name + ".lora_A.weight", layout, depth);
            var kb = PeftKey(name + ".lora_B.weight", layout, depth);
            if (!names.Remove(ka) || !names.Remove(kb)) continue;
            var a = weights.Load(ka, ScalarType.Float32).clone().DetachFromDisposeScope();
            var b = weights.Load(kb, ScalarType.Float32).clone().DetachFromDisposeScope();
            if (a.shape[0] != r || a.shape[1] != layer.InFeatures || b.shape[0] != layer.OutFeatures || b.shape[1] != r)
                throw new CheckpointFormatException($"LoRA tensors of '{name}' have shapes [{string.Join(", ", a.shape)}] / [{string.Join(", ", b.shape)}], not rank {r} for a {layer.OutFeatures}×{layer.InFeatures} layer", dir, ka);
            lora.Add(name, layer, a, b);
        }
        if (names.Count > 0)
            throw new CheckpointFormatException($"The adapter has {names.Count} tensor(s) this model has no place for, e.g. '{names.First()}'", dir);
        var nonLora = Path.Combine(dir, NonLoraFile);
        if (File.Exists(nonLora))
        {
            using var proj = SafeTensorsFile.Open(nonLora);
            using var noGrad = torch.no_grad();
            foreach (var (pname, p) in model.named_parameters().Where(p => p.name.StartsWith("multi_modal_projector.", StringComparison.Ordinal)))
            {
                var key = PeftKey(pname, layout, depth);
                if (!proj.Contains(key)) throw new CheckpointFormatException($"'{key}' is missing", nonLora, key);
                using var t = proj.Load(key, p.dtype);
                p.copy_(t);
            }
        }
        lora.SetTraining(false);
        return lora;
    }

    /// <summary>Folds every update into its layer's weight (W += (alpha / r)·B·A) and detaches the adapters.</summary>
    public void Merge()
    {
        using var noGrad = torch.no_grad();
        foreach (var (_, layer, a, b) in _adapters)
        {
            using var scope = NewDisposeScope();
            var delta = torch.mm(b, a).mul(_scale).to(layer.Weight.dtype);
            layer.Weight.add_(delta);
            layer.Adapter = null;
        }
    }

    public void Dispose()
    {
        foreach (var (_, layer, a, b) in _adapters)
        {
            layer.Adapter = null;
            a.Dispose();
            b.Dispose();
        }
        _adapters.Clear();
        _scale.Dispose();
    }
}

/// <summary>Folds a LoRA adapter (PEFT format, as <see cref="Trainer"/> writes it) into its base model.</summary>
public static class LoraMerger
{
    /// <summary>
    /// Loads the base model in <paramref name="modelPath"/>, applies the adapter in <paramref name="adapterPath"/>
    /// (W += (alpha / r)·B·A, and the projector trained beside it when the adapter folder holds one) and writes the
    /// merged model into <paramref name="outputDir"/> in the base model's layout. Returns the merged model's folder.
    /// </summary>
    /// <exception cref="CheckpointFormatException">The adapter does not fit the model.</exception>
    /// <exception cref="ModelConfigurationException">The output folder exists and is not empty.</exception>
    public static string Merge(string modelPath, string adapterPath, string outputDir, string? visionTowerPath = null)
    {
        var outFull = Path.GetFullPath(outputDir);
        if (Directory.Exists(outFull) && Directory.EnumerateFileSystemEntries(outFull).Any())
            throw new ModelConfigurationException($"The output folder '{outFull}' is not empty", null, "output");
        var folder = ModelFolder.Open(modelPath, visionTowerPath);
        using var model = ModelLoader.Load(folder, new LoadOptions { DType = ScalarType.Float32 });
        using var lora = LoraAdapters.Load(adapterPath, model, folder);
        lora.Merge();
        TrainingCheckpoint.WriteModel(model, folder, outFull);
        return TrainingCheckpoint.ModelPathIn(outFull, folder);
    }
}
