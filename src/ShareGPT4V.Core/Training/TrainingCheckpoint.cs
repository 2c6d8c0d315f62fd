using System.Text.Json;
using System.Text.Json.Nodes;
using ShareGPT4V.Checkpoints;
using ShareGPT4V.Configuration;
using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.Training;

/// <summary>Where a run stands: enough to continue it bit for bit.</summary>
internal sealed record TrainingPosition(long GlobalStep, int Epoch, long MicroBatchInEpoch, long TotalMicroBatches);

/// <summary>
/// Writes and reads training checkpoints: the model as a loadable folder in the input's layout, the AdamW state
/// (<c>optimizer.safetensors</c>: <c>exp_avg.*</c>, <c>exp_avg_sq.*</c>, <c>step.*</c>) and <c>trainer_state.json</c>
/// (transformers' fields plus the data position). A checkpoint is written into a temporary folder and renamed, so a
/// folder named <c>checkpoint-N</c> is always complete.
/// </summary>
internal static class TrainingCheckpoint
{
    public const string StateFile = "trainer_state.json";
    public const string OptimizerFile = "optimizer.safetensors";
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    /// <summary>The model's tensors under our names, read from the live parameters.</summary>
    internal sealed class ParameterReader(IReadOnlyList<(string Name, Tensor Tensor)> tensors) : ITensorReader
    {
        private readonly Dictionary<string, Tensor> _byName = tensors.ToDictionary(t => t.Name, t => t.Tensor, StringComparer.Ordinal);
        private readonly List<string> _names = tensors.Select(t => t.Name).ToList();
        public string Source => "the model being trained";
        public IReadOnlyList<string> Names => _names;
        public bool Contains(string name) => _byName.ContainsKey(name);
        public TensorInfo GetInfo(string name) => new(name, _byName[name].dtype, _byName[name].shape, Source);
        public Tensor Load(string name, ScalarType? dtype = null, Device? device = null)
        {
            using var d = _byName[name].detach();
            return d.to(dtype ?? d.dtype, device ?? CPU, copy: true).contiguous();
        }
        public void Dispose() { }
    }

    /// <summary>The model folder inside a checkpoint folder (the LLM folder for the original layout).</summary>
    public static string ModelPathIn(string checkpointDir, ModelFolder source) =>
        source.Config.Layout == CheckpointLayout.LlavaHf ? checkpointDir : Path.Combine(checkpointDir, LlmFolderName(source));

    private static string LlmFolderName(ModelFolder source) => Path.GetFileName(source.ModelPath.TrimEnd('/'));

    /// <summary>Writes the model in the source's layout into <paramref name="dir"/> (created; must not hold a model yet).</summary>
    public static void WriteModel(LlavaModel model, ModelFolder source, string dir)
    {
        var tensors = model.named_parameters().Select(p => (p.name, (Tensor)p.parameter)).ToList();
        using var reader = new ParameterReader(tensors);
        var options = new ModelConversionOptions
        {
            LanguageModelFolderName = source.Config.Layout == CheckpointLayout.Original ? LlmFolderName(source) : null,
        };
        ModelConverter.WriteModel(source, reader, dir, source.Config.Layout, options);
    }

    public static void WriteOptimizer(AdamW optimizer, string path)
    {
        var tensors = new List<KeyValuePair<string, Tensor>>();
        var steps = new List<Tensor>();
        try
        {
            foreach (var (name, st) in optimizer.States.OrderBy(kv => kv.Key, StringComparer.Ordinal))
            {
                tensors.Add(new("exp_avg." + name, st.ExpAvg));
                tensors.Add(new("exp_avg_sq." + name, st.ExpAvgSq));
                var step = torch.tensor(new[] { st.Step });
                steps.Add(step);
                tensors.Add(new("step." + name, step));
            }
            SafeTensorsWriter.Write(path, tensors);
        }
        finally
        {
            foreach (var s in steps) s.Dispose();
        }
    }

