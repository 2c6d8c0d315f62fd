using System.ClientModel;
using Microsoft.Extensions.AI;
using OpenAI;
using ShareGPT4V.Evaluation.Judging;

namespace ShareGPT4V.Cli;

/// <summary><c>eval judge</c>: LLaVA-Bench reviews and MM-Vet grades from a judge behind an OpenAI-compatible endpoint.</summary>
internal static class EvalJudgeCommand
{
    public static async Task<int> RunAsync(CommandLine cl, CancellationToken ct)
    {
        var benchmark = EvalCommand.Benchmark(cl);
        var endpoint = cl.Required("endpoint");
        if (!Uri.TryCreate(endpoint, UriKind.Absolute, out var uri)) throw new UsageException($"--endpoint must be an absolute URL, got '{endpoint}'");
        var keyVariable = cl.Value("api-key-env") ?? "OPENAI_API_KEY";
        var key = Environment.GetEnvironmentVariable(keyVariable) is { Length: > 0 } k ? k : "none"; // local servers often need no key
        var answers = cl.Required("answers");
        var reviews = cl.Required("reviews");
        switch (benchmark)
        {
            case LlavaBenchJudge:
            {
                var model = cl.Value("judge-model") ?? LlavaBenchJudge.ReferenceJudgeModel;
                using var judge = Client(uri, key, model);
                int n = await LlavaBenchJudge.ReviewAsync(judge, cl.Required("questions"), cl.Required("context"), cl.Required("reference"), answers, reviews, model, ct);
                Console.Error.WriteLine($"{n} review(s) written to {reviews}");
                return 0;
            }
            case MmVetJudge:
            {
                var model = cl.Value("judge-model") ?? MmVetJudge.ReferenceJudgeModel;
                using var judge = Client(uri, key, model);
                int n = await MmVetJudge.GradeAsync(judge, cl.Required("questions"), answers, reviews, cl.Int("runs", 1, 100) ?? 1, model, ct);
                Console.Error.WriteLine($"{n} grade(s) written to {reviews}");
                return 0;
            }
            default:
                throw new UsageException("judge is for llava-bench and mm-vet");
        }
    }

    private static IChatClient Client(Uri endpoint, string key, string model) =>
        new OpenAIClient(new ApiKeyCredential(key), new OpenAIClientOptions { Endpoint = endpoint }).GetChatClient(model).AsIChatClient();
}
