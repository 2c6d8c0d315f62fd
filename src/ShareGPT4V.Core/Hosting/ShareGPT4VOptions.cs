using Microsoft.Extensions.Options;
using ShareGPT4V.Generation;
using ShareGPT4V.Hub;

namespace ShareGPT4V.Hosting;

/// <summary>
/// Options for <see cref="ServiceCollectionExtensions.AddShareGPT4V(Microsoft.Extensions.DependencyInjection.IServiceCollection, Action{ShareGPT4VOptions})"/>,
/// settable so they bind from configuration (e.g. an appsettings section).
/// </summary>
public sealed class ShareGPT4VOptions
{
    /// <summary>Model folder, or a hub id such as <c>Lin-Chen/ShareGPT4V-7B</c> (fetched into the hub cache at start).</summary>
    public string ModelPath { get; set; } = "";
    /// <summary>CLIP tower folder or hub id, when <c>mm_vision_tower</c> cannot be found or fetched.</summary>
    public string? VisionTowerPath { get; set; }
    /// <summary>Hub branch, tag or commit for a hub id (default main); the other hub settings come from HF_* variables.</summary>
    public string? Revision { get; set; }
    /// <summary>The mmproj GGUF (CLIP tower and projector) when <see cref="ModelPath"/> is an LLM GGUF file.</summary>
    public string? MmprojPath { get; set; }
    /// <summary><c>cpu</c>, <c>cuda:N</c>, <c>cuda</c> or <c>auto</c>; CUDA needs <c>services.AddShareGPT4VCuda()</c>.</summary>
    public string Device { get; set; } = "cpu";
    /// <summary><c>auto</c> (the device's policy), <c>float32</c>, <c>bfloat16</c>, <c>float16</c>, or <c>q8_0</c> / <c>q4_0</c> (CPU, quantized at load).</summary>
    public string DType { get; set; } = "auto";
    /// <summary>Run on the CPU (logged) when CUDA was asked for but cannot be used; otherwise the load fails.</summary>
    public bool AllowCpuFallback { get; set; }
    /// <summary>Conversation template name (see <see cref="PipelineOptions.Template"/>); null = the checkpoint's own.</summary>
    public string? Template { get; set; }
    /// <summary>See <see cref="GenerationOptions.MaxNewTokens"/>.</summary>
    public int MaxNewTokens { get; set; } = 512;
    /// <summary>See <see cref="GenerationOptions.Temperature"/>.</summary>
    public double Temperature { get; set; }
    /// <summary>See <see cref="GenerationOptions.TopP"/>.</summary>
    public double TopP { get; set; } = 1.0;
    /// <summary>See <see cref="GenerationOptions.TopK"/>.</summary>
    public int TopK { get; set; }
    /// <summary>See <see cref="GenerationOptions.RepetitionPenalty"/>.</summary>
    public double RepetitionPenalty { get; set; } = 1.0;
    /// <summary>See <see cref="GenerationOptions.MinP"/>.</summary>
    public double? MinP { get; set; }
    /// <summary>See <see cref="GenerationOptions.NoRepeatNGramSize"/>.</summary>
    public int NoRepeatNGramSize { get; set; }
    /// <summary>See <see cref="GenerationOptions.NumBeams"/>.</summary>
    public int NumBeams { get; set; } = 1;
    /// <summary>See <see cref="GenerationOptions.LengthPenalty"/>.</summary>
    public double LengthPenalty { get; set; } = 1.0;
    /// <summary>See <see cref="GenerationOptions.EarlyStopping"/>.</summary>
    public bool EarlyStopping { get; set; }
    /// <summary>See <see cref="PipelineOptions.ContextLength"/>.</summary>
    public int? ContextLength { get; set; }
    /// <summary>See <see cref="PipelineOptions.MaxBatchSize"/>.</summary>
    public int MaxBatchSize { get; set; } = 8;
    /// <summary>See <see cref="PipelineOptions.MaxQueueLength"/>.</summary>
    public int MaxQueueLength { get; set; } = 64;
    /// <summary>See <see cref="PipelineOptions.Threads"/>.</summary>
    public int? Threads { get; set; }
    /// <summary>See <see cref="PipelineOptions.Overflow"/>.</summary>
    public PromptOverflow Overflow { get; set; } = PromptOverflow.Refuse;

    /// <summary>The pipeline options these settings stand for.</summary>
    public PipelineOptions ToPipelineOptions() => new()
    {
        ModelPath = ModelPath,
        VisionTowerPath = VisionTowerPath,
        Hub = Revision is null ? null : new HubOptions { Revision = Revision },
        MmprojPath = MmprojPath,
        Device = Device,
        DType = DType,
        AllowCpuFallback = AllowCpuFallback,
        Template = Template,
        ContextLength = ContextLength,
        MaxBatchSize = MaxBatchSize,
        MaxQueueLength = MaxQueueLength,
        Threads = Threads,
        Overflow = Overflow,
        Generation = new GenerationOptions
        {
            MaxNewTokens = MaxNewTokens, Temperature = Temperature, TopP = TopP, TopK = TopK, RepetitionPenalty = RepetitionPenalty,
            MinP = MinP, NoRepeatNGramSize = NoRepeatNGramSize, NumBeams = NumBeams, LengthPenalty = LengthPenalty, EarlyStopping = EarlyStopping,
        },
    };
}

/// <summary>Validates <see cref="ShareGPT4VOptions"/> at start-up, with messages naming the option.</summary>
public sealed class ShareGPT4VOptionsValidator : IValidateOptions<ShareGPT4VOptions>
{
    /// <inheritdoc />
    public ValidateOptionsResult Validate(string? name, ShareGPT4VOptions options)
    {
        try
        {
            options.ToPipelineOptions().Validate();
            if (options.MmprojPath is { } mm)
            {
                if (!File.Exists(options.ModelPath)) return ValidateOptionsResult.Fail($"ShareGPT4V: ModelPath '{options.ModelPath}' does not exist");
                if (!File.Exists(mm)) return ValidateOptionsResult.Fail($"ShareGPT4V: MmprojPath '{mm}' does not exist");
                return ValidateOptionsResult.Success;
            }
            // A hub id (owner/name) that is not a folder is fetched at load.
            if (!Directory.Exists(options.ModelPath) && !HuggingFaceHub.IsRepoId(options.ModelPath))
                return ValidateOptionsResult.Fail($"ShareGPT4V: ModelPath '{options.ModelPath}' is neither a folder nor a hub id (owner/name)");
            if (options.VisionTowerPath is { } t && !Directory.Exists(t) && !HuggingFaceHub.IsRepoId(t))
                return ValidateOptionsResult.Fail($"ShareGPT4V: VisionTowerPath '{t}' is neither a folder nor a hub id (owner/name)");
            return ValidateOptionsResult.Success;
        }
        catch (ShareGPT4VException e)
        {
            return ValidateOptionsResult.Fail("ShareGPT4V: " + e.Message);
        }
    }
}
