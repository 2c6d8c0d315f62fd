using Microsoft.Extensions.Logging;
using ShareGPT4V.Training;

namespace ShareGPT4V.Cli;

/// <summary><c>train</c>: fine-tune a model with ShareGPT4V's / LLaVA's recipe (HF Trainer semantics).</summary>
internal static class TrainCommand
{
    public static VerbSpec Verb => new("train", "fine-tune a model (ShareGPT4V / LLaVA stages, LoRA, HF Trainer semantics), resumable checkpoints")
    {
        Details = """
        usage: sharegpt4v train --model DIR --data FILE --image-folder DIR --output DIR --stage pretrain|finetune|projector-only|vision [options]

        Fine-tunes a LLaVA-1.5 / ShareGPT4V model as LLaVA's train.py with Hugging Face Trainer does: stage pretrain
        (template plain, images resized and center-cropped, LLM + projector + CLIP layers >= --tune-vit-from-layer),
        finetune (template vicuna_v1, images padded to a square, projector + LLM) or projector-only. The output folder
        receives checkpoint-N folders (every --save-steps), the final model in the input's layout,
        trainer_state.json (log_history: step, loss, learning_rate, grad_norm), training_log.jsonl. Ctrl+C saves a
        checkpoint of the last completed step; --resume continues from the latest checkpoint bit for bit.
        """,
        Options =
        [
            new("model", "DIR", "model to start from (llava-hf, or the LLM folder of an original checkpoint) (required)"),
            new("vision-tower", "DIR", "CLIP tower folder, when mm_vision_tower cannot be found next to the model"),
            new("data", "FILE", "LLaVA-format records: a JSON array or JSON lines (required)"),
            new("image-folder", "DIR", "folder the records' image paths are relative to (default: the data file's)"),
            new("output", "DIR", "where checkpoints, the final model and the logs go (required)"),
            new("stage", "NAME", "pretrain, finetune (default), projector-only, or vision (the CLIP tower alone against --aux-patch-* labels, no text)",
                Choices: new[] { "pretrain", "finetune", "projector-only", "vision" }),
            new("learning-rate", "F", "peak learning rate (default 2e-5)"),
            new("mm-projector-lr", "F", "projector learning rate (default: --learning-rate)"),
            new("vision-tower-lr", "F", "vision tower learning rate (default: --learning-rate)"),
            new("per-device-batch-size", "N", "examples per micro-batch (default 1)"),
            new("gradient-accumulation-steps", "K", "micro-batches per optimizer step (default 1)"),
            new("max-steps", "S", "optimizer steps (overrides --epochs)"),
            new("epochs", "E", "passes over the data (default 1)"),
            new("lr-scheduler", "NAME", "cosine (default), linear, constant, constant_with_warmup"),
            new("warmup-ratio", "F", "warmup as a fraction of the steps, rounded up (default 0)"),
            new("warmup-steps", "N", "warmup steps (overrides --warmup-ratio)"),
            new("weight-decay", "F", "AdamW weight decay (not on biases and norms) (default 0)"),
            new("adam-beta1", "F", "AdamW beta1 (default 0.9)"),
            new("adam-beta2", "F", "AdamW beta2 (default 0.999)"),
            new("adam-epsilon", "F", "AdamW epsilon (default 1e-8)"),
            new("max-grad-norm", "F", "clip the total gradient norm (default 1; 0 = off)"),
            new("seed", "N", "data order seed (default 42)"),
            OptionSpec.Flag("no-shuffle", "keep the file's order"),
            OptionSpec.Flag("group-by-modality-length", "batches of image records or of text-only records (LLaVA's option)"),
            new("dtype", "fp32|bf16", "bf16 autocast: products in bfloat16, float32 master weights (on CPUs with AVX512-BF16 or AMX-BF16; elsewhere fp32)"),
            new("tune-vit-from-layer", "L", "pretrain: first CLIP encoder layer trained (default 12)"),
            new("model-max-length", "N", "longest sequence in tokens, image tokens included (default 2048)"),
            new("tokenizer-variant", "NAME", "llava (default: LLaVA main, legacy=false), sharegpt4v (transformers 4.31), legacy"),
            new("save-steps", "N", "save a checkpoint every N optimizer steps (default: only at the end)"),
            OptionSpec.Flag("resume", "continue from the latest checkpoint in --output"),
            OptionSpec.Flag("gradient-checkpointing", "recompute decoder-layer activations in the backward pass"),
            OptionSpec.Flag("fail-on-bad-records", "stop at the first broken record or image (default: log and skip it)"),
            new("lora-r", "N", "LoRA on the LLM with rank N (finetune stage; the projector is trained in full)"),
            new("lora-alpha", "F", "LoRA alpha (default 16)"),
            new("lora-dropout", "F", "LoRA dropout (default 0.05)"),
            new("report-to", "NAME", "tensorboard: event files in OUTPUT/runs; none (default)"),
            OptionSpec.Flag("from-scratch", "random initial weights (seeded by --seed): --model needs only config and tokenizer files"),
            new("image-aspect-ratio", "NAME", "pad or square (default: square for pretrain, pad for finetune and vision)", Choices: new[] { "pad", "square" }),
            OptionSpec.Flag("tune-vit-embeddings", "pretrain/vision: also train the tower's patch/position embeddings and pre-LayerNorm"),
            new("aux-patch-loss-weight", "W", "add W x the auxiliary patch loss: a linear head classifies each patch feature against the " +
                "records' \"patch_labels\" images (pretrain and vision; default 0 = off)"),
            new("aux-patch-classes", "N", "number of patch label classes (ids 0..N-1, 0 = background)"),
            new("threads", "N", "CPU threads"),
        ],
        Run = RunAsync,
    };

