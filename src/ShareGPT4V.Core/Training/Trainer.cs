using System.Diagnostics;
using System.Text.Json.Nodes;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using ShareGPT4V.Checkpoints;
using ShareGPT4V.Configuration;
using ShareGPT4V.Modeling;
using ShareGPT4V.Preprocessing;
using ShareGPT4V.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.Training;

/// <summary>A run stopped because the loss or the gradient norm stopped being a finite number.</summary>
public sealed class TrainingDivergedException : ShareGPT4VException
{
    /// <summary>The optimizer step (1-based) whose loss was not finite.</summary>
    public long Step { get; }
    /// <summary>The last checkpoint saved before it, or null when none was.</summary>
    public string? LastCheckpoint { get; }

    /// <summary>Creates the error.</summary>
    public TrainingDivergedException(string message, long step, string? lastCheckpoint)
        : base($"{message} at step {step}; " + (lastCheckpoint is null ? "no checkpoint was saved before it" : $"the last good checkpoint is '{lastCheckpoint}'"))
    {
        Step = step;
        LastCheckpoint = lastCheckpoint;
    }
}

/// <summary>
/// Fine-tunes a LLaVA-1.5 / ShareGPT4V model as LLaVA's <c>train.py</c> with Hugging Face Trainer does: the stages'
/// templates, label masking and trainable parts, AdamW with Trainer's decay groups, the learning-rate schedules,
/// gradient accumulation, total-norm clipping, checkpoints in the input's layout and bit-exact resumption.
/// One run per instance; the model lives for the run.
/// </summary>
public sealed class Trainer
{
    private readonly TrainerOptions _o;
    private readonly ILogger _log;

    /// <summary>Creates a trainer for the run <paramref name="options"/> describe (checked here).</summary>
    /// <exception cref="ModelConfigurationException">An option is out of range.</exception>
    public Trainer(TrainerOptions options, ILogger? logger = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        _o = options;
        _log = logger ?? NullLogger.Instance;
    }

    /// <summary>
    /// Runs the training to its last step and writes the final model into <see cref="TrainerOptions.OutputDir"/>.
    /// Cancelling saves a resumable checkpoint of the last completed step, then throws <see cref="OperationCanceledException"/>.
    /// </summary>
    /// <exception cref="TrainingDataException">The data cannot be used (or a record is broken and skipping is off).</exception>
    /// <exception cref="TrainingDivergedException">The loss became NaN or infinite.</exception>
    public Task<TrainingResult> RunAsync(IProgress<TrainingStepLog>? progress = null, CancellationToken cancellationToken = default) =>
        Task.Factory.StartNew(() => Run(progress, cancellationToken), cancellationToken, TaskCreationOptions.LongRunning, TaskScheduler.Default);

    private TrainingTemplate Template => _o.Stage == TrainingStage.Finetune ? TrainingTemplate.VicunaV1 : TrainingTemplate.Plain;

