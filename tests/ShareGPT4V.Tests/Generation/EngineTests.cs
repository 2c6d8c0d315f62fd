using ShareGPT4V.Conversation;
using ShareGPT4V.Generation;
using ShareGPT4V.Tests.Oracle;
using TorchSharp;
using Xunit;
using ConversationMessage = ShareGPT4V.Conversation.ConversationMessage;

namespace ShareGPT4V.Tests.Engine;

/// <summary>
/// The generation engine under load, on the hf_llama2vocab oracle model: continuous batching gives every request the
/// answer it gets alone, honours MaxBatchSize and gives slots back; the image and KV prefix caches are observable,
/// bounded, and a second chat turn through them equals a fresh run.
/// </summary>
public class EngineTests
{
    private static readonly GoldenCase Case = GoldenCase.Get("hf_llama2vocab");

    private static MultimodalPipeline Load(int maxBatch, long imageCache = 128L << 20, long prefixCache = 256L << 20) =>
        MultimodalPipeline.Load(new PipelineOptions
        {
            ModelPath = Case.ModelPath, Template = "llava_v1", MaxBatchSize = maxBatch,
            ImageCacheBytes = imageCache, PrefixCacheBytes = prefixCache,
        });

    private static ImageInput Image(string name) => ImageInput.FromFile(Path.Combine(Case.Dir, name + ".png"));

    private sealed record Spec(string Prompt, ImageInput[] Images, GenerationOptions Options);

    /// <summary>32 requests: text, one image and two images, of mixed lengths, greedy and seeded sampling.</summary>
    private static List<Spec> Specs(MultimodalPipeline p)
    {
        var words = new[] { "colors", "shapes", "the left side", "the background", "anything unusual", "the texture", "the light", "the edges" };
        var specs = new List<Spec>();
        for (int i = 0; i < 32; i++)
        {
            int images = i % 3;
            var question = $"Tell me about {words[i % words.Length]}" + string.Concat(Enumerable.Repeat(" please", i % 5)) + ".";
            var prompt = p.BuildPrompt(new[] { new ConversationMessage(ConversationRole.User, question, images) });
            var imageInputs = Enumerable.Range(0, images).Select(k => Image((i + k) % 2 == 0 ? "image1" : "image2")).ToArray();
            var options = new GenerationOptions
            {
                MaxNewTokens = 3 + i * 7 % 14, StopAtEndOfSequence = i % 4 != 0,
                Temperature = i % 2 == 1 ? 0.9 : 0, TopK = i % 2 == 1 ? 40 : 0, Seed = i,
            };
            specs.Add(new Spec(prompt, imageInputs, options));
        }
        return specs;
    }

    [Fact]
    public async Task ThirtyTwoConcurrentRequestsWithCancellationsEqualTheirSoloRuns()
    {
        using var p = Load(maxBatch: 4, prefixCache: 0);
        var specs = Specs(p);
        var solo = new List<GenerationResult>();
        foreach (var s in specs) solo.Add(await p.GenerateAsync(s.Prompt, s.Images, s.Options));
        Assert.Equal(1, p.Engine.PeakActive);

        var random = new Random(1234);
        var cancelled = Enumerable.Range(0, 32).OrderBy(_ => random.Next()).Take(8).ToHashSet();
        var sources = new List<CancellationTokenSource>();
        var tasks = new List<Task<GenerationResult>>();
        for (int i = 0; i < specs.Count; i++)
        {
            var cts = new CancellationTokenSource();
            sources.Add(cts);
            if (cancelled.Contains(i)) cts.CancelAfter(random.Next(0, 60));
            var s = specs[i];
            tasks.Add(Task.Run(() => p.GenerateAsync(s.Prompt, s.Images, s.Options, cts.Token)));
        }
        int completed = 0;
        for (int i = 0; i < tasks.Count; i++)
        {
            try
            {
                var r = await tasks[i];
                Assert.Equal(solo[i].TokenIds, r.TokenIds);
                Assert.Equal(solo[i].Text, r.Text);
                Assert.Equal(solo[i].FinishReason, r.FinishReason);
                completed++;
            }
            catch (OperationCanceledException) when (cancelled.Contains(i)) { }
        }
        Assert.True(completed >= 24, $"{completed} requests completed");
        foreach (var cts in sources) cts.Dispose();

        // Cancelled rows leave at the next step; then every slot is free, no more rows than slots ever ran, and
        // the KV cache is still the one the memory estimate was given.
        for (int i = 0; i < 100 && p.ActiveSequences > 0; i++) await Task.Delay(20);
        Assert.Equal(0, p.ActiveSequences);
        Assert.Equal(4, p.Engine.FreeSlots);
        Assert.Equal(4, p.Engine.PeakActive);
        Assert.Equal(4, p.Engine.Cache.MaxBatch);
        Assert.Equal(p.Placement.Estimate!.KvCacheBytes, p.Engine.Cache.Bytes);
        Assert.Equal(solo[5].TokenIds, (await p.GenerateAsync(specs[5].Prompt, specs[5].Images, specs[5].Options)).TokenIds);
    }

