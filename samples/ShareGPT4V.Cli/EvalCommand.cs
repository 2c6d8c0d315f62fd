using System.Globalization;
using System.Text.Json.Nodes;
using ShareGPT4V.Evaluation;

namespace ShareGPT4V.Cli;

/// <summary><c>eval</c>: answer a benchmark's questions (run), join shards (merge), score answers (score).</summary>
internal static class EvalCommand
{
    public const string Help = """
        usage: sharegpt4v eval score --benchmark NAME --answers FILE --annotations PATH [--json]
               sharegpt4v eval run --benchmark NAME --model DIR --questions PATH --image-folder DIR --answers OUT [options]
               sharegpt4v eval merge --answers OUT --input FILE [--input FILE ...] [--questions PATH --benchmark NAME]
               sharegpt4v eval summary --report FILE [--report FILE ...] [--json]
               sharegpt4v eval judge --benchmark llava-bench|mm-vet --answers FILE --reviews OUT --endpoint URL [options]
               sharegpt4v eval submission --benchmark vqav2|vizwiz --answers FILE --questions SPLIT.jsonl --output FILE

        score     scores a LLaVA answer file exactly as the benchmark's official script does.
                  --annotations is the path the official script takes (a file or a folder; see docs/evaluation.md).
                  --json prints one JSON object with the metrics (and 'skipped'/'issues' when lines were left out).
                  --report FILE also writes the JSON report to FILE (for 'summary').
        run       writes the answer file the reference runner would (prompt, preprocessing, greedy decoding).
                  See 'sharegpt4v eval run --help'.
        merge     concatenates shard answer files in order (in question order when --questions is given),
                  dropping repeated ids.
        summary   the paper's table (Markdown, or JSON with --json) from score reports.
        judge     has a judge model review the answers of LLaVA-Bench (reviews jsonl, as eval_gpt_review_bench.py)
                  or grade MM-Vet (grade json, as the MM-Vet grader); then 'score' the reviews / grades.
                  --endpoint URL         OpenAI-compatible endpoint (e.g. https://host/v1)
                  --judge-model NAME     default: gpt-4-0314 (LLaVA-Bench) / gpt-4-0613 (MM-Vet)
                  --api-key-env VAR      environment variable holding the key (default OPENAI_API_KEY)
                  --questions FILE       LLaVA-Bench questions.jsonl, or MM-Vet's mm-vet.json
                  --context FILE         LLaVA-Bench context.jsonl (image captions)
                  --reference FILE       LLaVA-Bench reference answers (answers_gpt4.jsonl)
                  --runs N               MM-Vet grading runs (default 1; the paper used 5)
        submission  writes the EvalAI upload file for VQAv2 / VizWiz (answers normalised as EvalAI's processor).

        benchmarks (score): pope, sqa, textvqa, mme, seed, gqa, mmbench, mmbench-cn, qbench, vqav2, vizwiz
                            (VQA accuracy with val annotations), llava-bench (--answers = reviews; no
                            --annotations), mm-vet (--answers = grades, --annotations = mm-vet.json)
        """;

    public static async Task<int> RunAsync(IReadOnlyList<string> args, CancellationToken ct)
    {
        if (args.Count == 0) throw new UsageException("eval needs a sub-command: score, run, merge, summary, judge or submission");
        var rest = args.Skip(1).ToList();
        return args[0] switch
        {
            "score" => Score(rest),
            "run" => await EvalRunCommand.RunAsync(rest, ct),
            "merge" => Merge(rest),
            "summary" => Summary(rest),
            "judge" => await EvalJudgeCommand.RunAsync(rest, ct),
            "submission" => Submission(rest),
            _ => throw new UsageException($"Unknown eval sub-command '{args[0]}' (score, run, merge, summary, judge, submission)"),
        };
    }

    internal static IBenchmark Benchmark(CommandLine cl)
    {
        var name = cl.Required("benchmark");
        try { return Benchmarks.Get(name); }
        catch (ArgumentException e) { throw new UsageException(e.Message); }
    }

