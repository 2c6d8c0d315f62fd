using System.Runtime.CompilerServices;
using System.Threading.Channels;
using Microsoft.Extensions.AI;
using ShareGPT4V.Generation;
using OurMessage = ShareGPT4V.Conversation.ChatMessage;
using OurRole = ShareGPT4V.Conversation.ChatRole;

namespace ShareGPT4V.Hosting;

/// <summary>
/// <see cref="IChatClient"/> (Microsoft.Extensions.AI) over a <see cref="MultimodalPipeline"/>. Images are
/// <see cref="DataContent"/> items with an image media type, attached to the user message that carries them; a system
/// message replaces the template's system prompt. The response carries usage and the finish reason. Safe to call
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
        string? system = null;
        var turns = new List<OurMessage>();
        var images = new List<ImageInput>();
        foreach (var m in messages)
        {
            var text = string.Concat(m.Contents.OfType<TextContent>().Select(t => t.Text));
            if (m.Role == ChatRole.System) { system = system is null ? text : system + "\n" + text; continue; }
            if (m.Role == ChatRole.User)
            {
                var pics = m.Contents.OfType<DataContent>().Where(d => d.HasTopLevelMediaType("image")).ToList();
                images.AddRange(pics.Select((d, i) => ImageInput.FromBytes(d.Data.ToArray(), d.Name ?? $"image {images.Count + i + 1}")));
                turns.Add(new OurMessage(OurRole.User, text, pics.Count));
            }
            else if (m.Role == ChatRole.Assistant)
                turns.Add(new OurMessage(OurRole.Assistant, text));
            // Other roles (tool) carry nothing this model understands: ignored, as other clients do.
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
