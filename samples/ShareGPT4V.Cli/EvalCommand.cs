using System.Globalization;
using System.Text.Json.Nodes;
using ShareGPT4V.Evaluation;

namespace ShareGPT4V.Cli;

/// <summary><c>eval</c>: answer a benchmark's questions (run), join shards (merge), score answers (score).</summary>
internal static class EvalCommand
{
    private static string BenchmarkNames => string.Join(", ", Benchmarks.Names);

    public static VerbSpec Verb => new("eval", "run a benchmark (reference prompts), merge shards, score answers exactly as the official scripts")
    {
        Details = """
        Runs a benchmark with the reference prompts (run), joins shards (merge), scores answers exactly as the official
        scripts (score), has a judge model review open-ended answers (judge), writes the paper's table (summary) and the
        EvalAI upload file (submission). See docs/evaluation.md.

        benchmarks (score): pope, sqa, textvqa, mme, seed, gqa, mmbench, mmbench-cn, qbench, vqav2, vizwiz
                            (VQA accuracy with val annotations), llava-bench (--answers = reviews; no
                            --annotations), mm-vet (--answers = grades, --annotations = mm-vet.json)
        """,
        Verbs =
        [
            new("score", "score a LLaVA answer file exactly as the benchmark's official script does")
            {
                Options =
                [
                    Benchmark("the benchmark: " + BenchmarkNames),
                    new("answers", "FILE", "the answer file (llava-bench: the reviews; mm-vet: the grades) (required)"),
                    new("annotations", "PATH", "the path the official script takes (a file or a folder; see docs/evaluation.md)"),
                    new("report", "FILE", "also write the JSON report to FILE (for 'summary')"),
                    OptionSpec.Flag("json", "print one JSON object with the metrics (and 'skipped' / 'issues' when lines were left out)"),
                ],
                Run = (cl, _) => Task.FromResult(Score(cl)),
            },
            EvalRunCommand.Verb,
            new("merge", "concatenate shard answer files in order (in question order when --questions is given), dropping repeated ids")
            {
                Options =
                [
                    new("answers", "OUT", "the merged answer file (required)"),
                    new("input", "FILE", "a shard's answer file (repeatable, required)", Repeatable: true),
                    new("questions", "PATH", "the question file, to write the answers in question order (needs --benchmark)"),
                    Benchmark("the benchmark the question file belongs to"),
                ],
                Run = (cl, _) => Task.FromResult(Merge(cl)),
            },
            new("summary", "the paper's table (Markdown, or JSON with --json) from score reports")
            {
                Options =
                [
                    new("report", "FILE", "a report written by 'eval score --report' (repeatable, required)", Repeatable: true),
                    OptionSpec.Flag("json", "print JSON instead of Markdown"),
                ],
                Run = (cl, _) => Task.FromResult(Summary(cl)),
            },
            new("judge", "have a judge model review LLaVA-Bench answers or grade MM-Vet answers")
            {
                Details = """
                    Has a judge model review the answers of LLaVA-Bench (reviews jsonl, as eval_gpt_review_bench.py) or grade
                    MM-Vet (grade json, as the MM-Vet grader); then 'score' the reviews / grades.
                    """,
                Options =
                [
                    Benchmark("llava-bench or mm-vet"),
                    new("answers", "FILE", "the answer file to review (required)"),
                    new("reviews", "OUT", "where the reviews (LLaVA-Bench) or grades (MM-Vet) go (required)"),
                    new("endpoint", "URL", "OpenAI-compatible endpoint (e.g. https://host/v1) (required)"),
                    new("judge-model", "NAME", "default: gpt-4-0314 (LLaVA-Bench) / gpt-4-0613 (MM-Vet)"),
                    new("api-key-env", "VAR", "environment variable holding the key (default OPENAI_API_KEY)"),
                    new("questions", "FILE", "LLaVA-Bench questions.jsonl, or MM-Vet's mm-vet.json"),
                    new("context", "FILE", "LLaVA-Bench context.jsonl (image captions)"),
                    new("reference", "FILE", "LLaVA-Bench reference answers (answers_gpt4.jsonl)"),
                    new("runs", "N", "MM-Vet grading runs (default 1; the paper used 5)"),
                ],
                Run = EvalJudgeCommand.RunAsync,
            },
            new("submission", "write the EvalAI upload file for VQAv2 / VizWiz (answers normalised as EvalAI's processor)")
            {
                Options =
                [
                    Benchmark("vqav2 or vizwiz"),
                    new("answers", "FILE", "the answer file (required)"),
                    new("questions", "SPLIT.jsonl", "the split's question file (required)"),
                    new("output", "FILE", "the upload file to write (required)"),
                ],
                Run = (cl, _) => Task.FromResult(Submission(cl)),
            },
        ],
    };

    private static OptionSpec Benchmark(string description) =>
        new("benchmark", "NAME", description, Choices: Benchmarks.Names);

    internal static IBenchmark Benchmark(CommandLine cl)
    {
        var name = cl.Required("benchmark");
        try { return Benchmarks.Get(name); }
        catch (ArgumentException e) { throw new UsageException(e.Message); }
    }

    private static int Score(CommandLine cl)
    {
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

    private static int Merge(CommandLine cl)
    {
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

    private static int Submission(CommandLine cl)
    {
        if (Benchmark(cl) is not ShareGPT4V.Evaluation.Scorers.VqaBenchmark vqa) throw new UsageException("submission is for vqav2 and vizwiz");
        var (written, unanswered, bad) = vqa.WriteSubmission(cl.Required("answers"), cl.Required("questions"), cl.Required("output"));
        Console.Error.WriteLine($"wrote {written} answer(s) to {cl.Required("output")}" + (unanswered > 0 ? $"; {unanswered} unanswered (empty)" : "") + (bad > 0 ? $"; {bad} unreadable answer line(s) skipped" : ""));
        return 0;
    }

    private static int Summary(CommandLine cl)
    {
        var reports = cl.All("report");
        if (reports.Count == 0) throw new UsageException("--report is required (repeatable)");
        var table = EvaluationSummary.FromReports(reports.Select(EvaluationSummary.ReadReport));
        Console.WriteLine(cl.Flag("json") ? table.ToJson() : table.ToMarkdown());
        return 0;
    }
}