    [Fact]
    public async Task BatchCallsTakeAtMostMaxBatchSizeSlots()
    {
        using var p = Load(maxBatch: 2);
        var specs = Specs(p).Take(5).ToList();
        var options = new GenerationOptions { MaxNewTokens = 6, StopAtEndOfSequence = false };
        var batch = await p.GenerateBatchAsync(specs.Select(s => new PromptRequest(s.Prompt, s.Images)).ToList(), options, null);
        Assert.Equal(2, p.Engine.PeakActive);
        for (int i = 0; i < specs.Count; i++)
            Assert.Equal((await p.GenerateAsync(specs[i].Prompt, specs[i].Images, options)).TokenIds, batch[i].TokenIds);
    }

    [Fact]
    public async Task SecondTurnReusesTheFirstTurnAndEqualsAFreshRun()
    {
        using var cached = Load(maxBatch: 2);
        using var fresh = Load(maxBatch: 1, imageCache: 0, prefixCache: 0);
        var options = new GenerationOptions { MaxNewTokens = 10, StopAtEndOfSequence = false };
        var turn1 = new List<ConversationMessage> { new(ConversationRole.User, "Describe this image in detail.", 1) };
        var images = new[] { Image("image1") };
        var r1 = await cached.ChatAsync(turn1, images, options);
        Assert.Equal((await fresh.ChatAsync(turn1, images, options)).TokenIds, r1.TokenIds);
        var c1 = cached.CacheCounters;
        Assert.Equal(1, c1.PrefixCacheEntries);
        Assert.Equal(0, c1.PrefixCacheHits);
        Assert.Equal(1, c1.ImageCacheMisses);

        var turn2 = turn1.Concat(new ConversationMessage[] { new(ConversationRole.Assistant, r1.Text), new(ConversationRole.User, "What colors stand out?") }).ToList();
        var r2 = await cached.ChatAsync(turn2, images, options);
        var c2 = cached.CacheCounters;
        Assert.Equal(1, c2.PrefixCacheHits);
        Assert.True(c2.PrefixTokensReused >= r1.PromptTokens, $"{c2.PrefixTokensReused} positions reused, turn 1 had {r1.PromptTokens}");
        Assert.Equal(1, c2.PrefixCacheEntries); // the conversation's entry moved on to turn 2
        Assert.Equal(1, c2.ImageCacheMisses);   // the image lay inside the reused prefix: not even looked up
        var f2 = await fresh.ChatAsync(turn2, images, options);
        Assert.Equal(f2.TokenIds, r2.TokenIds);
        Assert.Equal(f2.Text, r2.Text);
        Assert.True(r2.Timings.Prefill < f2.Timings.Prefill * 2 + TimeSpan.FromMilliseconds(50)); // sanity, not a benchmark

        // Another question about the same image, placed after some text: the embedding comes from the image cache,
        // and the conversation's entry stays (this one shares less than its prompt).
        var other = cached.BuildPrompt(new[] { new ConversationMessage(ConversationRole.User, "Look at this picture:", 0) }) + " <image>\nIs there text in it?";
        var r3 = await cached.GenerateAsync(other, images, options);
        Assert.Equal((await fresh.GenerateAsync(other, images, options)).TokenIds, r3.TokenIds);
        Assert.Equal(1, cached.CacheCounters.ImageCacheHits);
        Assert.Equal(2, cached.CacheCounters.PrefixCacheEntries);
        Assert.Equal(0, fresh.CacheCounters.PrefixCacheEntries);
        Assert.Equal(0, fresh.CacheCounters.ImageCacheBytes);
    }

