using System.Diagnostics;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using ShareGPT4V.Checkpoints;
using ShareGPT4V.Devices;
using ShareGPT4V.Hub;

namespace ShareGPT4V.Hosting;

/// <summary>Where one registered model's load stands.</summary>
public enum ShareGPT4VModelStatus
{
    /// <summary>Nothing has asked for the model yet (no host started it, nothing resolved it).</summary>
    NotStarted,
    /// <summary>Downloading or reading weights.</summary>
    Loading,
    /// <summary>Loaded; requests run.</summary>
    Ready,
    /// <summary>The load failed; <see cref="ShareGPT4VModelLoader.Error"/> says why. Requests fail with that error.</summary>
    Failed,
}

/// <summary>
/// Loads one model registered with <c>AddShareGPT4V</c> exactly once, on whichever comes first: the host starting
/// (<see cref="ShareGPT4VLoaderService"/>), a request through the <c>IChatClient</c> (which waits asynchronously), or
/// resolving <see cref="MultimodalPipeline"/> (which blocks until loaded). Exposes the status for readiness checks
/// (<see cref="ShareGPT4VHealthCheck"/>) and owns the pipeline: disposed with the container.
/// </summary>
public sealed class ShareGPT4VModelLoader : IDisposable
{
    private readonly PipelineOptions _options;
    private readonly ILogger _logger;
    private readonly ILogger<MultimodalPipeline>? _pipelineLogger;
    private readonly object _gate = new();
    private readonly CancellationTokenSource _disposing = new();
    private Task<MultimodalPipeline>? _load;
    private long _bytesLoaded, _bytesTotal;

    internal ShareGPT4VModelLoader(object? serviceKey, ShareGPT4VOptions options, IDeviceProvider? deviceProvider, ILoggerFactory? loggerFactory)
    {
        ServiceKey = serviceKey;
        ModelPath = options.ModelPath;
        _logger = loggerFactory?.CreateLogger<ShareGPT4VModelLoader>() ?? (ILogger)NullLogger.Instance;
        _pipelineLogger = loggerFactory?.CreateLogger<MultimodalPipeline>();
        // A device provider registered by a device package (AddShareGPT4VCuda) decides the device; else CPU only.
        _options = options.ToPipelineOptions() with { DeviceProvider = deviceProvider };
        _options = _options with { Hub = (_options.Hub ?? new HubOptions()) with { Progress = new LoggedDownload(this) } };
    }

    /// <summary>The key the model was registered under (null for <c>AddShareGPT4V</c> without a key).</summary>
    public object? ServiceKey { get; }
    /// <summary>The model folder or hub id as configured.</summary>
    public string ModelPath { get; }
    /// <summary>Where the load stands.</summary>
    public ShareGPT4VModelStatus Status =>
        _load is not { } t ? ShareGPT4VModelStatus.NotStarted
        : t.IsCompletedSuccessfully ? ShareGPT4VModelStatus.Ready
        : t.IsCompleted ? ShareGPT4VModelStatus.Failed
        : ShareGPT4VModelStatus.Loading;
    /// <summary>Why the load failed, once <see cref="Status"/> is <see cref="ShareGPT4VModelStatus.Failed"/>.</summary>
    public Exception? Error => _load is { IsFaulted: true } t ? t.Exception!.InnerException : _load is { IsCanceled: true } ? new OperationCanceledException("The load was cancelled") : null;
    /// <summary>Fraction of the weights read so far (0 to 1), while loading.</summary>
    public double Progress => Interlocked.Read(ref _bytesTotal) is > 0 and var total ? (double)Interlocked.Read(ref _bytesLoaded) / total : Status == ShareGPT4VModelStatus.Ready ? 1 : 0;

    /// <summary>Starts the load in the background if it has not started; returns at once.</summary>
    public void StartLoading() => _ = Start();

    /// <summary>The pipeline, loading it first if needed; waits asynchronously (the wait, not the load, is cancelled by <paramref name="cancellationToken"/>).</summary>
    public Task<MultimodalPipeline> GetPipelineAsync(CancellationToken cancellationToken = default) => Start().WaitAsync(cancellationToken);

    /// <summary>The pipeline if it is loaded, else null.</summary>
    public MultimodalPipeline? TryGetPipeline() => _load is { IsCompletedSuccessfully: true } t ? t.Result : null;

    private Task<MultimodalPipeline> Start()
    {
        ObjectDisposedException.ThrowIf(_disposing.IsCancellationRequested, this);
        lock (_gate)
            return _load ??= Task.Run(LoadAsync);
    }

    private async Task<MultimodalPipeline> LoadAsync()
    {
        var sw = Stopwatch.StartNew();
        _logger.LogInformation("Loading ShareGPT4V model {Name} from {ModelPath}", Name, ModelPath);
        int lastDecile = -1;
        var progress = new SyncLoadProgress(p =>
        {
            Interlocked.Exchange(ref _bytesTotal, p.BytesTotal);
            Interlocked.Exchange(ref _bytesLoaded, p.BytesLoaded);
            int decile = p.BytesTotal > 0 ? (int)(p.BytesLoaded * 10 / p.BytesTotal) : 0;
            if (decile > Interlocked.Exchange(ref lastDecile, decile) && decile is > 0 and < 10)
                _logger.LogInformation("Loading ShareGPT4V model {Name}: {Percent}% of the weights read", Name, decile * 10);
        });
        try
        {
            var pipeline = await MultimodalPipeline.LoadAsync(_options, progress, _pipelineLogger, _disposing.Token).ConfigureAwait(false);
            _logger.LogInformation("ShareGPT4V model {Name} ready in {Seconds:F1} s ({Placement})", Name, sw.Elapsed.TotalSeconds, pipeline.Placement.Description);
            if (_disposing.IsCancellationRequested) { pipeline.Dispose(); throw new ObjectDisposedException(nameof(ShareGPT4VModelLoader)); }
            return pipeline;
        }
        catch (Exception e)
        {
            _logger.LogError(e, "Loading ShareGPT4V model {Name} from {ModelPath} failed: {Message}", Name, ModelPath, e.Message);
            throw;
        }
    }

    private string Name => ServiceKey?.ToString() ?? "(default)";

    /// <summary>Cancels a load in progress and disposes the loaded pipeline.</summary>
    public void Dispose()
    {
        if (_disposing.IsCancellationRequested) return;
        _disposing.Cancel();
        TryGetPipeline()?.Dispose();
    }

    /// <summary>Reports synchronously on the loading thread (Progress&lt;T&gt; would post to the thread pool, out of order).</summary>
    private sealed class SyncLoadProgress(Action<LoadProgress> report) : IProgress<LoadProgress>
    {
        public void Report(LoadProgress value) => report(value);
    }

    /// <summary>Logs each hub file as its download starts and ends.</summary>
    private sealed class LoggedDownload(ShareGPT4VModelLoader owner) : IProgress<HubDownloadProgress>
    {
        private string? _file;
        public void Report(HubDownloadProgress p)
        {
            if (p.FileName != _file)
            {
                _file = p.FileName;
                owner._logger.LogInformation("ShareGPT4V model {Name}: downloading {Repo}/{File} ({Index}/{Count}, {MiB:F1} MiB)",
                    owner.Name, p.RepoId, p.FileName, p.FileIndex, p.FileCount, p.TotalBytes / 1048576.0);
            }
        }
    }
}
