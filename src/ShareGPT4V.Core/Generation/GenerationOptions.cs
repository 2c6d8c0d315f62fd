namespace ShareGPT4V.Generation;

/// <summary>
/// How to generate. Temperature 0 (the default) is greedy decoding, the reference evaluation protocol; a positive
/// temperature samples, with optional top-k / top-p filtering, applied in transformers' order
/// (repetition penalty → temperature → top-k → top-p).
/// </summary>
public sealed record GenerationOptions
{
    /// <summary>Maximum number of tokens to generate.</summary>
    public int MaxNewTokens { get; init; } = 512;
    /// <summary>0 = greedy; otherwise the softmax temperature for sampling.</summary>
    public double Temperature { get; init; }
    /// <summary>Nucleus sampling: keep the smallest set of tokens whose probability reaches this mass (1 = off).</summary>
    public double TopP { get; init; } = 1.0;
    /// <summary>Keep only the k most likely tokens (0 = off).</summary>
    public int TopK { get; init; }
    /// <summary>Penalty for tokens already in the prompt or output (1 = off), as transformers' repetition penalty.</summary>
    public double RepetitionPenalty { get; init; } = 1.0;
    /// <summary>Seed for sampling; the same seed, prompt and options give the same output. Null = random.</summary>
    public int? Seed { get; init; }
    /// <summary>Strings that end generation; the text is cut before the first one.</summary>
    public IReadOnlyList<string> StopStrings { get; init; } = Array.Empty<string>();
    /// <summary>Stop at the end-of-sequence token (on by default; off reproduces fixed-length reference runs).</summary>
    public bool StopAtEndOfSequence { get; init; } = true;

    public bool IsGreedy => Temperature == 0;

    /// <summary>Checks ranges; throws <see cref="ArgumentOutOfRangeException"/> naming the option.</summary>
    public void Validate()
    {
        if (MaxNewTokens < 0) throw new ArgumentOutOfRangeException(nameof(MaxNewTokens), MaxNewTokens, "MaxNewTokens must be >= 0");
        if (!(Temperature >= 0) || double.IsInfinity(Temperature)) throw new ArgumentOutOfRangeException(nameof(Temperature), Temperature, "Temperature must be a finite number >= 0");
        if (!(TopP > 0 && TopP <= 1)) throw new ArgumentOutOfRangeException(nameof(TopP), TopP, "TopP must be in (0, 1]");
        if (TopK < 0) throw new ArgumentOutOfRangeException(nameof(TopK), TopK, "TopK must be >= 0");
        if (!(RepetitionPenalty > 0) || double.IsInfinity(RepetitionPenalty)) throw new ArgumentOutOfRangeException(nameof(RepetitionPenalty), RepetitionPenalty, "RepetitionPenalty must be a finite number > 0");
        if (StopStrings.Any(string.IsNullOrEmpty)) throw new ArgumentOutOfRangeException(nameof(StopStrings), "Stop strings must not be empty");
    }
}

/// <summary>Why generation ended.</summary>
public enum FinishReason
{
    /// <summary>The end-of-sequence token was generated.</summary>
    EndOfSequence,
    /// <summary>A stop string was produced.</summary>
    StopString,
    /// <summary><see cref="GenerationOptions.MaxNewTokens"/> was reached.</summary>
    Length,
    /// <summary>The context window is full.</summary>
    ContextFull,
}

/// <summary>Wall-clock costs of one request.</summary>
public sealed record GenerationTimings
{
    public TimeSpan Preprocess { get; init; }
    /// <summary>Vision tower + projector.</summary>
    public TimeSpan Vision { get; init; }
    public TimeSpan Prefill { get; init; }
    public TimeSpan Decode { get; init; }
    /// <summary>From the start of the request to the first generated token.</summary>
    public TimeSpan TimeToFirstToken { get; init; }
    public TimeSpan Total { get; init; }
}

/// <summary>The outcome of one generation.</summary>
public sealed record GenerationResult
{
    public required string Text { get; init; }
    /// <summary>Generated token ids (the EOS token, when it ended generation, is not included).</summary>
    public required IReadOnlyList<int> TokenIds { get; init; }
    public required FinishReason FinishReason { get; init; }
    public required int PromptTokens { get; init; }
    public int GeneratedTokens => TokenIds.Count;
    public required GenerationTimings Timings { get; init; }
    /// <summary>Decode speed in tokens per second (0 when fewer than two tokens were generated).</summary>
    public double TokensPerSecond => GeneratedTokens > 1 && Timings.Decode > TimeSpan.Zero ? (GeneratedTokens - 1) / Timings.Decode.TotalSeconds : 0;
}
