namespace ShareGPT4V.Generation;

/// <summary>
/// How to generate. Temperature 0 (the default) is greedy decoding, the reference evaluation protocol; a positive
/// temperature samples. <see cref="NumBeams"/> &gt; 1 runs beam search instead.
/// <para>
/// The scores are processed as transformers 4.45.2's <c>generate()</c> processes them, in its order: repetition
/// penalty, no-repeat n-gram (both also in greedy decoding and beam search), then, only when sampling, temperature,
/// top-k, top-p and min-p. With temperature 0 the sampling settings are ignored, as transformers ignores them with
/// <c>do_sample=False</c>. One difference of defaults: <see cref="TopK"/> is 0 (off) here, while transformers
/// samples with <c>top_k=50</c> unless told otherwise; set <c>TopK = 50</c> to sample exactly as <c>generate()</c>
/// does by default (LLaVA's evaluation settings, <c>temperature=0.2, top_p=None</c>, are
/// <c>Temperature = 0.2, TopK = 50</c>).
/// </para>
/// <para>
/// Which ids the repetition penalty and the n-gram blocking see depends on the checkpoint's layout, as in each
/// layout's reference: with a llava-hf checkpoint (transformers' <c>LlavaForConditionalGeneration.generate</c>) the
/// whole prompt — BOS, template text and the image token id repeated once per image feature — plus the ids generated
/// so far; with an original LLaVA / ShareGPT4V checkpoint (LLaVA's <c>generate(inputs_embeds=...)</c>, where the
/// processors get no prompt ids) only the ids generated so far. So a penalty applies to prompt words with a llava-hf
/// checkpoint and does not with an original one.
/// </para>
/// </summary>
public sealed record GenerationOptions
{
    /// <summary>Maximum number of tokens to generate.</summary>
    public int MaxNewTokens { get; init; } = 512;
    /// <summary>0 = greedy (or beam search, see <see cref="NumBeams"/>); otherwise the softmax temperature for sampling.</summary>
    public double Temperature { get; init; }
    /// <summary>Nucleus sampling: keep the smallest set of tokens whose probability reaches this mass (1 = off). Sampling only.</summary>
    public double TopP { get; init; } = 1.0;
    /// <summary>Keep only the k most likely tokens, ties at the k-th included (0 = off; transformers' default is 50). Sampling only.</summary>
    public int TopK { get; init; }
    /// <summary>
    /// Min-p sampling: drop the tokens whose probability is below this fraction of the most likely token's
    /// (null = off). Sampling only.
    /// </summary>
    public double? MinP { get; init; }
    /// <summary>
    /// transformers' repetition penalty (1 = off): every distinct id the processors see (see the remarks on which ids
    /// those are) has its score divided by this when positive, multiplied when negative; below 1 it rewards them.
    /// </summary>
    public double RepetitionPenalty { get; init; } = 1.0;
    /// <summary>Never generate an n-gram of this size that already occurs in the ids the processors see (0 = off).</summary>
    public int NoRepeatNGramSize { get; init; }
    /// <summary>
    /// Beam search with this many beams (1 = off), as transformers' <c>generate(num_beams=B, do_sample=False)</c>.
    /// Needs <see cref="Temperature"/> 0 and one prompt per request (no batch rows); a streamed answer arrives
    /// whole at the end, since the best beam is known only then.
    /// </summary>
    public int NumBeams { get; init; } = 1;
    /// <summary>
    /// Beam search: a finished hypothesis scores its summed log-probabilities divided by length^LengthPenalty
    /// (the end-of-sequence token counted); above 0 favours longer answers, below 0 shorter ones.
    /// </summary>
    public double LengthPenalty { get; init; } = 1.0;
    /// <summary>
    /// Beam search: stop as soon as <see cref="NumBeams"/> hypotheses have finished (true), or only once no running
    /// beam can beat the finished ones (false, the default, transformers' <c>early_stopping=False</c>).
    /// </summary>
    public bool EarlyStopping { get; init; }
    /// <summary>Seed for sampling; the same seed, prompt and options give the same output. Null = random.</summary>
    public int? Seed { get; init; }
    /// <summary>Strings that end generation; the text is cut before the first one.</summary>
    public IReadOnlyList<string> StopStrings { get; init; } = Array.Empty<string>();
    /// <summary>Stop at the end-of-sequence token (on by default; off reproduces fixed-length reference runs).</summary>
    public bool StopAtEndOfSequence { get; init; } = true;