    public static void ReadOptimizer(AdamW optimizer, string path, IReadOnlyDictionary<string, Tensor> parameters)
    {
        using var reader = SafeTensorsFile.Open(path);
        foreach (var key in reader.Names)
        {
            if (!key.StartsWith("step.", StringComparison.Ordinal)) continue;
            var name = key["step.".Length..];
            if (!parameters.TryGetValue(name, out var p))
                throw new CheckpointFormatException($"The optimizer state names parameter '{name}', which is not trained in this run", path, key);
            using var stepT = reader.Load(key);
            var avg = reader.Load("exp_avg." + name, ScalarType.Float32).clone();
            var avgSq = reader.Load("exp_avg_sq." + name, ScalarType.Float32).clone();
            if (!avg.shape.SequenceEqual(p.shape) || !avgSq.shape.SequenceEqual(p.shape))
                throw new CheckpointFormatException($"The optimizer state of '{name}' does not match the parameter's shape", path, key);
            avg.DetachFromDisposeScope();
            avgSq.DetachFromDisposeScope();
            optimizer.States[name] = new AdamW.State { Step = stepT.item<long>(), ExpAvg = avg, ExpAvgSq = avgSq };
        }
    }

    public static JsonObject StateJson(TrainingPosition pos, long maxSteps, double epoch, IReadOnlyList<TrainingStepLog> log, int saveSteps,
        int batchSize, string? modelPath)
    {
        var history = new JsonArray();
        foreach (var e in log)
        {
            var entry = new JsonObject
            {
                ["epoch"] = e.Epoch, ["grad_norm"] = e.GradNorm, ["learning_rate"] = e.LearningRate, ["loss"] = e.Loss, ["step"] = e.Step,
            };
            if (double.IsFinite(e.AuxLoss)) entry["aux_loss"] = e.AuxLoss;
            history.Add(entry);
        }
        return new JsonObject
        {
            ["epoch"] = epoch,
            ["global_step"] = pos.GlobalStep,
            ["max_steps"] = maxSteps,
            ["save_steps"] = saveSteps,
            ["train_batch_size"] = batchSize,
            ["log_history"] = history,
            ["resume"] = new JsonObject
            {
                ["epoch"] = pos.Epoch,
                ["micro_batch_in_epoch"] = pos.MicroBatchInEpoch,
                ["total_micro_batches"] = pos.TotalMicroBatches,
                ["model_path"] = modelPath,
            },
        };
    }

    public static void WriteJson(string path, JsonNode node)
    {
        var tmp = path + ".tmp";
        File.WriteAllText(tmp, node.ToJsonString(Indented) + "\n");
        File.Move(tmp, path, overwrite: true);
    }

    /// <summary>The completed checkpoint with the highest step in <paramref name="outputDir"/>, or null.</summary>
    public static string? Latest(string outputDir)
    {
        if (!Directory.Exists(outputDir)) return null;
        return Directory.EnumerateDirectories(outputDir, "checkpoint-*")
            .Select(d => (Dir: d, Ok: long.TryParse(Path.GetFileName(d)["checkpoint-".Length..], out var n), N: n))
            .Where(x => x.Ok && File.Exists(Path.Combine(x.Dir, StateFile)))
            .OrderByDescending(x => x.N)
            .Select(x => x.Dir)
            .FirstOrDefault();
    }

    public static (TrainingPosition Position, List<TrainingStepLog> Log, string ModelPath) ReadState(string checkpointDir)
    {
        var path = Path.Combine(checkpointDir, StateFile);
        try
        {
            var o = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
            var r = o["resume"]!.AsObject();
            var pos = new TrainingPosition(o["global_step"]!.GetValue<long>(), r["epoch"]!.GetValue<int>(),
                r["micro_batch_in_epoch"]!.GetValue<long>(), r["total_micro_batches"]!.GetValue<long>());
            long max = o["max_steps"]!.GetValue<long>();
            var log = o["log_history"]!.AsArray().Select(e => new TrainingStepLog(e!["step"]!.GetValue<long>(), e["epoch"]!.GetValue<double>(),
                e["loss"]!.GetValue<double>(), e["learning_rate"]!.GetValue<double>(), e["grad_norm"]!.GetValue<double>(), 0, TimeSpan.Zero, max)
                { AuxLoss = e["aux_loss"]?.GetValue<double>() ?? double.NaN }).ToList();
            var model = r["model_path"]?.GetValue<string>() ?? ".";
            return (pos, log, Path.GetFullPath(Path.Combine(checkpointDir, model)));
        }
        catch (Exception e) when (e is JsonException or NullReferenceException or InvalidOperationException or FormatException)
        {
            throw new CheckpointFormatException($"The trainer state cannot be read: {e.Message}", path, inner: e);
        }
    }
}