    private TrainingResult Run(IProgress<TrainingStepLog>? progress, CancellationToken ct)
    {
        var output = Path.GetFullPath(_o.OutputDir);
        var source = ModelFolder.Open(_o.ModelPath, _o.VisionTowerPath); // a wrong model path fails before anything is written
        Directory.CreateDirectory(output);
        // bf16: the matrix products in bfloat16 with float32 master weights (Autocast), where the CPU multiplies
        // bfloat16 natively; elsewhere libtorch's bfloat16 GEMMs are far slower than float32, so the run stays float32.
        ScalarType? autocast = _o.DType == "bf16" && Autocast.CpuHasFastBf16 ? ScalarType.BFloat16 : null;
        if (autocast is not null)
            _log.LogInformation("bf16 autocast: linear layers, attention and the patch convolution run in bfloat16; weights, optimizer and everything else in float32");
        else if (_o.DType == "bf16")
            _log.LogWarning("bf16 autocast needs a CPU with AVX512-BF16 or AMX-BF16 (this one has neither, so bfloat16 products would be far slower than float32): training in fp32");

        // Resume: the latest complete checkpoint supplies weights, optimizer state, log and data position.
        string? resumeFrom = _o.Resume ? TrainingCheckpoint.Latest(output) : null;
        if (_o.Resume && resumeFrom is null)
            _log.LogWarning("--resume: no checkpoint in {Output}; starting from the beginning", output);
        TrainingPosition pos = new(0, 0, 0, 0);
        var log = new List<TrainingStepLog>();
        string loadPath = _o.ModelPath;
        string? loadTower = _o.VisionTowerPath;
        if (resumeFrom is not null)
        {
            (pos, log, loadPath) = TrainingCheckpoint.ReadState(resumeFrom);
            loadTower = null;
            _log.LogInformation("Resuming from {Checkpoint} (step {Step})", resumeFrom, pos.GlobalStep);
        }

        var tokenizer = LlavaTokenizer.Load(source.ModelPath);
        var aspect = _o.ImageAspect ?? (_o.Stage is TrainingStage.Finetune or TrainingStage.Vision ? ImageAspectMode.Pad : ImageAspectMode.Resize);
        var imageProcessor = source.PreprocessorConfigPath is { } pre
            ? ClipImageProcessor.FromFile(pre, aspect)
            : throw new ModelConfigurationException("The model has no preprocessor_config.json; the images cannot be preprocessed", source.ModelPath);

        // The data: every record preprocessed up front (text only; images are read as batches are prepared).
        var skipped = new List<string>();
        void Bad(TrainingDataException e)
        {
            if (!_o.SkipBadRecords) throw e;
            _log.LogWarning("Skipping: {Message}", e.Message);
            lock (skipped) skipped.Add(e.RecordId ?? "?");
        }
        var records = TrainingDataFile.Read(_o.DataPath, Bad);
        string imageRoot = _o.ImageFolder ?? Path.GetDirectoryName(Path.GetFullPath(_o.DataPath))!;
        var pre1 = new TrainingPreprocessor(tokenizer, Template, _o.TokenizerVariant, _o.ModelMaxLength);
        var examples = new List<TokenizedExample>();
        foreach (var r in records)
        {
            try
            {
                foreach (var img in r.Images)
                    if (!File.Exists(Path.Combine(imageRoot, img)))
                        throw new TrainingDataException($"image '{img}' not found in '{imageRoot}'", r.Id);
                if (r.Images.Count > 0)
                    foreach (var lbl in r.PatchLabels)
                        if (!File.Exists(Path.Combine(imageRoot, lbl)))
                            throw new TrainingDataException($"patch label image '{lbl}' not found in '{imageRoot}'", r.Id);
                if (_o.Stage == TrainingStage.Vision)
                {
                    // No text: the tower learns from the images and their patch labels alone.
                    if (r.Images.Count == 0) continue;
                    examples.Add(new TokenizedExample(r.Id, Array.Empty<long>(), Array.Empty<long>(), r.Images) { PatchLabels = r.PatchLabels });
                }
                else examples.Add(pre1.Process(r).Example);
            }
            catch (TrainingDataException e) { Bad(e); }
        }
        if (examples.Count == 0) throw new TrainingDataException($"No usable record in '{_o.DataPath}'");

        int bs = _o.PerDeviceBatchSize, ga = _o.GradientAccumulationSteps;
        long stepsInEpoch = (examples.Count + bs - 1) / bs;
        long updatesPerEpoch = Math.Max(stepsInEpoch / ga, 1);
        long maxSteps = _o.MaxSteps ?? (long)Math.Ceiling(_o.Epochs * updatesPerEpoch);
        int epochs = _o.MaxSteps is int ms ? (int)(ms / updatesPerEpoch + (ms % updatesPerEpoch > 0 ? 1 : 0)) : (int)Math.Ceiling(_o.Epochs);
        long warmup = LrSchedule.WarmupSteps(maxSteps, _o.WarmupSteps, _o.WarmupRatio);

        if (_o.Lora is not null) (loadPath, loadTower) = (_o.ModelPath, _o.VisionTowerPath); // a LoRA checkpoint holds the adapter only
        using var model = _o.FromScratch && resumeFrom is null
            ? Scratch(source)
            : ModelLoader.Load(loadPath, new LoadOptions { DType = ScalarType.Float32, VisionTowerPath = loadTower });
        using var auxHead = _o.AuxPatchLossWeight > 0 ? new AuxPatchHead(model.Config.Vision.HiddenSize, _o.AuxPatchClasses, _o.Seed) : null;
        if (auxHead is not null && resumeFrom is not null) auxHead.Load(resumeFrom);
        PatchLabelSettings? labelSettings = auxHead is null ? null
            : new PatchLabelSettings(aspect, model.Config.Vision.ImageSize, model.Config.Vision.PatchSize, _o.AuxPatchClasses);
        using var lora = _o.Lora is null ? null
            : resumeFrom is not null ? LoraAdapters.Load(resumeFrom, model, source) : LoraAdapters.Attach(model, _o.Lora, _o.Seed);
        lora?.SetTraining(true);
        var named = model.named_parameters().Select(p => (Name: p.name, Param: (Tensor)p.parameter)).ToList();
        var trainable = named.Where(p => IsTrainable(p.Name, model.Config)).ToList();
        if (lora is not null) trainable.AddRange(lora.Parameters);
        if (auxHead is not null) trainable.AddRange(auxHead.Parameters);
        if (trainable.Count == 0) throw new ModelConfigurationException("Nothing to train: no parameter is trainable in this stage", null, "stage");
        foreach (var (_, p) in trainable) p.requires_grad_(true);
        _log.LogInformation("{Examples} examples, {Steps} optimizer steps, {Trainable} trainable parameters in {Tensors} tensors",
            examples.Count, maxSteps, trainable.Sum(t => t.Param.numel()), trainable.Count);

        using var optimizer = new AdamW(Groups(model, trainable), _o.AdamBeta1, _o.AdamBeta2, _o.AdamEpsilon);
        if (resumeFrom is not null)
            TrainingCheckpoint.ReadOptimizer(optimizer, Path.Combine(resumeFrom, TrainingCheckpoint.OptimizerFile), trainable.ToDictionary(t => t.Name, t => t.Param));

        TensorBoardWriter? tb = _o.ReportToTensorBoard ? new TensorBoardWriter(Path.Combine(output, "runs")) : null;
        using var jsonl = new StreamWriter(Path.Combine(output, "training_log.jsonl"), append: false);
        foreach (var e in log) jsonl.WriteLine(LogLine(e));
        string? lastCheckpoint = resumeFrom;
        var started = Stopwatch.StartNew();
        var atLastStep = pos;

        void Save(string dir, TrainingPosition at, bool checkpoint)
        {
            var tmp = dir + ".tmp";
            if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
            Directory.CreateDirectory(tmp);
            if (lora is not null) lora.Save(tmp, model, source);
            else TrainingCheckpoint.WriteModel(model, source, tmp);
            TrainingCheckpoint.WriteOptimizer(optimizer, Path.Combine(tmp, TrainingCheckpoint.OptimizerFile));
            auxHead?.Save(tmp);
            var modelRel = lora is not null ? "." : Path.GetRelativePath(tmp, TrainingCheckpoint.ModelPathIn(tmp, source));
            var state = TrainingCheckpoint.StateJson(at, maxSteps, EpochOf(at), log, _o.SaveSteps, bs, modelRel);
            TrainingCheckpoint.WriteJson(Path.Combine(tmp, TrainingCheckpoint.StateFile), state);
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
            Directory.Move(tmp, dir);
            if (checkpoint) lastCheckpoint = dir;
        }
        // Cancelled: the weights are those of the last completed step (a partial accumulation is dropped), so that
        // step's checkpoint is what a resumed run continues from.
        void SaveAndStop()
        {
            var dir = Path.Combine(output, $"checkpoint-{atLastStep.GlobalStep}");
            Save(dir, atLastStep, checkpoint: true);
            _log.LogWarning("Cancelled: saved a resumable checkpoint at step {Step} in {Dir}", atLastStep.GlobalStep, dir);
            ct.ThrowIfCancellationRequested();
        }
        double EpochOf(TrainingPosition p) => p.Epoch + (double)p.MicroBatchInEpoch / stepsInEpoch;

        try
        {
            long globalStep = pos.GlobalStep;
            long totalMicro = pos.TotalMicroBatches;
            float trLoss = 0; // float32, as Trainer sums its tr_loss tensor
            double auxLoss = 0;
            long tokens = 0;
            var stepTimer = Stopwatch.StartNew();
            bool done = globalStep >= maxSteps;
            for (int epoch = pos.Epoch; epoch < epochs && !done; epoch++)
            {
                var order = Order(examples, epoch);
                long startMicro = epoch == pos.Epoch ? pos.MicroBatchInEpoch : 0;
                using var batches = new BatchPrefetcher(examples, order, bs, startMicro, imageRoot, imageProcessor, _o.PrefetchBatches, ct, labelSettings);
                for (long micro = startMicro; micro < stepsInEpoch; micro++)
                {
                    if (ct.IsCancellationRequested) SaveAndStop();
                    PreparedBatch prepared;
                    try { prepared = batches.Next(micro); }
                    catch (OperationCanceledException) when (ct.IsCancellationRequested) { SaveAndStop(); throw; }
                    foreach (var bad in prepared.Bad) Bad(bad);
                    totalMicro++;
                    // Dropout (LoRA's) draws from the global generator: seeding it per micro-batch makes every draw a
                    // function of the seed and the position, so a resumed run draws what the uninterrupted one did.
                    torch.manual_seed(unchecked(_o.Seed * 1_000_003L + totalMicro));
                    if (prepared.Batch is { } batch)
                    {
                        using (batch)
                        using (Autocast.Enter(autocast))
                        {
                            double lossValue, auxValue = double.NaN;
                            long tok;
                            if (_o.Stage == TrainingStage.Vision)
                            {
                                (lossValue, tok) = TrainingForward.VisionForwardBackward(model, batch, auxHead!, ga);
                                auxValue = lossValue;
                            }
                            else if (auxHead is not null)
                                (lossValue, auxValue, _, tok) = TrainingForward.ForwardBackwardWithAux(model, batch, _o.ModelMaxLength, ga, auxHead, _o.AuxPatchLossWeight);
                            else
                                (lossValue, _, tok) = TrainingForward.ForwardBackward(model, batch, _o.ModelMaxLength, ga, _o.GradientCheckpointing);
                            if (!double.IsFinite(lossValue) || (auxHead is not null && batch.PatchLabels is not null && !double.IsFinite(auxValue)))
                                throw new TrainingDivergedException($"The loss is {lossValue} (auxiliary {auxValue}; records {string.Join(", ", batch.Examples.Select(e => e.Id))})", globalStep + 1, lastCheckpoint);
                            trLoss += (float)lossValue / ga;
                            if (double.IsFinite(auxValue)) auxLoss += auxValue / ga;
                            tokens += tok;
                        }
                    }
                    bool stepNow = totalMicro % ga == 0 || (stepsInEpoch <= ga && micro + 1 == stepsInEpoch);
                    if (!stepNow) continue;

                    double gradNorm = ClipGradients(trainable.Select(t => t.Param).ToList(), _o.MaxGradNorm);
                    if (!double.IsFinite(gradNorm))
                        throw new TrainingDivergedException($"The gradient norm is {gradNorm}", globalStep + 1, lastCheckpoint);
                    optimizer.Step(LrSchedule.Factor(_o.LrScheduler, globalStep, warmup, maxSteps));
                    foreach (var (_, p) in trainable)
                    {
                        using var g = p.grad;
                        g?.zero_();
                    }
                    globalStep++;
                    atLastStep = new TrainingPosition(globalStep, micro + 1 == stepsInEpoch ? epoch + 1 : epoch,
                        micro + 1 == stepsInEpoch ? 0 : micro + 1, totalMicro);
                    double seconds = stepTimer.Elapsed.TotalSeconds;
                    var entry = new TrainingStepLog(globalStep, EpochOf(atLastStep), trLoss,
                        _o.LearningRate * LrSchedule.Factor(_o.LrScheduler, globalStep, warmup, maxSteps), gradNorm,
                        seconds > 0 ? tokens / seconds : 0, started.Elapsed, maxSteps, tokens, PeakRss()) { AuxLoss = auxHead is null ? double.NaN : auxLoss };
                    log.Add(entry);
                    jsonl.WriteLine(LogLine(entry));
                    jsonl.Flush();
                    tb?.Add(entry);
                    progress?.Report(entry);
                    trLoss = 0;
                    auxLoss = 0;
                    tokens = 0;
                    stepTimer.Restart();
                    if (_o.SaveSteps > 0 && globalStep % _o.SaveSteps == 0)
                        Save(Path.Combine(output, $"checkpoint-{globalStep}"), atLastStep, checkpoint: true);
                    if (globalStep >= maxSteps) { done = true; break; }
                }
            }

            // The final model in the output folder itself, with the state of the whole run.
            var final = Path.Combine(output, ".final");
            Save(final, atLastStep, checkpoint: false);
            foreach (var entry in Directory.EnumerateFileSystemEntries(final))
            {
                var dest = Path.Combine(output, Path.GetFileName(entry));
                if (Directory.Exists(dest)) Directory.Delete(dest, true);
                else if (File.Exists(dest)) File.Delete(dest);
                if (Directory.Exists(entry)) Directory.Move(entry, dest);
                else File.Move(entry, dest);
            }
            Directory.Delete(final, true);
            return new TrainingResult(output, lora is not null ? output : TrainingCheckpoint.ModelPathIn(output, source), atLastStep.GlobalStep, log, skipped);
        }
        finally
        {
            tb?.Dispose();
            foreach (var (_, p) in trainable) p.requires_grad_(false);
        }
    }

