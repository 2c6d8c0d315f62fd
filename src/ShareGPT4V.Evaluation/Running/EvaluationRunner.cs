using System.Diagnostics;
using ShareGPT4V.Conversation;
using ShareGPT4V.Generation;

namespace ShareGPT4V.Evaluation;

/// <summary>Options of an evaluation run.</summary>
public sealed record EvalRunOptions
{
    /// <summary>The part of the questions this run answers.</summary>
    public Shard Shard { get; init; } = Shard.All;
    /// <summary>Questions generated together (the pipeline's <see cref="PipelineOptions.MaxBatchSize"/> caps it).</summary>
    public int BatchSize { get; init; } = 8;
    /// <summary>The answer lines' <c>model_id</c>.</summary>
    public string ModelId { get; init; } = "model";
    /// <summary>Conversation template the prompts are rendered with; null = the benchmark's reference choice (vicuna_v1; llava_v1 for Q-Bench).</summary>
    public string? Template { get; init; }
    /// <summary>Generation options; null = greedy with the reference runner's <c>max_new_tokens</c>.</summary>
    public GenerationOptions? Generation { get; init; }
    /// <summary>Skip (and count) questions whose image file is missing instead of refusing to start.</summary>
    public bool SkipMissingImages { get; init; }

    /// <summary>Checks the values.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A value is out of range.</exception>
    public void Validate()
    {
        if (BatchSize < 1) throw new ArgumentOutOfRangeException(nameof(BatchSize), BatchSize, "must be at least 1");
        if (string.IsNullOrWhiteSpace(ModelId)) throw new ArgumentOutOfRangeException(nameof(ModelId), ModelId, "must not be empty");
    }
}

/// <summary>Progress of a run: questions of this shard done (including those answered before a resume), of the total.</summary>
/// <param name="Done">Questions with an answer.</param>
/// <param name="Total">Questions of the shard (skipped ones excluded).</param>
/// <param name="AnsweredThisRun">Answers written by this run.</param>
/// <param name="Elapsed">Time since the run started.</param>
public sealed record EvalRunProgress(int Done, int Total, int AnsweredThisRun, TimeSpan Elapsed)
{
    /// <summary>Estimated time left, from this run's pace (null before the first answers).</summary>
    public TimeSpan? Eta => AnsweredThisRun == 0 ? null : TimeSpan.FromSeconds(Elapsed.TotalSeconds / AnsweredThisRun * (Total - Done));
}

/// <summary>What a run did.</summary>
/// <param name="Questions">Questions in this shard.</param>
/// <param name="AlreadyAnswered">Found in the answer file when the run started (resume).</param>
/// <param name="Answered">Answered by this run.</param>
/// <param name="SkippedMissingImages">Skipped because their image is missing (with <see cref="EvalRunOptions.SkipMissingImages"/>).</param>
/// <param name="Skipped">One message per skipped question, naming its source line.</param>
public sealed record EvalRunResult(int Questions, int AlreadyAnswered, int Answered, int SkippedMissingImages, IReadOnlyList<string> Skipped);

/// <summary>
/// Answers a benchmark's questions with a <see cref="MultimodalPipeline"/> the way the reference runner does
/// (prompt, greedy decoding, stripped output), writing LLaVA's answer-file format; resumable and shardable.
/// </summary>
public static class EvaluationRunner
{
    /// <summary>The template the reference scripts run a benchmark with.</summary>
    public static string DefaultTemplate(BenchmarkRunSettings settings) => settings.Style == PromptStyle.QBench ? "llava_v1" : "vicuna_v1";

    /// <summary>The full prompt text of a question (system message, roles, image marker), as the reference renders it.</summary>
    public static string RenderPrompt(EvalQuestion question, ConversationTemplate template) => PromptBuilder.Render(template, question.Query);

