using System.Runtime.CompilerServices;
using System.Threading.Channels;
using Microsoft.Extensions.AI;
using ShareGPT4V.Generation;
using OurMessage = ShareGPT4V.Conversation.ConversationMessage;
using OurRole = ShareGPT4V.Conversation.ConversationRole;

namespace ShareGPT4V.Hosting;

/// <summary>
/// <see cref="IChatClient"/> (Microsoft.Extensions.AI) over a <see cref="MultimodalPipeline"/>. Images are
/// <see cref="DataContent"/> items with an image media type (or <see cref="UriContent"/> with a <c>data:</c> URI), attached
/// to the user message that carries them; a system message replaces the template's system prompt. Anything else the
/// model cannot take (other media types, URLs to fetch, tool messages and tools, JSON response formats, frequency or
/// presence penalties) throws <see cref="NotSupportedException"/> naming the message and content, never silence. The response carries usage and the finish reason. Safe to call
/// concurrently (requests queue on the pipeline's inference thread); <see cref="ChatOptions"/> are never modified.
/// </summary>
public sealed class ShareGPT4VChatClient : IChatClient
{
    private readonly MultimodalPipeline? _pipeline;
    private readonly ShareGPT4VModelLoader? _loader;
    private readonly bool _ownsPipeline;
    private readonly ChatClientMetadata _metadata;

    /// <summary>A client over a loaded pipeline; <paramref name="ownsPipeline"/> makes <see cref="Dispose"/> dispose it.</summary>
    public ShareGPT4VChatClient(MultimodalPipeline pipeline, bool ownsPipeline = false)
    {
        ArgumentNullException.ThrowIfNull(pipeline);
        _pipeline = pipeline;
        _ownsPipeline = ownsPipeline;
        _metadata = new ChatClientMetadata("ShareGPT4V", null, ModelId(pipeline.Options.ModelPath));
    }

    /// <summary>A client over a model that may still be loading: each request waits (asynchronously) for the load.</summary>
    public ShareGPT4VChatClient(ShareGPT4VModelLoader loader)
    {
        ArgumentNullException.ThrowIfNull(loader);
        _loader = loader;
        _metadata = new ChatClientMetadata("ShareGPT4V", null, ModelId(loader.ModelPath));
    }

