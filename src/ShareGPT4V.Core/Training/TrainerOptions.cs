namespace ShareGPT4V.Training;

/// <summary>What a training run updates.</summary>
public enum TrainingStage
{
    /// <summary>
    /// ShareGPT4V stage 1: template <c>plain</c>, images resized and center-cropped (no padding); the LLM, the projector
    /// and the vision encoder layers from <see cref="TrainerOptions.TuneVitFromLayer"/> on are trained.
    /// </summary>
    Pretrain,
    /// <summary>Stage 2: template <c>vicuna_v1</c>, images padded to a square; the projector and the LLM are trained, the vision tower frozen.</summary>
    Finetune,
    /// <summary>LLaVA's own stage 1: template <c>plain</c>, only the projector trained.</summary>
    ProjectorOnly,
    /// <summary>
    /// The vision tower alone, against the auxiliary patch labels (<see cref="TrainerOptions.AuxPatchLossWeight"/>):
    /// no text and no language model, so it is fast. For towers trained from scratch, before stage 1.
    /// </summary>
    Vision,
}

/// <summary>The options of a <see cref="Trainer"/> run (the CLI's <c>train</c> options map onto these one to one).</summary>
public sealed record TrainerOptions
{
    /// <summary>The model to start from (either layout).</summary>
    public required string ModelPath { get; init; }
    /// <summary>The CLIP tower folder, when the model's <c>mm_vision_tower</c> cannot be found.</summary>
    public string? VisionTowerPath { get; init; }
    /// <summary>The training data: a LLaVA-format JSON array or JSON lines.</summary>
    public required string DataPath { get; init; }
    /// <summary>The folder image paths are relative to (the data file's folder when null).</summary>
    public string? ImageFolder { get; init; }
    /// <summary>Where checkpoints, the final model, <c>trainer_state.json</c> and the log go.</summary>
    public required string OutputDir { get; init; }
    /// <summary>What is trained and with which template.</summary>
    public TrainingStage Stage { get; init; } = TrainingStage.Finetune;
    /// <summary>Peak learning rate.</summary>
    public double LearningRate { get; init; } = 2e-5;
    /// <summary>Learning rate of the projector (LLaVA's <c>mm_projector_lr</c>); null uses <see cref="LearningRate"/>.</summary>
    public double? MmProjectorLr { get; init; }
    /// <summary>Learning rate of the vision tower (ShareGPT4V's <c>vision_tower_lr</c>); null uses <see cref="LearningRate"/>.</summary>
    public double? VisionTowerLr { get; init; }
    /// <summary>Examples per micro-batch.</summary>
    public int PerDeviceBatchSize { get; init; } = 1;
    /// <summary>Micro-batches per optimizer step (each backpropagates loss / steps, as transformers ≤ 4.45).</summary>
    public int GradientAccumulationSteps { get; init; } = 1;
    /// <summary>Optimizer steps to run; overrides <see cref="Epochs"/> when set.</summary>
    public int? MaxSteps { get; init; }
    /// <summary>Passes over the data (fractions allowed, as Trainer's <c>num_train_epochs</c>).</summary>
    public double Epochs { get; init; } = 1;
    /// <summary>cosine, linear, constant or constant_with_warmup.</summary>
    public LrSchedulerKind LrScheduler { get; init; } = LrSchedulerKind.Cosine;
    /// <summary>Warmup as a fraction of the optimizer steps (rounded up), used when <see cref="WarmupSteps"/> is 0.</summary>
    public double WarmupRatio { get; init; }
    /// <summary>Warmup steps; overrides <see cref="WarmupRatio"/> when positive.</summary>
    public int WarmupSteps { get; init; }
    /// <summary>AdamW weight decay, applied to the parameters Trainer decays (not biases, LayerNorm or RMSNorm weights).</summary>
    public double WeightDecay { get; init; }
    /// <summary>AdamW β1.</summary>
    public double AdamBeta1 { get; init; } = 0.9;
    /// <summary>AdamW β2.</summary>
    public double AdamBeta2 { get; init; } = 0.999;
    /// <summary>AdamW ε.</summary>
    public double AdamEpsilon { get; init; } = 1e-8;
    /// <summary>Clip the total gradient norm to this (0 = no clipping).</summary>
    public double MaxGradNorm { get; init; } = 1.0;
    /// <summary>Seed of the data order.</summary>
    public int Seed { get; init; } = 42;
    /// <summary>Shuffle the data each epoch (false: file order, as the parity checks run).</summary>
    public bool Shuffle { get; init; } = true;
    /// <summary>LLaVA's <c>group_by_modality_length</c>: batches hold either image records or text-only records, of similar lengths.</summary>
    public bool GroupByModalityLength { get; init; }
    /// <summary>
    /// "fp32" or "bf16": bf16 autocast, the matrix products in bfloat16 with float32 master weights, on a CPU with
    /// AVX512-BF16 or AMX-BF16; on other CPUs the run stays in fp32 and logs why.
    /// </summary>
    public string DType { get; init; } = "fp32";
    /// <summary>First CLIP encoder layer trained in <see cref="TrainingStage.Pretrain"/> (ShareGPT4V's stage-1 scripts: 12).</summary>
    public int TuneVitFromLayer { get; init; } = 12;
    /// <summary>Longest sequence in tokens (image tokens included); longer ones are cut.</summary>
    public int ModelMaxLength { get; init; } = 2048;
    /// <summary>Save a checkpoint every this many optimizer steps (0 = only at the end).</summary>
    public int SaveSteps { get; init; }
    /// <summary>Continue from the latest checkpoint in <see cref="OutputDir"/>.</summary>
    public bool Resume { get; init; }
    /// <summary>Recompute each decoder layer's activations in the backward pass instead of keeping them.</summary>
    public bool GradientCheckpointing { get; init; }
    /// <summary>Which slow-tokenizer behaviour the labels reproduce (see <see cref="TokenizerVariant"/>).</summary>
    public TokenizerVariant TokenizerVariant { get; init; } = TokenizerVariant.Llava;
    /// <summary>A broken record or image is logged and skipped (true) or fails the run (false).</summary>
    public bool SkipBadRecords { get; init; } = true;
    /// <summary>Micro-batches prepared ahead on other threads.</summary>
    public int PrefetchBatches { get; init; } = 4;
    /// <summary>
    /// LoRA on the language model (stage <see cref="TrainingStage.Finetune"/> only): the LLM's weights stay frozen,
    /// adapters and the projector are trained, and checkpoints hold the adapter in PEFT's format. Null: full training.
    /// </summary>
    public LoraOptions? Lora { get; init; }
    /// <summary>Write TensorBoard event files (<c>--report-to tensorboard</c>).</summary>
    public bool ReportToTensorBoard { get; init; }
    /// <summary>
    /// Start from random weights (transformers' initialisation, seeded by <see cref="Seed"/>) instead of reading them:
    /// the model folder needs only its config, preprocessor and tokenizer files.
    /// </summary>
    public bool FromScratch { get; init; }
    /// <summary>How images are made square; null follows the stage (pretrain resizes and crops, finetune pads).</summary>
    public Preprocessing.ImageAspectMode? ImageAspect { get; init; }
    /// <summary>
    /// Stages that train the vision tower (pretrain, vision) also train its embeddings (patch, class and position)
    /// and its first LayerNorm, which ShareGPT4V keeps frozen: needed when the tower starts from random weights.
    /// </summary>
    public bool TuneVitEmbeddings { get; init; }
    /// <summary>
    /// Weight of the auxiliary patch loss added to the language-model loss (0 = off): a linear head classifies every
    /// patch feature against the records' <c>patch_labels</c> images, which teaches a tower trained from scratch to see
    /// what the captions talk about. The head is dropped from the final model.
    /// </summary>
    public double AuxPatchLossWeight { get; init; }
    /// <summary>Number of patch classes (label ids 0 .. N-1, 0 = background) of the auxiliary patch loss.</summary>
    public int AuxPatchClasses { get; init; }

