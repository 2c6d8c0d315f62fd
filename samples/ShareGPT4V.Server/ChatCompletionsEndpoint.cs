using System.Diagnostics;
using System.Text.Json;
using System.Threading.Channels;
using Microsoft.AspNetCore.Http.Features;
using ShareGPT4V.Generation;

namespace ShareGPT4V.Server;

/// <summary>
/// <c>POST /v1/chat/completions</c>: admission (429 when <see cref="ServerOptions.MaxQueue"/> requests are in),
/// parsing and limits (400/404/413), then one pipeline request per choice, answered as one JSON object or as
/// server-sent events. Headers of a stream are sent with its first token, so that anything refused before that
/// (a bad image, a prompt too long) still gets its proper status. The request's token (client disconnect) and the
/// per-request timeout cancel the generation.
/// </summary>
internal sealed class ChatCompletionsEndpoint(ServerOptions options, ModelHost host, ServerMetrics metrics, ImageUrlResolver resolver,
    ILogger<ChatCompletionsEndpoint> logger)
{
    private sealed record Choice(int Index, GenerationResult Result);

    public async Task HandleAsync(HttpContext http)
    {
        var started = Stopwatch.StartNew();
        var id = "chatcmpl-" + Guid.NewGuid().ToString("N");
        int status = 200;
        bool stream = false;
        int promptTokens = 0, completionTokens = 0;
        double? ttft = null;
        if (!metrics.TryAdmit(options.MaxQueue))
        {
            status = 429;
            metrics.RecordRequest(status, false, started.Elapsed);
            logger.LogWarning("Refused a request: the queue is full (--max-queue {MaxQueue})", options.MaxQueue);
            await new OpenAIErrorException(429, $"The server is busy ({options.MaxQueue} requests in progress); retry later", "rate_limit_error", code: "queue_full")
                { RetryAfterSeconds = 1 }.WriteAsync(http.Response).ConfigureAwait(false);
            return;
        }
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(http.RequestAborted);
        timeout.CancelAfter(options.RequestTimeout);
        var ct = timeout.Token;
        try
        {
            var pipeline = host.Pipeline ?? throw new OpenAIErrorException(503, "The model is still loading; retry later", "server_error", code: "model_loading") { RetryAfterSeconds = 5 };
            var request = await ReadRequestAsync(http, ct).ConfigureAwait(false);
            stream = request.Stream;
            if (request.Model is { } model && model != options.EffectiveModelName)
                throw new OpenAIErrorException(404, $"The model '{model}' does not exist; this server serves '{options.EffectiveModelName}'", param: "model", code: "model_not_found");
            if (request.N > options.MaxChoices) throw OpenAIErrorException.BadParam("n", $"'n' must be at most {options.MaxChoices} on this server, got {request.N}");
            var (system, turns, references) = request.ToConversation();
            if (references.Count > options.MaxImagesPerRequest)
                throw OpenAIErrorException.BadParam("messages", $"The request has {references.Count} images; this server takes at most {options.MaxImagesPerRequest}", "too_many_images");
            string prompt;
            try { prompt = pipeline.BuildPrompt(turns, system); }
            catch (PromptException e) { throw OpenAIErrorException.BadParam("messages", e.Message); }
            var images = new List<ImageInput>();
            foreach (var r in references) images.Add(await resolver.ResolveAsync(r, ct).ConfigureAwait(false));
            promptTokens = CountPromptTokens(pipeline, prompt, images.Count);
            int maxPrompt = Math.Min(options.MaxPromptTokens ?? int.MaxValue, pipeline.ContextLength - 1);
            if (promptTokens > maxPrompt)
                throw OpenAIErrorException.BadParam("messages", $"The prompt takes {promptTokens} tokens (image tokens included), more than this server's limit of {maxPrompt}", "context_length_exceeded");
            var generation = Enumerable.Range(0, request.N).Select(i => ToGenerationOptions(request, i)).ToList();

            IReadOnlyList<Choice> choices;
            if (stream)
                choices = await StreamAsync(http, pipeline, request, id, prompt, images, generation, started, t => ttft ??= t, ct).ConfigureAwait(false);
            else
            {
                var tasks = generation.Select((g, i) => RunChoiceAsync(pipeline, prompt, images, g, i, null, started, t => ttft ??= t, ct)).ToList();
                choices = await Task.WhenAll(tasks).ConfigureAwait(false);
                await http.Response.WriteAsJsonAsync(new
                {
                    id,
                    @object = "chat.completion",
                    created = DateTimeOffset.UtcNow.ToUnixTimeSeconds(),
                    model = options.EffectiveModelName,
                    system_fingerprint = (string?)null,
                    choices = choices.Select(c => new
                    {
                        index = c.Index,
                        message = new { role = "assistant", content = c.Result.Text, refusal = (string?)null },
                        logprobs = (object?)null,
                        finish_reason = FinishReasonText(c.Result.FinishReason),
                    }),
                    usage = Usage(choices),
                }, Json.Options, ct).ConfigureAwait(false);
            }
            promptTokens = choices.Count > 0 ? choices[0].Result.PromptTokens : promptTokens;
            completionTokens = choices.Sum(c => c.Result.GeneratedTokens);
        }
        catch (Exception e) when (http.RequestAborted.IsCancellationRequested && e is OperationCanceledException or IOException or ObjectDisposedException)
        {
            status = 499; // nginx's "client closed request": nobody is left to answer
        }
        catch (Exception e)
        {
            var error = ToOpenAIError(e, ct);
            status = error.Status;
            if (status >= 500 && status != 503) logger.LogError(e, "Chat completion {CompletionId} failed: {Message}", id, e.Message);
            else logger.LogInformation("Refused chat completion {CompletionId} ({Status} {Code}): {Message}", id, status, error.Code, error.Message);
            if (!http.Response.HasStarted)
            {
                try { await error.WriteAsync(http.Response).ConfigureAwait(false); }
                catch (Exception write) when (write is IOException or OperationCanceledException) { }
            }
            else if (stream)
            {
                // The stream is under way: the error goes out as an event, without [DONE], so clients see a failed stream.
                try { await WriteEventAsync(http, error.Body, CancellationToken.None).ConfigureAwait(false); }
                catch (Exception write) when (write is IOException or OperationCanceledException or ObjectDisposedException) { }
            }
        }
        finally
        {
            metrics.Release();
            metrics.RecordRequest(status, stream, started.Elapsed);
            logger.LogInformation("Chat completion {CompletionId} {Status} stream={Stream} prompt_tokens={PromptTokens} completion_tokens={CompletionTokens} ttft_ms={TtftMs} total_ms={TotalMs}",
                id, status, stream, promptTokens, completionTokens, ttft is double t ? Math.Round(t * 1000) : null, Math.Round(started.Elapsed.TotalMilliseconds));
        }
    }

    private async Task<ChatCompletionRequest> ReadRequestAsync(HttpContext http, CancellationToken ct)
    {
        // Kestrel enforces the limit as the body is read; a declared length over it is refused before reading.
        if (http.Request.ContentLength > options.MaxBodyBytes) throw TooLarge();
        var feature = http.Features.Get<IHttpMaxRequestBodySizeFeature>();
        if (feature is { IsReadOnly: false }) feature.MaxRequestBodySize = options.MaxBodyBytes;
        try
        {
            using var doc = await JsonDocument.ParseAsync(http.Request.Body, default, ct).ConfigureAwait(false);
            return ChatCompletionRequest.Parse(doc.RootElement);
        }
        catch (JsonException e) { throw new OpenAIErrorException(400, $"The request body is not valid JSON: {e.Message}", code: "invalid_json"); }
        catch (BadHttpRequestException e) when (e.StatusCode == StatusCodes.Status413PayloadTooLarge) { throw TooLarge(); }
        OpenAIErrorException TooLarge() => new(413, $"The request body is larger than the server's limit of {options.MaxBodyBytes} bytes", code: "request_too_large");
    }

    private static int CountPromptTokens(MultimodalPipeline pipeline, string prompt, int images) =>
        pipeline.CountPromptTokens(prompt, images);

    /// <summary>The library options a request stands for (choice <paramref name="index"/> samples with seed + index).</summary>
    internal GenerationOptions ToGenerationOptions(ChatCompletionRequest request, int index)
    {
        double temperature = request.Temperature ?? 1.0; // OpenAI's default
        double topP = request.TopP ?? 1.0;
        if (topP == 0) { temperature = 0; topP = 1; } // an empty nucleus keeps only the most likely token: greedy
        return new GenerationOptions
        {
            MaxNewTokens = Math.Min(request.MaxTokens ?? options.MaxTokens, options.MaxTokens),
            Temperature = temperature,
            TopP = topP,
            Seed = request.Seed is long s ? unchecked((int)(s ^ (s >> 32)) + index) : null,
            StopStrings = request.Stop,
        };
    }

    private async Task<Choice> RunChoiceAsync(MultimodalPipeline pipeline, string prompt, IReadOnlyList<ImageInput> images, GenerationOptions generation,
        int index, Action<int, string>? onText, Stopwatch started, Action<double> onFirstToken, CancellationToken ct)
    {
        int state = 0; // 0 no token yet, 1 generating, 2 finished: a cancelled run may still call back once afterwards
        try
        {
            var results = await pipeline.GenerateBatchAsync(new[] { new PromptRequest(prompt, images) }, generation, (_, piece) =>
            {
                if (Interlocked.CompareExchange(ref state, 1, 0) == 0)
                {
                    metrics.StartGenerating();
                    metrics.RecordFirstToken(started.Elapsed);
                    onFirstToken(started.Elapsed.TotalSeconds);
                }
                onText?.Invoke(index, piece);
            }, ct).ConfigureAwait(false);
            var r = results[0];
            metrics.RecordChoice(r.PromptTokens, r.GeneratedTokens, r.TokensPerSecond);
            return new Choice(index, r);
        }
        finally
        {
            if (Interlocked.Exchange(ref state, 2) == 1) metrics.StopGenerating();
        }
    }

    private async Task<IReadOnlyList<Choice>> StreamAsync(HttpContext http, MultimodalPipeline pipeline, ChatCompletionRequest request, string id,
        string prompt, IReadOnlyList<ImageInput> images, List<GenerationOptions> generation, Stopwatch started, Action<double> onFirstToken, CancellationToken ct)
    {
        var pieces = Channel.CreateUnbounded<(int Index, string Text)>(new UnboundedChannelOptions { SingleReader = true });
        var tasks = generation.Select((g, i) => RunChoiceAsync(pipeline, prompt, images, g, i, (row, text) => pieces.Writer.TryWrite((row, text)),
            started, onFirstToken, ct)).ToList();
        var all = Task.WhenAll(tasks);
        _ = all.ContinueWith(t => pieces.Writer.TryComplete(t.IsFaulted ? t.Exception!.InnerException : t.IsCanceled ? new OperationCanceledException(ct) : null),
            CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        object Chunk(IEnumerable<object> choices, object? usage = null) => request.IncludeUsage
            ? new { id, @object = "chat.completion.chunk", created, model = options.EffectiveModelName, system_fingerprint = (string?)null, choices, usage }
            : new { id, @object = "chat.completion.chunk", created, model = options.EffectiveModelName, system_fingerprint = (string?)null, choices };
        static object Delta(int index, object delta, string? finish) => new { index, delta, logprobs = (object?)null, finish_reason = finish };

        try
        {
            // Wait for the first piece (or the end) before committing to 200: earlier failures keep their status.
            await pieces.Reader.WaitToReadAsync(ct).ConfigureAwait(false);
            http.Response.ContentType = "text/event-stream; charset=utf-8";
            http.Response.Headers.CacheControl = "no-cache";
            http.Response.Headers["X-Accel-Buffering"] = "no"; // proxies must not hold tokens back
            http.Features.Get<IHttpResponseBodyFeature>()?.DisableBuffering();
            await WriteEventAsync(http, Chunk(generation.Select((_, i) => Delta(i, new { role = "assistant", content = "" }, null))), ct).ConfigureAwait(false);
            while (await pieces.Reader.WaitToReadAsync(ct).ConfigureAwait(false))
                while (pieces.Reader.TryRead(out var p))
                    await WriteEventAsync(http, Chunk(new[] { Delta(p.Index, new { content = p.Text }, null) }), ct).ConfigureAwait(false);
        }
        catch
        {
            _ = all.ContinueWith(static t => _ = t.Exception, TaskScheduler.Default); // observed: the caller reports the first error
            throw;
        }
        var choices = await all.ConfigureAwait(false);
        foreach (var c in choices)
            await WriteEventAsync(http, Chunk(new[] { Delta(c.Index, new { }, FinishReasonText(c.Result.FinishReason)) }), ct).ConfigureAwait(false);
        if (request.IncludeUsage) await WriteEventAsync(http, Chunk(Array.Empty<object>(), Usage(choices)), ct).ConfigureAwait(false);
        await http.Response.WriteAsync("data: [DONE]\n\n", ct).ConfigureAwait(false);
        await http.Response.Body.FlushAsync(ct).ConfigureAwait(false);
        return choices;
    }

    private static async Task WriteEventAsync(HttpContext http, object payload, CancellationToken ct)
    {
        await http.Response.WriteAsync("data: " + JsonSerializer.Serialize(payload, Json.Options) + "\n\n", ct).ConfigureAwait(false);
        await http.Response.Body.FlushAsync(ct).ConfigureAwait(false);
    }

    private static object Usage(IReadOnlyList<Choice> choices)
    {
        int prompt = choices.Count > 0 ? choices[0].Result.PromptTokens : 0;
        int completion = choices.Sum(c => c.Result.GeneratedTokens);
        return new { prompt_tokens = prompt, completion_tokens = completion, total_tokens = prompt + completion };
    }

    internal static string FinishReasonText(FinishReason reason) => reason switch
    {
        FinishReason.EndOfSequence or FinishReason.StopString => "stop",
        _ => "length",
    };

    private OpenAIErrorException ToOpenAIError(Exception e, CancellationToken ct) => e switch
    {
        OpenAIErrorException o => o,
        ImageInputException i => new OpenAIErrorException(400, i.Message, code: "invalid_image", inner: i),
        PromptException p => new OpenAIErrorException(400, p.Message, param: "messages", inner: p),
        OperationCanceledException when ct.IsCancellationRequested =>
            new OpenAIErrorException(504, $"The request took longer than the server's limit of {options.RequestTimeout.TotalSeconds:0} s", "timeout_error", code: "request_timeout"),
        ObjectDisposedException => new OpenAIErrorException(503, "The server is shutting down", "server_error", code: "shutting_down") { RetryAfterSeconds = 5 },
        _ => new OpenAIErrorException(500, "The server failed to complete the request", "server_error", inner: e),
    };
}
