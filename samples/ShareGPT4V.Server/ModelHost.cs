using ShareGPT4V.Generation;
using ShareGPT4V.Preprocessing;

namespace ShareGPT4V.Server;

/// <summary>
/// Loads the pipeline in the background once the server listens, so /health can answer 503 while loading and
/// 200 after; a failed load stops the server with exit code 1. Disposes the pipeline at shutdown.
/// </summary>
public sealed class ModelHost(ServerOptions options, ILogger<ModelHost> logger, ILoggerFactory loggers, IHostApplicationLifetime lifetime)
    : BackgroundService
{
    private volatile MultimodalPipeline? _pipeline;
    private readonly TaskCompletionSource _loaded = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>The loaded pipeline, or null while loading.</summary>
    public MultimodalPipeline? Pipeline => _pipeline;

    /// <summary>Completes when the model is loaded (faults if the load fails).</summary>
    public Task Loaded => _loaded.Task;

    /// <summary>The pipeline options the server's options stand for.</summary>
    public static PipelineOptions ToPipelineOptions(ServerOptions o)
    {
        var defaults = new PipelineOptions();
        return new PipelineOptions
        {
            ModelPath = o.ModelPath,
            MmprojPath = o.MmprojPath,
            DType = o.DType,
            Template = o.Template,
            Threads = o.Threads,
            ContextLength = o.ContextLength,
            MaxBatchSize = o.MaxBatchSize,
            // Every admitted request fits the engine's queue, so none waits unseen in front of it.
            MaxQueueLength = Math.Max(64, o.MaxQueue * o.MaxChoices),
            Overflow = PromptOverflow.ClampNewTokens,
            Generation = new GenerationOptions { MaxNewTokens = o.MaxTokens },
            ImageLimits = ImageLoadOptions.Default with { MaxFileBytes = o.MaxImageBytes, MaxPixels = o.MaxImagePixels },
            ImageCacheBytes = o.ImageCacheBytes ?? defaults.ImageCacheBytes,
            PrefixCacheBytes = o.PrefixCacheBytes ?? defaults.PrefixCacheBytes,
        };
    }

    /// <inheritdoc />
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        try
        {
            var pipeline = await MultimodalPipeline.LoadAsync(ToPipelineOptions(options), logger: loggers.CreateLogger<MultimodalPipeline>(),
                cancellationToken: stoppingToken).ConfigureAwait(false);
            _pipeline = pipeline;
            _loaded.TrySetResult();
            logger.LogInformation("Serving model {Model} as '{ModelName}'", options.ModelPath, options.EffectiveModelName);
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
            _loaded.TrySetCanceled(stoppingToken);
        }
        catch (Exception e)
        {
            logger.LogCritical(e, "Could not load the model {Model}: {Message}", options.ModelPath, e.Message);
            _loaded.TrySetException(e);
            Environment.ExitCode = 1;
            lifetime.StopApplication();
        }
    }

    /// <inheritdoc />
    public override void Dispose()
    {
        _pipeline?.Dispose();
        base.Dispose();
    }
}
