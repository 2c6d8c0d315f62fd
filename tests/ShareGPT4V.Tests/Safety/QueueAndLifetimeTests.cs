using ShareGPT4V.Generation;
using Xunit;

namespace ShareGPT4V.Tests.Safety;

/// <summary>
/// The request queue, cancellation and disposal, made deterministic by holding the inference thread inside a text
/// callback (callbacks run on that thread) until the test lets it go.
/// </summary>
[Collection(IsolatedCollection.Name)]
public sealed class QueueAndLifetimeTests
{
    private static readonly TimeSpan HangLimit = TimeSpan.FromSeconds(60);
    private static string Model => Fixtures.Path("oracle/hf_llama2vocab");
    private static readonly GenerationOptions Short = new() { MaxNewTokens = 6, StopAtEndOfSequence = false };
    private static PromptRequest Text(string prompt) => new(prompt, Array.Empty<ImageInput>());

    /// <summary>Starts a request whose first text piece blocks the inference thread until <paramref name="release"/> is set.</summary>
    private static Task<IReadOnlyList<GenerationResult>> Blocker(MultimodalPipeline p, ManualResetEventSlim entered, ManualResetEventSlim release) =>
        p.GenerateBatchAsync([Text("USER: Tell me everything. ASSISTANT:")], new GenerationOptions { MaxNewTokens = 40, StopAtEndOfSequence = false },
            (_, _) => { entered.Set(); release.Wait(); });

    private static async Task<T> Within<T>(Task<T> task)
    {
        Assert.True(await Task.WhenAny(task, Task.Delay(HangLimit)) == task, "did not complete in time (hang)");
        return await task;
    }

    private static async Task WaitUntil(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow + HangLimit;
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "condition not reached in time");
            await Task.Delay(10);
        }
    }

    [Fact]
    public async Task AQueuedRequestCancelsAtOnceWhileAnotherRuns()
    {
        using var p = MultimodalPipeline.Load(new PipelineOptions { ModelPath = Model });
        var expected = await p.GenerateAsync("USER: hi ASSISTANT:", null, Short);
        using var entered = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        var blocker = Blocker(p, entered, release);
        Assert.True(entered.Wait(HangLimit));

        using var cts = new CancellationTokenSource();
        var queued = p.GenerateAsync("USER: hi ASSISTANT:", null, Short, cts.Token);
        await WaitUntil(() => p.QueuedRequests == 1);
        cts.Cancel();
        // Completes while the inference thread is still held: cancellation does not wait for the queue.
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => Within(queued));
        Assert.False(blocker.IsCompleted);

        release.Set();
        Assert.Equal(40, (await Within(blocker))[0].TokenIds.Count);
        Assert.Equal(expected.TokenIds, (await p.GenerateAsync("USER: hi ASSISTANT:", null, Short)).TokenIds);
    }

    [Fact]
    public async Task TheQueueIsBoundedAndCallersWaitingForRoomCanCancel()
    {
        using var p = MultimodalPipeline.Load(new PipelineOptions { ModelPath = Model, MaxQueueLength = 2 });
        var expected = await p.GenerateAsync("USER: hi ASSISTANT:", null, Short);
        using var entered = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        var blocker = Blocker(p, entered, release);
        Assert.True(entered.Wait(HangLimit));

        var inQueue = new[] { p.GenerateAsync("USER: hi ASSISTANT:", null, Short), p.GenerateAsync("USER: hi ASSISTANT:", null, Short) };
        await WaitUntil(() => p.QueuedRequests == 2);
        using var cts = new CancellationTokenSource();
        var waiting = Enumerable.Range(0, 3).Select(_ => p.GenerateAsync("USER: hi ASSISTANT:", null, Short, cts.Token)).ToArray();
        await Task.Delay(200);
        Assert.Equal(2, p.QueuedRequests); // the queue holds no more than its bound
        Assert.All(waiting, t => Assert.False(t.IsCompleted));
        cts.Cancel();
        foreach (var t in waiting) await Assert.ThrowsAnyAsync<OperationCanceledException>(() => Within(t));

        release.Set();
        await Within(blocker);
        foreach (var t in inQueue) Assert.Equal(expected.TokenIds, (await Within(t)).TokenIds);
    }

    [Fact]
    public async Task DisposeCancelsEverythingPendingAndRefusesNewRequests()
    {
        var p = MultimodalPipeline.Load(new PipelineOptions { ModelPath = Model });
        using var entered = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        var blocker = Blocker(p, entered, release);
        Assert.True(entered.Wait(HangLimit));
        var queued = p.GenerateAsync("USER: hi ASSISTANT:", null, Short);
        await WaitUntil(() => p.QueuedRequests == 1);

        var disposing = Task.Run(p.Dispose); // waits for the held request to unwind
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => Within(queued));
        release.Set();
        await Within(disposing.ContinueWith(_ => 0));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => Within(blocker));
        await Assert.ThrowsAsync<ObjectDisposedException>(() => p.GenerateAsync("USER: hi ASSISTANT:"));
    }

    [Fact]
    public async Task DisposeFromATextCallbackOnTheInferenceThreadDoesNotDeadlock()
    {
        var p = MultimodalPipeline.Load(new PipelineOptions { ModelPath = Model });
        long loaded = TorchSharp.torch.Tensor.TotalCount;
        var run = p.GenerateBatchAsync([Text("USER: hi ASSISTANT:")], new GenerationOptions { MaxNewTokens = 20, StopAtEndOfSequence = false },
            (_, _) => p.Dispose());
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => Within(run));
        await Assert.ThrowsAsync<ObjectDisposedException>(() => p.GenerateAsync("USER: hi ASSISTANT:"));
        // The inference thread released the model (its parameters, the KV cache) once the request unwound.
        await WaitUntil(() => TorchSharp.torch.Tensor.TotalCount < loaded - p.Config.Text.NumHiddenLayers);
    }

    [Fact]
    public async Task NativeFailuresDuringARequestReachTheCallerAsADeviceException()
    {
        // libtorch's errors surface as ExternalException from TorchSharp; one raised on the inference thread (here
        // from the text callback, which runs there) reaches the caller as the library's own type.
        using var p = MultimodalPipeline.Load(new PipelineOptions { ModelPath = Model });
        var e = await Assert.ThrowsAsync<DeviceException>(() => p.GenerateBatchAsync([Text("USER: hi ASSISTANT:")], Short,
            (_, _) => throw new System.Runtime.InteropServices.ExternalException("DefaultCPUAllocator: not enough memory\nframe #0 ...")));
        Assert.Contains("libtorch failed", e.Message);
        Assert.Contains("not enough memory", e.Message);
        Assert.DoesNotContain("frame #0", e.Message);
        Assert.IsType<System.Runtime.InteropServices.ExternalException>(e.InnerException);
        Assert.Equal(6, (await p.GenerateAsync("USER: hi ASSISTANT:", null, Short)).TokenIds.Count); // still usable
    }
}
