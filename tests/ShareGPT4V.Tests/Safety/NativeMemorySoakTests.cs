using System.Diagnostics;
using ShareGPT4V.Conversation;
using ShareGPT4V.Generation;
using TorchSharp;
using Xunit;
using Xunit.Abstractions;
using ConversationMessage = ShareGPT4V.Conversation.ConversationMessage;

namespace ShareGPT4V.Tests.Safety;

/// <summary>
/// Native memory over long runs: after warm-up, generating again and again must leave the number of live libtorch
/// tensors unchanged and the process RSS flat; disposing a pipeline must free every tensor it made. CI runs small
/// counts; SHAREGPT4V_SOAK_ITERATIONS and SHAREGPT4V_SOAK_CYCLES run more by hand.
/// </summary>
[Collection(IsolatedCollection.Name)]
public sealed class NativeMemorySoakTests(ITestOutputHelper output)
{
    private static string Model => Fixtures.Path("oracle/hf_llama2vocab");
    private static ImageInput Image(int i) => ImageInput.FromFile(Path.Combine(Model, $"image{i}.png"));

    /// <summary>Resident set size of this process, from /proc/self/status (VmRSS, in kB).</summary>
    internal static long RssBytes()
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
        throw new InvalidOperationException("no VmRSS in /proc/self/status");
    }

    /// <summary>
    /// Live tensors, RSS, and RSS less the managed heap's committed memory (what libtorch and other native code hold),
    /// once finalizers have run (a leaked, unreferenced tensor still counts until then).
    /// </summary>
    private static (long Tensors, long Rss, long Native) Measure(MultimodalPipeline? p = null)
    {
        for (int i = 0; i < 2; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }
        long rss = RssBytes();
        // The engine's bounded caches hold tensors by design (their bounds are tested in EngineTests): not counted.
        long cached = 0;
        if (p is not null)
        {
            var c = p.CacheCounters;
            cached = c.ImageCacheEntries + 2L * c.PrefixCacheEntries * p.Config.Text.NumHiddenLayers;
        }
        return (torch.Tensor.TotalCount - cached, rss, rss - GC.GetGCMemoryInfo().TotalCommittedBytes);
    }

    private static async Task OneRound(MultimodalPipeline p, int i)
    {
        // Varying prompts, images and lengths, all within the cache size the warm-up reached.
        var options = new GenerationOptions { MaxNewTokens = 8 + i % 9, StopAtEndOfSequence = false, Temperature = i % 3 == 0 ? 0.7 : 0, Seed = i };
        switch (i % 4)
        {
            case 0: await p.CaptionAsync(Image(1 + i % 2), null, options); break;
            case 1: await p.ChatAsync([new ConversationMessage(ConversationRole.User, $"Question {i}: what is shown?", 1)], [Image(2)], options); break;
            case 2: await foreach (var _ in p.ChatStreamingAsync([new ConversationMessage(ConversationRole.User, "Tell me a story.")], null, options)) { } break;
            default: await p.CaptionBatchAsync([Image(1), Image(2)], null, options); break;
        }
    }

    [Fact]
    public async Task GeneratingAgainAndAgainKeepsLiveTensorsAndRssFlat()
    {
        int iterations = ConcurrencyStressTests.Setting("SHAREGPT4V_SOAK_ITERATIONS", 40);
        using var p = MultimodalPipeline.Load(new PipelineOptions { ModelPath = Model });
        for (int i = 0; i < 8; i++) await OneRound(p, i); // warm-up: caches, pools and JIT reach their size
        var (tensors0, rss0, native0) = Measure(p);
        var sw = Stopwatch.StartNew();
        long maxRss = rss0;
        for (int i = 0; i < iterations; i++)
        {
            await OneRound(p, i);
            if (i % 10 == 9) maxRss = Math.Max(maxRss, RssBytes());
        }
        var (tensors1, rss1, native1) = Measure(p);
        output.WriteLine(p.CacheCounters.ToString());
        output.WriteLine($"{iterations} generations in {sw.Elapsed.TotalSeconds:F1} s: live tensors {tensors0} -> {tensors1}, " +
                         $"RSS {rss0 >> 20} MiB -> {rss1 >> 20} MiB (peak {maxRss >> 20} MiB), " +
                         $"native (RSS less the managed heap) {native0 >> 20} MiB -> {native1 >> 20} MiB");
        Assert.Equal(tensors0, tensors1);
        // The managed heap breathes with other work in the process; what native code holds must not grow.
        // (A leaked KV cache or activation of this model is over 1 MiB a generation.)
        Assert.True(native1 - native0 < 32L << 20, $"native memory grew by {(native1 - native0) >> 20} MiB over {iterations} generations");
    }

    [Fact]
    public async Task ALoadedAndDisposedPipelineLeavesNothingBehind()
    {
        int cycles = ConcurrencyStressTests.Setting("SHAREGPT4V_SOAK_CYCLES", 4);
        async Task<int> Cycle(int i)
        {
            using var p = MultimodalPipeline.Load(new PipelineOptions { ModelPath = Model });
            await OneRound(p, i);
            return p.Model.parameters().Count();
        }
        await Cycle(0); // first load: libtorch, ImageSharp and the JIT settle
        var (tensors0, rss0, native0) = Measure();
        var rssAfter = new List<long>();
        var nativeAfter = new List<long>();
        long counterArtifact = 0;
        for (int i = 0; i < cycles; i++)
        {
            int parameters = await Cycle(i + 1);
            var (tensors, rss, native) = Measure();
            // TorchSharp 0.107's Parameter(tensor) moves the native handle out of the tensor it wraps; the emptied
            // wrapper stays in Tensor.TotalCount forever though it holds no memory. A load builds the model twice
            // (on the meta device to check the checkpoint, then for real), so the counter rises by exactly two per
            // parameter. Anything else still alive after Dispose would show up on top of that.
            counterArtifact += 2L * parameters;
            // Nothing may grow. The count can fall, though: a thread-pool thread that earlier tests used for GEMMs over
            // half-precision or quantized weights holds a per-thread scratch tensor (Linear's), which is finalized when
            // the pool retires the thread, at any point of this test (seen once in four full-suite runs: one less).
            Assert.True(tensors <= tensors0 + counterArtifact, $"live tensors {tensors}, expected at most {tensors0 + counterArtifact}");
            Assert.True(tensors >= tensors0 + counterArtifact - 16, $"live tensors {tensors}, far fewer than {tensors0 + counterArtifact}");
            rssAfter.Add(rss);
            nativeAfter.Add(native);
        }
        output.WriteLine($"{cycles} load/generate/dispose cycles: live tensors {tensors0} -> {tensors0 + counterArtifact} " +
                         $"(all of it the emptied Parameter wrappers); RSS after each: " +
                         string.Join(", ", rssAfter.Select(r => $"{r >> 20} MiB")) + $" (before: {rss0 >> 20} MiB); native: " +
                         string.Join(", ", nativeAfter.Select(r => $"{r >> 20} MiB")) + $" (before: {native0 >> 20} MiB)");
        // Each load maps about 8 MiB of weights and allocates its caches: a leaked model would add that per cycle.
        Assert.True(nativeAfter[^1] - native0 < 32L << 20, $"native memory grew by {(nativeAfter[^1] - native0) >> 20} MiB over {cycles} cycles");
    }
}