    /// <summary>Runs the questions of the shard that have no answer in <paramref name="answersPath"/> yet.</summary>
    /// <exception cref="EvaluationDataException">Images are missing (without <see cref="EvalRunOptions.SkipMissingImages"/>), or the answer file is corrupt.</exception>
    public static async Task<EvalRunResult> RunAsync(MultimodalPipeline pipeline, IBenchmark benchmark, IReadOnlyList<EvalQuestion> questions,
        string answersPath, EvalRunOptions options, IProgress<EvalRunProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(pipeline);
        options.Validate();
        var settings = benchmark.RunSettings;
        var template = ConversationTemplates.Get(options.Template ?? DefaultTemplate(settings));
        var generation = options.Generation ?? new GenerationOptions { Temperature = 0, MaxNewTokens = settings.MaxNewTokens };
        var mine = options.Shard.Slice(questions);

        var skipped = new List<string>();
        var runnable = new List<EvalQuestion>();
        foreach (var q in mine)
        {
            if (q.ImagePath is not null && !File.Exists(q.ImagePath)) skipped.Add($"image '{q.ImagePath}' of question {q.Id} ({q.Source}) does not exist");
            else runnable.Add(q);
        }
        if (skipped.Count > 0 && !options.SkipMissingImages)
            throw new EvaluationDataException($"{skipped.Count} question(s) have no image file, e.g. {skipped[0]}" +
                " (pass the right image folder, or skip them and have them counted)", answersPath);

        using var writer = new AnswerFileWriter(answersPath);
        var pending = runnable.Where(q => !writer.IsAnswered(q)).ToList();
        int already = runnable.Count - pending.Count;
        int answered = 0;
        var clock = Stopwatch.StartNew();
        progress?.Report(new EvalRunProgress(already, runnable.Count, 0, clock.Elapsed));
        int batch = Math.Max(1, Math.Min(options.BatchSize, pipeline.Options.MaxBatchSize));
        foreach (var chunk in pending.Chunk(batch))
        {
            cancellationToken.ThrowIfCancellationRequested();
            IReadOnlyList<GenerationResult> results;
            try
            {
                results = await Generate(pipeline, chunk, template, generation, cancellationToken).ConfigureAwait(false);
            }
            catch (ShareGPT4VException) when (chunk.Length > 1)
            {
                // One bad image fails its whole batch: run the batch one by one to name the question at fault.
                var single = new List<GenerationResult>();
                foreach (var q in chunk) single.Add((await Generate(pipeline, new[] { q }, template, generation, cancellationToken).ConfigureAwait(false))[0]);
                results = single;
            }
            writer.Append(chunk.Select((q, i) => (q, AnswerFileWriter.FormatLine(q, PythonText.Strip(results[i].Text), options.ModelId))));
            answered += chunk.Length;
            progress?.Report(new EvalRunProgress(already + answered, runnable.Count, answered, clock.Elapsed));
        }
        return new EvalRunResult(mine.Count, already, answered, skipped.Count, skipped);
    }

    private static async Task<IReadOnlyList<GenerationResult>> Generate(MultimodalPipeline pipeline, IReadOnlyList<EvalQuestion> questions,
        ConversationTemplate template, GenerationOptions generation, CancellationToken ct)
    {
        try
        {
            var requests = questions.Select(q => new PromptRequest(RenderPrompt(q, template), Images(q))).ToList();
            return await pipeline.GenerateBatchAsync(requests, generation, null, ct).ConfigureAwait(false);
        }
        catch (ShareGPT4VException e) when (e is not EvaluationDataException && questions.Count == 1)
        {
            throw new EvaluationDataException($"Question {questions[0].Id} ({questions[0].Source}) failed: {e.Message}", null, null, e);
        }
    }

    private static IReadOnlyList<ImageInput> Images(EvalQuestion q) =>
        q.ImageBytes is { } bytes ? new[] { ImageInput.FromBytes(bytes, q.Source) }
        : q.ImagePath is { } path ? new[] { ImageInput.FromFile(path) }
        : Array.Empty<ImageInput>();

    /// <summary>LLaVA's <c>get_model_name_from_path</c>: the folder name, or "parent_checkpoint-N" for a checkpoint folder.</summary>
    public static string ModelIdFromPath(string modelPath)
    {
        var parts = modelPath.Trim('/', '\\').Split('/', '\\');
        var last = parts[^1];
        return last.StartsWith("checkpoint-", StringComparison.Ordinal) && parts.Length > 1 ? parts[^2] + "_" + last : last;
    }
}
