using System.Globalization;
using ShareGPT4V.Evaluation;
using ShareGPT4V.Generation;
using ShareGPT4V.Preprocessing;

namespace ShareGPT4V.Cli;

/// <summary><c>eval run</c>: answers a benchmark's questions as the reference runner does, resumable and shardable.</summary>
internal static class EvalRunCommand
{
    public static VerbSpec Verb => new("run", "answer a benchmark's questions as the reference runner does (resumable, shardable)")
    {
        Details = """
        usage: sharegpt4v eval run --benchmark NAME --model DIR --questions PATH --image-folder DIR --answers OUT [options]

        Writes LLaVA's answer file (question_id, prompt, text, answer_id, model_id, metadata) with the reference
        runner's prompt construction, preprocessing (pad or resize + crop) and greedy decoding. An existing answer
        file is continued: questions already answered are skipped (a line cut off by a crash is dropped).

        Without --template the prompts use vicuna_v1 (llava_v1 for qbench), as the reference scripts do; without
        --max-new-tokens the reference runner's limit (128 for the loader benchmarks, else 1024). Progress and ETA
        go to standard error.
        """,
        Options =
        [
            new("benchmark", "NAME", "pope, sqa, textvqa, mme, seed, gqa, mmbench, mmbench-cn, vqav2, vizwiz, qbench, llava-bench, mm-vet"),
            new("questions", "PATH", "the reference question file (llava_*.jsonl, llava_test_CQM-A.json, the MMBench TSV, llvisionqa_dev.json, ...)"),
            new("image-folder", "DIR", "folder the question file's image names are relative to (not used by MMBench)"),
            new("answers", "OUT", "answer file to write or continue"),
            new("shard", "i/N", "answer only part i (0-based) of N, cut as LLaVA's --chunk-idx/--num-chunks; default: JOB_COMPLETION_INDEX/JOB_COMPLETIONS when set (Kubernetes Indexed Job), else all"),
            new("batch-size", "N", "questions generated together (default 8)"),
            new("model-id", "NAME", "the answers' model_id (default: the model folder's name, as LLaVA)"),
            new("preprocess", "MODE", "pad or resize: override the benchmark's reference preprocessing"),
            OptionSpec.Flag("skip-missing-images", "skip (and count) questions whose image is missing instead of refusing to start"),
            .. Shared.ModelOptions,
            .. Shared.GenerationOptionSpecs,
        ],
        Run = RunAsync,
    };

    public static async Task<int> RunAsync(CommandLine cl, CancellationToken ct)
    {
        var benchmark = EvalCommand.Benchmark(cl);
        var settings = benchmark.RunSettings;
        var questionsPath = cl.Required("questions");
        var answers = cl.Required("answers");
        var imageFolder = settings.Style == PromptStyle.MmBench ? cl.Value("image-folder") : cl.Required("image-folder");
        Shard shard;
        try { shard = cl.Value("shard") is { } s ? Shard.Parse(s) : Shard.FromEnvironment() ?? Shard.All; }
        catch (FormatException e) { throw new UsageException(e.Message); }
        var aspect = cl.Value("preprocess") switch
        {
            null => settings.Preprocessing,
            "pad" => ImageAspectMode.Pad,
            "resize" => ImageAspectMode.Resize,
            var other => throw new UsageException($"--preprocess must be pad or resize, got '{other}'"),
        };
        var generation = Shared.Generation(cl);
        if (cl.Value("max-new-tokens") is null) generation = generation with { MaxNewTokens = settings.MaxNewTokens };
        int batchSize = cl.Int("batch-size", 1, 256) ?? 8;
        var questions = QuestionFile.Read(questionsPath, settings, imageFolder);
        var modelId = cl.Value("model-id") ?? EvaluationRunner.ModelIdFromPath(cl.Required("model"));

        using var pipeline = Shared.Load(cl, generation, batchSize, aspect);
        var bar = new ConsoleProgress($"{benchmark.Name} {shard}");
        var options = new EvalRunOptions
        {
            Shard = shard,
            BatchSize = batchSize,
            ModelId = modelId,
            Template = cl.Value("template"),
            Generation = generation,
            SkipMissingImages = cl.Flag("skip-missing-images"),
        };
        var result = await EvaluationRunner.RunAsync(pipeline, benchmark, questions, answers, options,
            new SyncProgress<EvalRunProgress>(p => bar.Report(p.Done, p.Total,
                $"{p.Done}/{p.Total}" + (p.Eta is { } eta ? $" ETA {eta.ToString(@"hh\:mm\:ss", CultureInfo.InvariantCulture)}" : ""))), ct);
        bar.Done();
        foreach (var m in result.Skipped.Take(10)) Console.Error.WriteLine($"skipped: {m}");
        Console.Error.WriteLine($"{result.Answered} answered, {result.AlreadyAnswered} already in {answers}" +
            (result.SkippedMissingImages > 0 ? $", {result.SkippedMissingImages} skipped (missing image)" : "") +
            $" ({result.Questions} questions in shard {shard})");
        return 0;
    }
}