    private static string LogLine(TrainingStepLog e)
    {
        var o = new JsonObject
        {
            ["step"] = e.Step, ["epoch"] = e.Epoch, ["loss"] = e.Loss, ["learning_rate"] = e.LearningRate, ["grad_norm"] = e.GradNorm,
            ["tokens"] = e.Tokens, ["tokens_per_second"] = e.TokensPerSecond, ["elapsed_seconds"] = e.Elapsed.TotalSeconds,
            ["peak_rss_bytes"] = e.PeakRssBytes,
        };
        if (double.IsFinite(e.AuxLoss)) o["aux_loss"] = e.AuxLoss;
        return o.ToJsonString();
    }

    /// <summary>The model with random initial weights (<see cref="ScratchWeights"/>), for <see cref="TrainerOptions.FromScratch"/>.</summary>
    private LlavaModel Scratch(ModelFolder source)
    {
        _log.LogInformation("Initialising every weight randomly (seed {Seed}): training from scratch", _o.Seed);
        using var noGrad = torch.no_grad();
        return new LlavaModel(source.Config, new ScratchWeights(_o.Seed));
    }

    private static long PeakRss()
    {
        using var self = Process.GetCurrentProcess();
        return self.PeakWorkingSet64;
    }

    /// <summary>Whether a parameter (our llava-hf name) is trained in this stage.</summary>
    internal bool IsTrainable(string name, LlavaConfig config)
    {
        bool projector = name.StartsWith("multi_modal_projector.", StringComparison.Ordinal);
        bool language = name.StartsWith("language_model.", StringComparison.Ordinal);
        if (_o.Lora is not null) return projector; // the LLM is trained through its adapters
        switch (_o.Stage)
        {
            case TrainingStage.ProjectorOnly: return projector;
            case TrainingStage.Finetune: return projector || language;
            case TrainingStage.Vision when projector || language: return false;
        }
        if (projector || language) return true;
        if (_o.TuneVitEmbeddings && (name.StartsWith("vision_tower.vision_model.embeddings.", StringComparison.Ordinal)
                                     || name.StartsWith("vision_tower.vision_model.pre_layrnorm.", StringComparison.Ordinal)))
            return true;
        const string layers = "vision_tower.vision_model.encoder.layers.";
        if (!name.StartsWith(layers, StringComparison.Ordinal)) return false;
        var rest = name[layers.Length..];
        return int.TryParse(rest[..rest.IndexOf('.')], out int layer) && layer >= _o.TuneVitFromLayer;
    }