    /// <summary>
    /// The portable attention path (each slot attended on its own, as on a GPU) and decode steps of more rows than the
    /// decode kernel takes at once still give transformers' ids.
    /// </summary>
    [Theory]
    [InlineData("hf_tiny")]
    [InlineData("llava_tiny336")]
    public void PortableAttentionAndWideStepsReproduceTheGoldenIds(string name)
    {
        ShareGPT4V.Modeling.DecodeAttention.DisabledForTests = true;
        try { new OracleModelTests().GreedyDecodingWithKvCacheReproducesGeneratedIds(name); }
        finally { ShareGPT4V.Modeling.DecodeAttention.DisabledForTests = false; }

        var c = GoldenCase.Get(name);
        var model = OracleModelTests.Model(c);
        var p = c.Prompt("text");
        var ids = GoldenCase.Ids(p.GetProperty("input_ids"));
        var expected = GoldenCase.Ids(p.GetProperty("generated_ids"));
        int maxNew = c.Golden.GetProperty("max_new_tokens").GetInt32();
        using var engine = OracleModelTests.EngineFor(c, model, maxBatch: 11);
        var results = engine.Run(OracleModelTests.EngineRequests(model, Enumerable.Repeat(ids, 11).ToArray(), Array.Empty<torch.Tensor>(), maxNew));
        Assert.Equal(11, engine.PeakActive);
        Assert.All(results, r => Assert.Equal(expected, r.TokenIds.Select(x => (long)x).ToArray()));
    }

    /// <summary>
    /// The answer text as the engine builds it token by token: a stop string split over several tokens is found, the
    /// streamed pieces concatenate to the final text, and a long answer costs time in proportion to its length.
    /// </summary>
    [Fact]
    public void OutputTextFindsStopStringsAcrossTokensAndStreamsTheFinalText()
    {
        var tokenizer = ShareGPT4V.Tokenization.LlavaTokenizer.Load(Case.ModelPath);
        var ids = tokenizer.Encode("  Hello there, world. ### and more", addBos: false);
        var text = new OutputText(tokenizer, new[] { "###", "</s>" });
        var streamed = new System.Text.StringBuilder();
        foreach (var id in ids)
        {
            streamed.Append(text.Append(id));
            if (text.Stopped) break;
        }
        Assert.True(text.Stopped);
        streamed.Append(text.Complete());
        Assert.Equal("Hello there, world.", text.FinalText);
        Assert.Equal(text.FinalText, streamed.ToString());

        // 20,000 tokens: a rescan of the whole answer per token would take seconds here.
        var word = tokenizer.Encode(" lorem ipsum dolor", addBos: false);
        var longText = new OutputText(tokenizer, new[] { "###", "USER:", "</s>" });
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var all = new System.Text.StringBuilder();
        for (int i = 0; i < 20_000; i++) all.Append(longText.Append(word[i % word.Length]));
        all.Append(longText.Complete());
        Assert.False(longText.Stopped);
        Assert.Equal(longText.FinalText, all.ToString());
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(5), $"{sw.Elapsed.TotalMilliseconds:F0} ms for 20,000 tokens");
    }

    [Fact]
    public void CachesStayWithinTheirBudgets()
    {
        var model = OracleModelTests.Model(Case);
        long perPosition;
        using (var probe = OracleModelTests.EngineFor(Case, model, 1)) perPosition = probe.Cache.BytesPerPosition;
        long imageBytes = (long)model.Config.ImageSeqLength * model.Config.Text.HiddenSize * 4;
        // Room for about one conversation of ~70 positions and one image embedding.
        using var engine = OracleModelTests.EngineFor(Case, model, 2, imageCacheBytes: imageBytes + 1, prefixCacheBytes: perPosition * 100);
        var ids = GoldenCase.Ids(Case.Prompt("main").GetProperty("input_ids"));
        var pixels = new[] { "image1", "image2" }.Select(n => Case.Pixels(n, Case.PrimaryVariant)).ToArray();
        for (int round = 0; round < 3; round++)
        {
            var request = new SequenceRequest
            {
                PromptIds = ids.Select(x => (int)x).ToArray(),
                Images = new[] { new EngineImage(pixels[round % 2], $"{round % 2:X16}") },
                Options = new GenerationOptions { MaxNewTokens = 4 + round, StopAtEndOfSequence = false },
            };
            engine.Run(new[] { request });
            var c = engine.Counters;
            Assert.True(c.PrefixCacheBytes <= perPosition * 100, $"prefix cache holds {c.PrefixCacheBytes} bytes");
            Assert.True(c.ImageCacheBytes <= imageBytes + 1, $"image cache holds {c.ImageCacheBytes} bytes");
        }
        var counters = engine.Counters;
        Assert.Equal(1, counters.PrefixCacheEntries);
        Assert.True(counters.PrefixCacheEvictions >= 1);
        Assert.Equal(3, counters.ImageCacheMisses); // two images alternate in a cache that holds one
        engine.ClearCaches();
        Assert.Equal(0, engine.Counters.PrefixCacheBytes);
        Assert.Equal(0, engine.Counters.ImageCacheBytes);
    }
}