    /// <summary>True when the next token is the most likely one (temperature 0), one beam or several.</summary>
    public bool IsGreedy => Temperature == 0;

    /// <summary>True for beam search (<see cref="NumBeams"/> &gt; 1).</summary>
    public bool IsBeamSearch => NumBeams > 1;

    /// <summary>Most beams accepted.</summary>
    public const int MaxBeams = 64;

    /// <summary>Checks ranges; throws <see cref="ArgumentOutOfRangeException"/> naming the option.</summary>
    public void Validate()
    {
        if (MaxNewTokens < 0) throw new ArgumentOutOfRangeException(nameof(MaxNewTokens), MaxNewTokens, "MaxNewTokens must be >= 0");
        if (!(Temperature >= 0) || double.IsInfinity(Temperature)) throw new ArgumentOutOfRangeException(nameof(Temperature), Temperature, "Temperature must be a finite number >= 0");
        if (!(TopP > 0 && TopP <= 1)) throw new ArgumentOutOfRangeException(nameof(TopP), TopP, "TopP must be in (0, 1]");
        if (TopK < 0) throw new ArgumentOutOfRangeException(nameof(TopK), TopK, "TopK must be >= 0");
        if (MinP is double minP && !(minP >= 0 && minP <= 1)) throw new ArgumentOutOfRangeException(nameof(MinP), minP, "MinP must be in [0, 1]");
        if (!(RepetitionPenalty > 0) || double.IsInfinity(RepetitionPenalty)) throw new ArgumentOutOfRangeException(nameof(RepetitionPenalty), RepetitionPenalty, "RepetitionPenalty must be a finite number > 0");
        if (NoRepeatNGramSize < 0) throw new ArgumentOutOfRangeException(nameof(NoRepeatNGramSize), NoRepeatNGramSize, "NoRepeatNGramSize must be >= 0");
        if (NumBeams < 1 || NumBeams > MaxBeams) throw new ArgumentOutOfRangeException(nameof(NumBeams), NumBeams, $"NumBeams must be in [1, {MaxBeams}]");
        if (NumBeams > 1 && Temperature != 0)
            throw new ArgumentOutOfRangeException(nameof(NumBeams), NumBeams, "NumBeams > 1 needs Temperature 0: beam search with sampling is not supported");
        if (double.IsNaN(LengthPenalty) || double.IsInfinity(LengthPenalty)) throw new ArgumentOutOfRangeException(nameof(LengthPenalty), LengthPenalty, "LengthPenalty must be a finite number");
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
    /// <summary>Decoding, resizing and normalising the images.</summary>
    public TimeSpan Preprocess { get; init; }
    /// <summary>Vision tower + projector.</summary>
    public TimeSpan Vision { get; init; }
    /// <summary>The language model's pass over the prompt.</summary>
    public TimeSpan Prefill { get; init; }
    /// <summary>Generating the answer after the first token.</summary>
    public TimeSpan Decode { get; init; }
    /// <summary>From the start of the request to the first generated token.</summary>
    public TimeSpan TimeToFirstToken { get; init; }
    /// <summary>The whole request.</summary>
    public TimeSpan Total { get; init; }
}

/// <summary>The outcome of one generation.</summary>
public sealed record GenerationResult
{
    /// <summary>The answer, stop string excluded.</summary>
    public required string Text { get; init; }
    /// <summary>Generated token ids (the EOS token, when it ended generation, is not included).</summary>
    public required IReadOnlyList<int> TokenIds { get; init; }
    /// <summary>Why generation ended.</summary>
    public required FinishReason FinishReason { get; init; }
    /// <summary>Positions the prompt took, image embeddings included.</summary>
    public required int PromptTokens { get; init; }
    /// <summary>How many tokens were generated.</summary>
    public int GeneratedTokens => TokenIds.Count;
    /// <summary>Where the time went.</summary>
    public required GenerationTimings Timings { get; init; }
    /// <summary>Decode speed in tokens per second (0 when fewer than two tokens were generated).</summary>
    public double TokensPerSecond => GeneratedTokens > 1 && Timings.Decode > TimeSpan.Zero ? (GeneratedTokens - 1) / Timings.Decode.TotalSeconds : 0;
}