    /// <summary>Checks every value, naming the option at fault.</summary>
    /// <exception cref="ModelConfigurationException">An option is out of range.</exception>
    public void Validate()
    {
        static void Check(bool ok, string option, string message)
        {
            if (!ok) throw new ModelConfigurationException(message, null, option);
        }
        Check(!string.IsNullOrWhiteSpace(ModelPath), "model", "A model folder is required");
        Check(!string.IsNullOrWhiteSpace(DataPath), "data", "A data file is required");
        Check(!string.IsNullOrWhiteSpace(OutputDir), "output", "An output folder is required");
        Check(double.IsFinite(LearningRate) && LearningRate > 0, "learning-rate", $"The learning rate must be a positive number, got {LearningRate}");
        Check(MmProjectorLr is null || (double.IsFinite(MmProjectorLr.Value) && MmProjectorLr > 0), "mm-projector-lr", "The projector learning rate must be positive");
        Check(VisionTowerLr is null || (double.IsFinite(VisionTowerLr.Value) && VisionTowerLr > 0), "vision-tower-lr", "The vision tower learning rate must be positive");
        Check(PerDeviceBatchSize >= 1, "per-device-batch-size", "The batch size must be at least 1");
        Check(GradientAccumulationSteps >= 1, "gradient-accumulation-steps", "Gradient accumulation steps must be at least 1");
        Check(MaxSteps is null || MaxSteps >= 1, "max-steps", "max-steps must be at least 1");
        Check(double.IsFinite(Epochs) && Epochs > 0, "epochs", "epochs must be positive");
        Check(double.IsFinite(WarmupRatio) && WarmupRatio is >= 0 and <= 1, "warmup-ratio", "The warmup ratio must be in [0, 1]");
        Check(WarmupSteps >= 0, "warmup-steps", "Warmup steps cannot be negative");
        Check(double.IsFinite(WeightDecay) && WeightDecay >= 0, "weight-decay", "Weight decay must be a non-negative number");
        Check(AdamBeta1 is >= 0 and < 1 && AdamBeta2 is >= 0 and < 1, "adam-beta", "AdamW betas must be in [0, 1)");
        Check(double.IsFinite(AdamEpsilon) && AdamEpsilon >= 0, "adam-epsilon", "AdamW epsilon must be non-negative");
        Check(double.IsFinite(MaxGradNorm) && MaxGradNorm >= 0, "max-grad-norm", "max-grad-norm must be a non-negative number");
        Check(DType is "fp32" or "bf16", "dtype", $"dtype must be fp32 or bf16, got '{DType}'");
        Check(TuneVitFromLayer >= 0, "tune-vit-from-layer", "tune-vit-from-layer cannot be negative");
        Check(ModelMaxLength >= 2, "model-max-length", "model-max-length must be at least 2");
        Check(SaveSteps >= 0, "save-steps", "save-steps cannot be negative");
        Check(PrefetchBatches >= 1, "prefetch", "At least one batch must be prefetched");
        Check(Lora is null || Stage == TrainingStage.Finetune, "lora-r", "LoRA is for the finetune stage");
        Check(double.IsFinite(AuxPatchLossWeight) && AuxPatchLossWeight >= 0, "aux-patch-loss-weight", "The auxiliary patch loss weight must be a non-negative number");
        Check(AuxPatchLossWeight == 0 || AuxPatchClasses is >= 2 and <= 256, "aux-patch-classes", "The auxiliary patch loss needs --aux-patch-classes between 2 and 256");
        Check(Stage != TrainingStage.Vision || AuxPatchLossWeight > 0, "aux-patch-loss-weight", "The vision stage trains against the patch labels: set --aux-patch-loss-weight and --aux-patch-classes");
        Check(AuxPatchLossWeight == 0 || !GradientCheckpointing, "gradient-checkpointing", "The auxiliary patch loss does not work with gradient checkpointing");
        Check(AuxPatchLossWeight == 0 || Stage is TrainingStage.Pretrain or TrainingStage.Vision, "aux-patch-loss-weight", "The auxiliary patch loss trains the vision tower: it is for the pretrain and vision stages");
        Check(!FromScratch || Lora is null, "from-scratch", "LoRA adapts trained weights; it cannot start from scratch");
        Lora?.Validate();
    }
}

