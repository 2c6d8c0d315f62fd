using System.Diagnostics;
using ShareGPT4V.Conversation;
using ShareGPT4V.Generation;
using Xunit;
using Xunit.Abstractions;
using ConversationMessage = ShareGPT4V.Conversation.ConversationMessage;

namespace ShareGPT4V.Tests.Safety;

/// <summary>Stress, soak and lifetime tests measure the whole process: they run alone, after the parallel tests.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class IsolatedCollection
{
    public const string Name = "Isolated (stress, soak)";
}

/// <summary>
/// Many callers at once, with random cancellations: every request that completes must give exactly the answer it
/// gives when run alone, every other one must end in cancellation, and nothing else may happen. CI runs a small
/// count; SHAREGPT4V_STRESS_REQUESTS (and SHAREGPT4V_STRESS_SEED) run more by hand.
/// </summary>
[Collection(IsolatedCollection.Name)]
public sealed class ConcurrencyStressTests(ITestOutputHelper output)
{
    private static string Model => Fixtures.Path("oracle/hf_llama2vocab");
    private static ImageInput Image(int i) => ImageInput.FromFile(Path.Combine(Model, $"image{i}.png"));
    private static ImageInput ImageBytes(int i) => ImageInput.FromBytes(File.ReadAllBytes(Path.Combine(Model, $"image{i}.png")), $"image{i}.png");

    internal static int Setting(string name, int ciValue) =>
        int.TryParse(Environment.GetEnvironmentVariable(name), out var n) && n > 0 ? n : ciValue;

    private enum Kind { Caption, Chat, TwoImages, Text, Sampled, Streamed, Batch }

    private sealed record Request(int Index, Kind Kind, IReadOnlyList<ConversationMessage> Messages, IReadOnlyList<ImageInput> Images, GenerationOptions Options);

    /// <summary>What a request produced: token ids of each row, and the text of each row.</summary>
    private sealed record Answer(IReadOnlyList<IReadOnlyList<int>> Ids, IReadOnlyList<string> Texts)
    {
        public bool SameAs(Answer other) =>
            Texts.SequenceEqual(other.Texts) && (Ids.Count == 0 || other.Ids.Count == 0 || Ids.Zip(other.Ids).All(p => p.First.SequenceEqual(p.Second)));
    }

    private static List<Request> MakeRequests(int count, int seed)
    {
        var rng = new Random(seed);
        string[] questions = ["Describe this image in detail.", "What colours do you see?", "Is there text? Answer briefly.", "Write a haiku about it. 🙂", "Qu'est-ce que c'est ?"];
        var list = new List<Request>();
        for (int i = 0; i < count; i++)
        {
            var kind = (Kind)(i % 7);
            var options = new GenerationOptions { MaxNewTokens = 3 + rng.Next(14), StopAtEndOfSequence = false };
            string q = questions[rng.Next(questions.Length)];
            int img = 1 + rng.Next(2);
            list.Add(kind switch
            {
                Kind.Caption => new Request(i, kind, [new ConversationMessage(ConversationRole.User, q, 1)], [Image(img)], options),
                Kind.Chat => new Request(i, kind,
                    [new ConversationMessage(ConversationRole.User, "Look.", 1), new ConversationMessage(ConversationRole.Assistant, "I see it."), new ConversationMessage(ConversationRole.User, q)],
                    [ImageBytes(img)], options),
                Kind.TwoImages => new Request(i, kind, [new ConversationMessage(ConversationRole.User, "Compare these: " + q, 2)], [Image(1), ImageBytes(2)], options),
                Kind.Text => new Request(i, kind, [new ConversationMessage(ConversationRole.User, q)], [], options),
                Kind.Sampled => new Request(i, kind, [new ConversationMessage(ConversationRole.User, q, 1)], [Image(img)],
                    options with { Temperature = 0.9, TopP = 0.9, TopK = 40, Seed = rng.Next() }),
                Kind.Streamed => new Request(i, kind, [new ConversationMessage(ConversationRole.User, q, 1)], [Image(img)], options),
                _ => new Request(i, kind, [new ConversationMessage(ConversationRole.User, q, 1)], [Image(1), Image(2)], options),
            });
        }
        return list;
    }