    /// <summary>
    /// Trainer's optimizer groups: weight decay on everything but biases and the parameters of LayerNorm / RMSNorm
    /// modules (transformers 4.45's <c>get_decay_parameter_names</c>, where LLaMA's RMSNorm is registered as a layer
    /// norm), split further by the projector's and the vision tower's own learning rates when set (LLaVA / ShareGPT4V).
    /// </summary>
    private List<ParameterGroup> Groups(LlavaModel model, List<(string Name, Tensor Param)> trainable)
    {
        var noDecay = NoDecayNames(model);
        var groups = new List<ParameterGroup>();
        noDecay.Add(AuxPatchHead.BiasName);
        double LrOf(string n) =>
            n.StartsWith("multi_modal_projector.", StringComparison.Ordinal) && _o.MmProjectorLr is double p ? p
            : (n.StartsWith("vision_tower.", StringComparison.Ordinal) || n.StartsWith("aux_patch_head.", StringComparison.Ordinal)) && _o.VisionTowerLr is double v ? v
            : _o.LearningRate;
        foreach (var g in trainable.GroupBy(t => (Lr: LrOf(t.Name), Decay: !noDecay.Contains(t.Name))))
            groups.Add(new ParameterGroup($"lr={g.Key.Lr} decay={g.Key.Decay}", g.ToList(), g.Key.Lr, g.Key.Decay ? _o.WeightDecay : 0));
        return groups;
    }