    private static int Score(IReadOnlyList<string> args)
    {
        var cl = CommandLine.Parse("eval score", args, new[] { "benchmark", "answers", "annotations", "report" }, new[] { "json" });
        var benchmark = Benchmark(cl);
        var answers = cl.Required("answers");
        var annotations = benchmark is ShareGPT4V.Evaluation.Judging.LlavaBenchJudge ? cl.Value("annotations") ?? "" : cl.Required("annotations");
        if (!benchmark.CanScoreLocally) throw new UsageException($"'{benchmark.Name}' is not scored locally (see docs/evaluation.md)");
        var report = benchmark.Score(answers, annotations);
        foreach (var issue in report.Issues.Take(20))
            Console.Error.WriteLine($"warning: {issue.Message}" + (issue.File is null ? "" : $" ({issue.File}{(issue.Line is { } l ? $", line {l}" : "")})"));
        if (report.Issues.Count > 20) Console.Error.WriteLine($"warning: ... and {report.Issues.Count - 20} more issue(s)");
        if (report.SkippedLines > 0) Console.Error.WriteLine($"{report.SkippedLines} answer line(s) skipped");
        if (cl.Value("report") is { } reportPath) EvaluationSummary.WriteReport(report, reportPath);
        if (cl.Flag("json")) Console.WriteLine(report.ToJson(indented: false));
        else
        {
            Console.WriteLine($"{benchmark.Name} ({benchmark.Title})");
            foreach (var (name, value) in Flatten(report.Metrics, ""))
                Console.WriteLine($"  {name}: {value}");
            if (report.Headline is { } h) Console.WriteLine($"headline {benchmark.Title}: {h.ToString("F2", CultureInfo.InvariantCulture)}");
        }
        return 0;
    }

    private static IEnumerable<(string, string)> Flatten(JsonObject o, string prefix)
    {
        foreach (var (k, v) in o)
        {
            if (v is JsonObject child) foreach (var x in Flatten(child, prefix + k + ".")) yield return x;
            else yield return (prefix + k, v?.ToJsonString() ?? "null");
        }
    }

    private static int Merge(IReadOnlyList<string> args)
    {
        var cl = CommandLine.Parse("eval merge", args, new[] { "answers", "input", "questions", "benchmark" }, Array.Empty<string>());
        var output = cl.Required("answers");
        var inputs = cl.All("input");
        if (inputs.Count == 0) throw new UsageException("--input is required (one per shard answer file)");
        IReadOnlyList<EvalQuestion>? order = null;
        if (cl.Value("questions") is { } q)
        {
            var benchmark = Benchmark(cl);
            order = QuestionFile.Read(q, benchmark.RunSettings);
        }
        var result = AnswerMerge.Merge(inputs, output, order);
        Console.Error.WriteLine($"merged {result.Written} answer(s) from {inputs.Count} file(s) into {output}" +
            (result.Duplicates > 0 ? $"; {result.Duplicates} repeated id(s) dropped" : "") +
            (result.Missing > 0 ? $"; {result.Missing} question(s) not answered yet" : ""));
        return 0;
    }

    private static int Submission(IReadOnlyList<string> args)
    {
        var cl = CommandLine.Parse("eval submission", args, new[] { "benchmark", "answers", "questions", "output" }, Array.Empty<string>());
        if (Benchmark(cl) is not ShareGPT4V.Evaluation.Scorers.VqaBenchmark vqa) throw new UsageException("submission is for vqav2 and vizwiz");
        var (written, unanswered, bad) = vqa.WriteSubmission(cl.Required("answers"), cl.Required("questions"), cl.Required("output"));
        Console.Error.WriteLine($"wrote {written} answer(s) to {cl.Required("output")}" + (unanswered > 0 ? $"; {unanswered} unanswered (empty)" : "") + (bad > 0 ? $"; {bad} unreadable answer line(s) skipped" : ""));
        return 0;
    }

    private static int Summary(IReadOnlyList<string> args)
    {
        var cl = CommandLine.Parse("eval summary", args, new[] { "report" }, new[] { "json" });
        var reports = cl.All("report");
        if (reports.Count == 0) throw new UsageException("--report is required (repeatable)");
        var table = EvaluationSummary.FromReports(reports.Select(EvaluationSummary.ReadReport));
        Console.WriteLine(cl.Flag("json") ? table.ToJson() : table.ToMarkdown());
        return 0;
    }
}