/// <summary>One optimizer step as logged (<c>trainer_state.json</c>'s <c>log_history</c>).</summary>
/// <param name="Step">Optimizer steps done.</param>
/// <param name="Epoch">Epochs done, fractional.</param>
/// <param name="Loss">Trainer's loss: the sum of the step's micro-batch losses over the accumulation steps.</param>
/// <param name="LearningRate">The rate after the scheduler stepped (what Trainer logs).</param>
/// <param name="GradNorm">The total gradient norm before clipping.</param>
/// <param name="TokensPerSecond">Sequence tokens (image tokens included) processed per second in this step.</param>
/// <param name="Elapsed">Time since the run (or its resumption) started.</param>
/// <param name="TotalSteps">Optimizer steps the run will do.</param>
/// <param name="Tokens">Sequence tokens (image tokens included, padding not) in this step's micro-batches.</param>
/// <param name="PeakRssBytes">The process's peak resident memory so far.</param>
public sealed record TrainingStepLog(long Step, double Epoch, double Loss, double LearningRate, double GradNorm,
    double TokensPerSecond, TimeSpan Elapsed, long TotalSteps, long Tokens = 0, long PeakRssBytes = 0)
{
    /// <summary>The auxiliary patch loss of the step (summed over accumulation like <see cref="Loss"/>), NaN when it is off.</summary>
    public double AuxLoss { get; init; } = double.NaN;
}

/// <summary>What a finished (or cancelled) run produced.</summary>
/// <param name="OutputDir">The output folder.</param>
/// <param name="ModelPath">The final model folder (loadable), or the checkpoint a cancelled run saved.</param>
/// <param name="Steps">Optimizer steps done.</param>
/// <param name="Log">Every step's log entry, from the start of the run (resumed runs include the earlier steps).</param>
/// <param name="SkippedRecords">Records skipped as broken, by id.</param>
public sealed record TrainingResult(string OutputDir, string ModelPath, long Steps, IReadOnlyList<TrainingStepLog> Log, IReadOnlyList<string> SkippedRecords);
