using Microsoft.Extensions.Options;
using ShareGPT4V.Generation;

namespace ShareGPT4V.Hosting;

/// <summary>
/// Options for <see cref="ServiceCollectionExtensions.AddShareGPT4V(Microsoft.Extensions.DependencyInjection.IServiceCollection, Action{ShareGPT4VOptions})"/>,
/// settable so they bind from configuration (e.g. an appsettings section).
/// </summary>
public sealed class ShareGPT4VOptions
{
    public string ModelPath { get; set; } = "";
    public string? VisionTowerPath { get; set; }
    /// <summary><c>cpu</c>, <c>cuda:N</c>, <c>cuda</c> or <c>auto</c>; CUDA needs <c>services.AddShareGPT4VCuda()</c>.</summary>
    public string Device { get; set; } = "cpu";
    /// <summary><c>auto</c> (the device's policy), <c>float32</c>, <c>bfloat16</c> or <c>float16</c>.</summary>
    public string DType { get; set; } = "auto";
    /// <summary>Run on the CPU (logged) when CUDA was asked for but cannot be used; otherwise the load fails.</summary>
    public bool AllowCpuFallback { get; set; }
    public string? Template { get; set; }
    public int MaxNewTokens { get; set; } = 512;
    public double Temperature { get; set; }
    public double TopP { get; set; } = 1.0;
    public int TopK { get; set; }
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
    public int? ContextLength { get; set; }
    public int MaxBatchSize { get; set; } = 8;
    public int MaxQueueLength { get; set; } = 64;
    public int? Threads { get; set; }
    public PromptOverflow Overflow { get; set; } = PromptOverflow.Refuse;

    public PipelineOptions ToPipelineOptions() => new()
    {
        ModelPath = ModelPath,
        VisionTowerPath = VisionTowerPath,
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
    public ValidateOptionsResult Validate(string? name, ShareGPT4VOptions options)
    {
        try
        {
            options.ToPipelineOptions().Validate();
            if (!Directory.Exists(options.ModelPath))
                return ValidateOptionsResult.Fail($"ShareGPT4V: ModelPath '{options.ModelPath}' does not exist");
            if (options.VisionTowerPath is { } t && !Directory.Exists(t))
                return ValidateOptionsResult.Fail($"ShareGPT4V: VisionTowerPath '{t}' does not exist");
            return ValidateOptionsResult.Success;
        }
        catch (ShareGPT4VException e)
        {
            return ValidateOptionsResult.Fail("ShareGPT4V: " + e.Message);
        }
    }
}