    public static async Task<int> RunAsync(CommandLine cl, CancellationToken ct)
    {
        if (cl.Value("max-steps") is not null && cl.Value("epochs") is not null)
            throw new UsageException("Give --max-steps or --epochs, not both");
        var stage = (cl.Value("stage") ?? "finetune") switch
        {
            "pretrain" => TrainingStage.Pretrain,
            "finetune" => TrainingStage.Finetune,
            "projector-only" => TrainingStage.ProjectorOnly,
            "vision" => TrainingStage.Vision,
            var s => throw new UsageException($"--stage must be pretrain, finetune, projector-only or vision, got '{s}'"),
        };
        ShareGPT4V.Preprocessing.ImageAspectMode? aspect = cl.Value("image-aspect-ratio") switch
        {
            null => null,
            "pad" => ShareGPT4V.Preprocessing.ImageAspectMode.Pad,
            "square" => ShareGPT4V.Preprocessing.ImageAspectMode.Resize,
            var s => throw new UsageException($"--image-aspect-ratio must be pad or square, got '{s}'"),
        };
        var scheduler = (cl.Value("lr-scheduler") ?? "cosine") switch
        {
            "cosine" => LrSchedulerKind.Cosine,
            "linear" => LrSchedulerKind.Linear,
            "constant" => LrSchedulerKind.Constant,
            "constant_with_warmup" => LrSchedulerKind.ConstantWithWarmup,
            var s => throw new UsageException($"--lr-scheduler must be cosine, linear, constant or constant_with_warmup, got '{s}'"),
        };
        var variant = (cl.Value("tokenizer-variant") ?? "llava") switch
        {
            "llava" => TokenizerVariant.Llava,
            "sharegpt4v" => TokenizerVariant.ShareGPT4V,
            "legacy" => TokenizerVariant.Legacy,
            var s => throw new UsageException($"--tokenizer-variant must be llava, sharegpt4v or legacy, got '{s}'"),
        };
        bool tensorboard = (cl.Value("report-to") ?? "none") switch
        {
            "tensorboard" => true,
            "none" => false,
            var s => throw new UsageException($"--report-to must be tensorboard or none, got '{s}'"),
        };
        var dtype = cl.Value("dtype") ?? "fp32";
        if (dtype is not ("fp32" or "bf16")) throw new UsageException($"--dtype must be fp32 or bf16, got '{dtype}'");
        double lr = cl.Double("learning-rate", double.MinValue, double.MaxValue) ?? 2e-5;
        if (!(lr > 0)) throw new UsageException($"--learning-rate must be positive, got {lr}");
        if (cl.Int("threads", 1, 1024) is int threads) TorchSharp.torch.set_num_threads(threads);

        var options = new TrainerOptions
        {
            ModelPath = Shared.CheckModelPath(cl, hubId: false, gguf: false),
            VisionTowerPath = cl.Value("vision-tower"),
            DataPath = cl.Required("data"),
            ImageFolder = cl.Value("image-folder"),
            OutputDir = cl.Required("output"),
            Stage = stage,
            LearningRate = lr,
            MmProjectorLr = cl.Double("mm-projector-lr", double.Epsilon, double.MaxValue),
            VisionTowerLr = cl.Double("vision-tower-lr", double.Epsilon, double.MaxValue),
            PerDeviceBatchSize = cl.Int("per-device-batch-size", 1, 1 << 20) ?? 1,
            GradientAccumulationSteps = cl.Int("gradient-accumulation-steps", 1, 1 << 20) ?? 1,
            MaxSteps = cl.Int("max-steps", 1, int.MaxValue),
            Epochs = cl.Double("epochs", double.Epsilon, 1e6) ?? 1,
            LrScheduler = scheduler,
            WarmupRatio = cl.Double("warmup-ratio", 0, 1) ?? 0,
            WarmupSteps = cl.Int("warmup-steps", 0, int.MaxValue) ?? 0,
            WeightDecay = cl.Double("weight-decay", 0, 1e6) ?? 0,
            AdamBeta1 = cl.Double("adam-beta1", 0, 0.999999999) ?? 0.9,
            AdamBeta2 = cl.Double("adam-beta2", 0, 0.999999999) ?? 0.999,
            AdamEpsilon = cl.Double("adam-epsilon", 0, 1) ?? 1e-8,
            MaxGradNorm = cl.Double("max-grad-norm", 0, 1e12) ?? 1.0,
            Seed = cl.Int("seed", int.MinValue, int.MaxValue) ?? 42,
            Shuffle = !cl.Flag("no-shuffle"),
            GroupByModalityLength = cl.Flag("group-by-modality-length"),
            DType = dtype,
            TuneVitFromLayer = cl.Int("tune-vit-from-layer", 0, 10_000) ?? 12,
            ModelMaxLength = cl.Int("model-max-length", 2, 1 << 24) ?? 2048,
            TokenizerVariant = variant,
            SaveSteps = cl.Int("save-steps", 0, int.MaxValue) ?? 0,
            Resume = cl.Flag("resume"),
            GradientCheckpointing = cl.Flag("gradient-checkpointing"),
            SkipBadRecords = !cl.Flag("fail-on-bad-records"),
            ReportToTensorBoard = tensorboard,
            FromScratch = cl.Flag("from-scratch"),
            ImageAspect = aspect,
            TuneVitEmbeddings = cl.Flag("tune-vit-embeddings"),
            AuxPatchLossWeight = cl.Double("aux-patch-loss-weight", 0, 1e6) ?? 0,
            AuxPatchClasses = cl.Int("aux-patch-classes", 2, 256) ?? 0,
            Lora = cl.Int("lora-r", 1, 1 << 16) is int r
                ? new LoraOptions(r, cl.Double("lora-alpha", double.Epsilon, 1e9) ?? 16, cl.Double("lora-dropout", 0, 0.999999) ?? 0.05)
                : null,
        };
        if (options.Lora is null && (cl.Value("lora-alpha") is not null || cl.Value("lora-dropout") is not null))
            throw new UsageException("--lora-alpha and --lora-dropout need --lora-r");

        var trainer = new Trainer(options, new StderrLogger());
        var bar = new ConsoleProgress("training");
        var progress = new SyncProgress<TrainingStepLog>(e =>
        {
            var eta = e.Step > 0 ? TimeSpan.FromSeconds(e.Elapsed.TotalSeconds / e.Step * (e.TotalSteps - e.Step)) : TimeSpan.Zero;
            bar.Report(e.Step, e.TotalSteps,
                $"step {e.Step}/{e.TotalSteps} loss {e.Loss:F4}" + (double.IsFinite(e.AuxLoss) ? $" aux {e.AuxLoss:F4}" : "") + $" lr {e.LearningRate:E2} grad {e.GradNorm:F3} {e.TokensPerSecond:F0} tok/s ETA {eta:hh\\:mm\\:ss}");
        });
        var result = await trainer.RunAsync(progress, ct);
        bar.Done();
        Console.WriteLine($"Trained {result.Steps} steps; the model is in {result.ModelPath}" +
            (result.SkippedRecords.Count > 0 ? $" ({result.SkippedRecords.Count} record(s) skipped: {string.Join(", ", result.SkippedRecords.Take(10))})" : ""));
        return 0;
    }

    /// <summary>Warnings and notes from the trainer, one line each on standard error.</summary>
    private sealed class StderrLogger : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Information;
        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (!IsEnabled(logLevel)) return;
            Console.Error.WriteLine((logLevel >= LogLevel.Warning ? "warning: " : "") + formatter(state, exception));
        }
    }
}