    internal static HashSet<string> NoDecayNames(LlavaModel model)
    {
        var set = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (name, module) in model.named_modules())
            if (module is Modeling.LayerNorm or RmsNorm)
                foreach (var (pn, _) in module.named_parameters())
                    set.Add(name + "." + pn);
        foreach (var (name, _) in model.named_parameters())
            if (name.Contains("bias", StringComparison.Ordinal)) set.Add(name);
        return set;
    }

    /// <summary>
    /// torch's <c>clip_grad_norm_</c>: total = ‖(‖g_i‖)‖ over the parameters that have a gradient, every gradient
    /// multiplied by min(1, max / (total + 1e-6)) in float32. Returns the total before clipping.
    /// </summary>
    internal static double ClipGradients(IReadOnlyList<Tensor> parameters, double maxNorm)
    {
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        var grads = parameters.Select(p => p.grad).Where(g => g is not null).Select(g => g!).ToList();
        if (grads.Count == 0) return 0;
        var total = torch.stack(grads.Select(g => g.norm()).ToArray()).norm();
        double value = total.item<float>();
        if (maxNorm > 0)
        {
            using var held = new HeldScalars();
            var coef = total.add(held[1e-6]).reciprocal().mul(held[maxNorm]).clamp_max(held[1.0]);
            foreach (var g in grads) g.mul_(coef);
        }
        return value;
    }

    /// <summary>The example order of an epoch: the file's, shuffled by seed and epoch, or LLaVA's modality grouping.</summary>
    private long[] Order(IReadOnlyList<TokenizedExample> examples, int epoch)
    {
        var idx = Enumerable.Range(0, examples.Count).Select(i => (long)i).ToArray();
        if (!_o.Shuffle && !_o.GroupByModalityLength) return idx;
        var rng = new Random(unchecked(_o.Seed * 1_000_003 + epoch));
        if (!_o.GroupByModalityLength)
        {
            rng.Shuffle(idx);
            return idx;
        }
        // LLaVA's modality grouping: per modality, shuffled and cut into batches, each sorted longest first; the full
        // batches of both modalities shuffled together, the two leftover partial batches joined at the end.
        int bs = _o.PerDeviceBatchSize;
        var full = new List<long[]>();
        var leftover = new List<long>();
        foreach (bool withImages in new[] { true, false })
        {
            var g = idx.Where(i => examples[(int)i].Images.Count > 0 == withImages).ToArray();
            rng.Shuffle(g);
            for (int s = 0; s < g.Length; s += bs)
            {
                var batch = g.Skip(s).Take(bs).OrderByDescending(i => examples[(int)i].InputIds.Length).ToArray();
                if (batch.Length == bs && s + bs < g.Length) full.Add(batch);
                else leftover.AddRange(batch);
            }
        }
        var arr = full.ToArray();
        rng.Shuffle(arr);
        return arr.SelectMany(b => b).Concat(leftover.OrderByDescending(i => examples[(int)i].InputIds.Length)).ToArray();
    }
}