    private static async Task<Answer> Run(MultimodalPipeline p, Request r, CancellationToken ct, Random? cancelAfterPieces = null, CancellationTokenSource? cts = null)
    {
        switch (r.Kind)
        {
            case Kind.Streamed:
            {
                var pieces = new List<string>();
                int cancelAt = cancelAfterPieces?.Next(1, 6) ?? int.MaxValue;
                await foreach (var piece in p.ChatStreamingAsync(r.Messages, r.Images, r.Options, ct))
                {
                    pieces.Add(piece);
                    if (pieces.Count == cancelAt) cts!.Cancel();
                }
                return new Answer([], [string.Concat(pieces)]);
            }
            case Kind.Batch:
            {
                var results = await p.CaptionBatchAsync(r.Images, r.Messages[0].Text, r.Options, null, ct);
                return new Answer(results.Select(x => x.TokenIds).ToList(), results.Select(x => x.Text).ToList());
            }
            default:
            {
                var result = await p.ChatAsync(r.Messages, r.Images, r.Options, ct);
                return new Answer([result.TokenIds], [result.Text]);
            }
        }
    }

    [Fact]
    public async Task ConcurrentRequestsWithRandomCancellationsAnswerAsTheyDoAlone()
    {
        int count = Setting("SHAREGPT4V_STRESS_REQUESTS", 28);
        int seed = Setting("SHAREGPT4V_STRESS_SEED", 7);
        using var p = MultimodalPipeline.Load(new PipelineOptions { ModelPath = Model, MaxQueueLength = 4 });
        var requests = MakeRequests(count, seed);

        // Each request alone, one after another.
        var alone = new Answer[count];
        foreach (var r in requests) alone[r.Index] = await Run(p, r, CancellationToken.None);

        // All at once from pool threads; about a third are cancelled: before the call, after a random delay, or
        // (streamed) after a few pieces.
        var rng = new Random(seed * 31 + 1);
        int completed = 0, cancelled = 0, mismatches = 0;
        var failures = new List<string>();
        var sw = Stopwatch.StartNew();
        var tasks = requests.Select(r =>
        {
            int mode = rng.Next(6); // 0: cancelled up front, 1: after a delay, 2: mid-stream (streamed only), else: left alone
            int delay = rng.Next(0, 60);
            var pieceRng = new Random(rng.Next());
            return Task.Run(async () =>
            {
                using var cts = new CancellationTokenSource();
                if (mode == 0) cts.Cancel();
                if (mode == 1) cts.CancelAfter(delay);
                try
                {
                    var answer = await Run(p, r, cts.Token, mode == 2 && r.Kind == Kind.Streamed ? pieceRng : null, cts);
                    Interlocked.Increment(ref completed);
                    if (!answer.SameAs(alone[r.Index]))
                    {
                        Interlocked.Increment(ref mismatches);
                        lock (failures) failures.Add($"request {r.Index} ({r.Kind}): '{string.Join(" | ", answer.Texts)}' vs alone '{string.Join(" | ", alone[r.Index].Texts)}'");
                    }
                }
                catch (OperationCanceledException) when (cts.IsCancellationRequested)
                {
                    Interlocked.Increment(ref cancelled);
                }
                catch (Exception e)
                {
                    lock (failures) failures.Add($"request {r.Index} ({r.Kind}): {e.GetType().Name}: {e.Message}");
                }
            });
        }).ToArray();
        var all = Task.WhenAll(tasks);
        Assert.True(await Task.WhenAny(all, Task.Delay(TimeSpan.FromMinutes(5))) == all, "the concurrent requests did not finish (hang)");
        output.WriteLine($"{count} requests (seed {seed}): {completed} completed, {cancelled} cancelled, {mismatches} mismatches, {failures.Count - mismatches} other errors, {sw.Elapsed.TotalSeconds:F1} s");

        Assert.True(failures.Count == 0, string.Join("\n", failures));
        Assert.Equal(count, completed + cancelled);
        Assert.True(cancelled > 0 && completed > 0, $"{completed} completed, {cancelled} cancelled: the test exercised only one outcome");

        // The pipeline is intact afterwards.
        Assert.True((await Run(p, requests[0], CancellationToken.None)).SameAs(alone[0]));
        Assert.Equal(0, p.QueuedRequests);
    }
}