    /// <summary>A hub id as it is; a folder by its name.</summary>
    private static string ModelId(string modelPath) =>
        !Directory.Exists(modelPath) && ShareGPT4V.Hub.HuggingFaceHub.IsRepoId(modelPath) ? modelPath : Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(modelPath)));

    private ValueTask<MultimodalPipeline> PipelineAsync(CancellationToken cancellationToken) =>
        _pipeline is not null ? ValueTask.FromResult(_pipeline) : new ValueTask<MultimodalPipeline>(_loader!.GetPipelineAsync(cancellationToken));

    /// <inheritdoc />
    public async Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        var pipeline = await PipelineAsync(cancellationToken).ConfigureAwait(false);
        var (request, generation) = Translate(pipeline, messages, options);
        var results = await pipeline.GenerateBatchAsync(new[] { request }, generation, null, cancellationToken).ConfigureAwait(false);
        var r = results[0];
        return new ChatResponse(new ChatMessage(ChatRole.Assistant, r.Text))
        {
            FinishReason = Map(r.FinishReason),
            ModelId = _metadata.DefaultModelId,
            Usage = new UsageDetails { InputTokenCount = r.PromptTokens, OutputTokenCount = r.GeneratedTokens, TotalTokenCount = r.PromptTokens + r.GeneratedTokens },
        };
    }

    /// <inheritdoc />
    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var pipeline = await PipelineAsync(cancellationToken).ConfigureAwait(false);
        var (request, generation) = Translate(pipeline, messages, options);
        var channel = Channel.CreateUnbounded<string>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        var task = pipeline.GenerateBatchAsync(new[] { request }, generation, (_, piece) => channel.Writer.TryWrite(piece), cancellationToken);
        _ = task.ContinueWith(t => channel.Writer.TryComplete(t.Exception?.InnerException), CancellationToken.None,
            TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        var responseId = Guid.NewGuid().ToString("N");
        await foreach (var piece in channel.Reader.ReadAllAsync(CancellationToken.None).ConfigureAwait(false))
            yield return new ChatResponseUpdate(ChatRole.Assistant, piece) { ResponseId = responseId, ModelId = _metadata.DefaultModelId };
        var r = (await task.ConfigureAwait(false))[0];
        yield return new ChatResponseUpdate
        {
            Role = ChatRole.Assistant,
            ResponseId = responseId,
            ModelId = _metadata.DefaultModelId,
            FinishReason = Map(r.FinishReason),
            Contents = { new UsageContent(new UsageDetails { InputTokenCount = r.PromptTokens, OutputTokenCount = r.GeneratedTokens, TotalTokenCount = r.PromptTokens + r.GeneratedTokens }) },
        };
    }

    private static (PromptRequest, GenerationOptions) Translate(MultimodalPipeline pipeline, IEnumerable<ChatMessage> messages, ChatOptions? options)
    {
        RefuseUnsupportedOptions(options);
        string? system = null;
        var turns = new List<OurMessage>();
        var images = new List<ImageInput>();
        int index = 0;
        foreach (var m in messages)
        {
            index++;
            if (m.Role != ChatRole.System && m.Role != ChatRole.User && m.Role != ChatRole.Assistant)
                throw new NotSupportedException($"Message {index} has the role '{m.Role}': this model takes system, user and assistant messages only (no tools).");
            var text = new System.Text.StringBuilder();
            int pictures = 0;
            foreach (var content in m.Contents)
            {
                switch (content)
                {
                    case TextContent t:
                        text.Append(t.Text);
                        break;
                    case DataContent d when d.HasTopLevelMediaType("image") && m.Role == ChatRole.User:
                        images.Add(ImageInput.FromBytes(d.Data.ToArray(), d.Name ?? $"image {images.Count + 1}"));
                        pictures++;
                        break;
                    case UriContent u when u.Uri.Scheme == "data" && m.Role == ChatRole.User:
                        images.Add(FromDataUri(u.Uri.OriginalString, index, images.Count + 1));
                        pictures++;
                        break;
                    case UsageContent:
                        break; // a record of an earlier response's usage: carries nothing for the prompt
                    default:
                        throw new NotSupportedException(Describe(content, m.Role, index));
                }
            }
            if (m.Role == ChatRole.System) system = system is null ? text.ToString() : system + "\n" + text;
            else if (m.Role == ChatRole.User) turns.Add(new OurMessage(OurRole.User, text.ToString(), pictures));
            else turns.Add(new OurMessage(OurRole.Assistant, text.ToString()));
        }
        var d0 = pipeline.Options.Generation;
        var generation = d0 with
        {
            MaxNewTokens = options?.MaxOutputTokens ?? d0.MaxNewTokens,
            Temperature = options?.Temperature ?? d0.Temperature,
            TopP = options?.TopP ?? d0.TopP,
            TopK = options?.TopK ?? d0.TopK,
            Seed = options?.Seed is long s ? unchecked((int)s) : d0.Seed,
            StopStrings = options?.StopSequences is { Count: > 0 } stops ? d0.StopStrings.Concat(stops).ToList() : d0.StopStrings,
        };
        return (new PromptRequest(pipeline.BuildPrompt(turns, system), images), generation);
    }

    /// <summary>Options this model cannot honour are refused rather than silently ignored.</summary>
    private static void RefuseUnsupportedOptions(ChatOptions? options)
    {
        if (options is null) return;
        if (options.Tools is { Count: > 0 })
            throw new NotSupportedException("ChatOptions.Tools: ShareGPT4V models do not call tools.");
        if (options.ToolMode is RequiredChatToolMode)
            throw new NotSupportedException("ChatOptions.ToolMode requires a tool call: ShareGPT4V models do not call tools.");
        if (options.ResponseFormat is not null and not ChatResponseFormatText)
            throw new NotSupportedException("ChatOptions.ResponseFormat: only plain text answers are supported (no JSON mode or schema).");
        if (options.FrequencyPenalty is not null || options.PresencePenalty is not null)
            throw new NotSupportedException("ChatOptions.FrequencyPenalty / PresencePenalty are not supported; use the pipeline's GenerationOptions.RepetitionPenalty.");
    }

    private static string Describe(AIContent content, ChatRole role, int index) => content switch
    {
        DataContent d when d.HasTopLevelMediaType("image") =>
            $"Message {index} ({role}) holds an image: images are taken in user messages only.",
        DataContent d => $"Message {index} holds data of media type '{d.MediaType}': only images (image/*) are supported.",
        UriContent u when u.Uri.Scheme == "data" => $"Message {index} ({role}) holds an image: images are taken in user messages only.",
        UriContent u => $"Message {index} refers to '{u.Uri.Scheme}:' content ({u.MediaType}): images must be sent as bytes " +
                        "(DataContent or a data: URI); the library does not fetch URLs.",
        _ => $"Message {index} holds {content.GetType().Name}, which this model cannot take (text and images only).",
    };

    /// <summary>An image from a <c>data:</c> URI given as <see cref="UriContent"/> (DataContent parses its own).</summary>
    private static ImageInput FromDataUri(string uri, int message, int number)
    {
        DataContent parsed;
        try { parsed = new DataContent(uri); }
        catch (Exception e) when (e is ArgumentException or FormatException or UriFormatException)
        {
            throw new ImageInputException($"Message {message}: the data: URI of image {number} is malformed ({e.Message})");
        }
        if (!parsed.HasTopLevelMediaType("image"))
            throw new NotSupportedException($"Message {message} holds a data: URI of media type '{parsed.MediaType}': only images (image/*) are supported.");
        return ImageInput.FromBytes(parsed.Data.ToArray(), $"image {number}");
    }

    private static ChatFinishReason Map(FinishReason r) =>
        r is FinishReason.Length or FinishReason.ContextFull ? ChatFinishReason.Length : ChatFinishReason.Stop;

    /// <summary>Answers <see cref="ChatClientMetadata"/>, the <see cref="MultimodalPipeline"/> (once loaded), the <see cref="ShareGPT4VModelLoader"/> and this client.</summary>
    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        if (serviceKey is not null) return null;
        if (serviceType == typeof(ChatClientMetadata)) return _metadata;
        var pipeline = _pipeline ?? _loader?.TryGetPipeline();
        if (pipeline is not null && serviceType.IsInstanceOfType(pipeline)) return pipeline;
        if (_loader is not null && serviceType.IsInstanceOfType(_loader)) return _loader;
        return serviceType.IsInstanceOfType(this) ? this : null;
    }

    /// <summary>Disposes the pipeline when this client owns it; a loader's pipeline belongs to the container.</summary>
    public void Dispose()
    {
        if (_ownsPipeline) _pipeline?.Dispose();
    }
}
