using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using ShareGPT4V.Checkpoints;
using ShareGPT4V.Configuration;
using ShareGPT4V.Conversation;
using ShareGPT4V.Devices;
using ShareGPT4V.Generation;
using ShareGPT4V.Hub;
using ShareGPT4V.Preprocessing;
using ShareGPT4V.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V;

/// <summary>One prompt of a batch: text with <c>&lt;image&gt;</c> markers (as the template renders it) and its images.</summary>
public sealed record PromptRequest(string Prompt, IReadOnlyList<ImageInput> Images);

/// <summary>
/// The facade over a loaded model, tokenizer and image processor: caption, chat (also streamed) and batches.
/// <para>
/// Threading: every model computation runs on one dedicated inference thread fed by a bounded queue
/// (<see cref="PipelineOptions.MaxQueueLength"/>), so the pipeline may be called from any number of threads at once.
/// That thread drives a <see cref="GenerationEngine"/> (continuous batching): waiting rows take free sequence slots in
/// arrival order (at most <see cref="PipelineOptions.MaxBatchSize"/>), each is prefilled alone, then every decode step
/// advances all active rows together; a finished or cancelled row frees its slot at once. All per-request state
/// (samplers, detokenizers, outputs, KV rows) belongs to the request, so an answer does not depend on what else runs.
/// When the queue is full, callers wait asynchronously for room. Images are decoded and preprocessed on the
/// caller's side, in parallel with inference. Cancellation completes the caller's task at once whether the request
/// is waiting for room, queued or running; a running request stops computing after its current token.
/// Dispose cancels everything pending and frees the native memory; it may be called from any thread, including a
/// text callback on the inference thread.
/// </para>
/// </summary>
public sealed class MultimodalPipeline : IDisposable
{
    private readonly LlavaModel _model;
    private readonly LlavaTokenizer _tokenizer;
    private readonly ClipImageProcessor _processor;
    private readonly ConversationTemplate _template;
    private readonly ILogger _logger;
    private readonly Channel<PendingRow> _queue;
    private readonly Thread _worker;
    private readonly CancellationTokenSource _disposing = new();
    private readonly int _context;
    private readonly GenerationEngine _engine; // driven by the inference thread only
    private readonly string _imageSettings;    // what, besides the bytes, decides an image's pixels
    private int _disposed;
    private volatile bool _releaseOnWorkerExit; // Dispose was called on the inference thread itself

    /// <summary>The options the pipeline was loaded with.</summary>
    public PipelineOptions Options { get; }
    internal ModelFolder Folder { get; }
    internal LlavaConfig Config => _model.Config;
    internal LlavaTokenizer Tokenizer => _tokenizer;
    /// <summary>The conversation template prompts are built with.</summary>
    public ConversationTemplate Template => _template;
    /// <summary>The model; use only from inside the pipeline's own requests or when no request is running.</summary>
    internal LlavaModel Model => _model;
    /// <summary>The context window in tokens: prompt, image embeddings and answer together.</summary>
    public int ContextLength => _context;
    /// <summary>The device and dtype the model runs on, and the memory estimate they were checked against.</summary>
    public DevicePlacement Placement { get; }

    /// <summary>Requests accepted and waiting for the inference thread (at most <see cref="PipelineOptions.MaxQueueLength"/>).</summary>
    public int QueuedRequests => _queue.Reader.Count;

    private MultimodalPipeline(PipelineOptions options, ModelFolder folder, LlavaModel model, LlavaTokenizer tokenizer,
        ClipImageProcessor processor, ConversationTemplate template, ILogger logger, DevicePlacement placement)
    {
        Options = options;
        Placement = placement;
        Folder = folder;
        _model = model;
        _tokenizer = tokenizer;
        _processor = processor;
        _template = template;
        _logger = logger;
        _context = Math.Min(options.ContextLength ?? model.Config.Text.MaxPositionEmbeddings, model.Config.Text.MaxPositionEmbeddings);
        _engine = new GenerationEngine(model, tokenizer, new EngineOptions
        {
            MaxBatchSize = options.MaxBatchSize, ContextLength = _context, Overflow = options.Overflow,
            ImageCacheBytes = options.ImageCacheBytes, PrefixCacheBytes = options.PrefixCacheBytes,
        });
        _imageSettings = System.Text.Json.JsonSerializer.Serialize(processor.Config) + "|" + processor.AspectMode + "|" + options.ImageLimits;
        _queue = Channel.CreateBounded<PendingRow>(new BoundedChannelOptions(options.MaxQueueLength)
        {
            SingleReader = true,
            FullMode = BoundedChannelFullMode.Wait,
        });
        _worker = new Thread(WorkerLoop) { IsBackground = true, Name = "ShareGPT4V inference" };
        _worker.Start();
    }

    /// <summary>Loads a model folder (either layout), its tokenizer and image processor.</summary>
    public static MultimodalPipeline Load(PipelineOptions options, IProgress<LoadProgress>? progress = null,
        ILogger? logger = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        logger ??= NullLogger.Instance;
        var sw = Stopwatch.StartNew();
        var quantization = Modeling.QuantizationFormats.TryParse(options.DType);
        bool gguf = options.MmprojPath is not null || Checkpoints.Gguf.GgufModel.IsGgufPath(options.ModelPath);
        // A hub id (owner/name) that is not a local folder is fetched into the hub cache, its CLIP tower repository too.
        var (modelPath, towerPath) = gguf ? (options.ModelPath, options.VisionTowerPath)
            : Task.Run(() => ModelSource.ResolveAsync(options.ModelPath, options.VisionTowerPath, options.Hub, cancellationToken),
                cancellationToken).GetAwaiter().GetResult();
        var folder = gguf ? ModelFolder.OpenGguf(modelPath, options.MmprojPath) : ModelFolder.Open(modelPath, towerPath);
        // The device is decided before anything touches libtorch: a CUDA provider may have to load it from elsewhere.
        DevicePlacement placement;
        try
        {
            placement = ResolvePlacement(quantization is null ? options : options with { DType = "float32" }, folder.Config, logger);
            LibTorchRuntime.EnsureLoaded(placement.Device.type); // a missing runtime package is named here, not deep inside
        }
        catch (TypeInitializationException e) { throw LibTorchRuntime.Missing(e); }
        if (options.Threads is int threads) torch.set_num_threads(threads);
        LlavaTokenizer tokenizer;
        PreprocessorConfig pre;
        string? converted = null;
        if (gguf)
        {
            using (var llm = Checkpoints.Gguf.GgufFile.Open(folder.ModelPath))
            {
                tokenizer = Checkpoints.Gguf.GgufModel.ReadTokenizer(llm);
                converted = Checkpoints.Gguf.GgufModel.ConvertedAtLoad(llm);
            }
            using (var mm = Checkpoints.Gguf.GgufFile.Open(folder.MmprojPath!)) pre = Checkpoints.Gguf.GgufModel.ReadPreprocessor(mm, folder.Config.Vision);
        }
        else
        {
            tokenizer = LlavaTokenizer.Load(folder.ModelPath);
            pre = folder.PreprocessorConfigPath is { } p
                ? PreprocessorConfig.Load(p)
                : new PreprocessorConfig { ShortestEdge = folder.Config.Vision.ImageSize, CropHeight = folder.Config.Vision.ImageSize, CropWidth = folder.Config.Vision.ImageSize };
        }
        var aspect = options.ImageAspect ?? ImageAspectModes.FromConfigValue(folder.Config.ImageAspectRatio);
        var processor = new ClipImageProcessor(pre, aspect);
        CheckProcessorMatchesTower(processor, folder.Config.Vision, folder.PreprocessorConfigPath); // before any weight is read
        var template = options.Template is { } name
            ? ConversationTemplates.Get(name)
            : ConversationTemplates.ChooseDefault(folder.Config.ModelType, folder.Config.Layout == CheckpointLayout.LlavaHf,
                Path.GetFileName(folder.ModelPath), folder.Config.ConversationTemplate);
        // A GGUF model on the CPU with the default dtype keeps every tensor as the file stores it (F16 stays F16, Q4_0
        // blocks are used as they are; Q4_K / Q6_K / Q5_0 become Q8_0).
        bool asStored = gguf && quantization is null && DTypeChoice.Parse(options.DType) is null && placement.Device.type == DeviceType.CPU;
        var model = ModelLoader.Load(folder, new LoadOptions
        {
            DType = asStored ? null : placement.DType, Device = placement.Device, VisionTowerPath = towerPath, Quantization = quantization,
        }, progress, cancellationToken);
        if (quantization is not null || gguf)
            logger.LogInformation("Weight storage: {Storage}", Modeling.WeightStorage.Describe(model));
        if (converted is not null && asStored)
            logger.LogInformation("GGUF {Types} tensors were converted to Q8_0 at load (the kernels run 32-weight blocks; see docs/quantization.md)", converted);
        logger.LogInformation("Loaded {Model} ({Layout}, {Layers} layers, template {Template}) on {Placement} in {Seconds:F2} s",
            folder.ModelPath, folder.Config.Layout, folder.Config.Text.NumHiddenLayers, template.Name, placement.Description, sw.Elapsed.TotalSeconds);
        return new MultimodalPipeline(options, folder, model, tokenizer, processor, template, logger, placement);
    }

    /// <summary>Loads on a thread-pool thread (loading is CPU- and IO-bound).</summary>
    public static Task<MultimodalPipeline> LoadAsync(PipelineOptions options, IProgress<LoadProgress>? progress = null,
        ILogger? logger = null, CancellationToken cancellationToken = default) =>
        Task.Run(() => Load(options, progress, logger, cancellationToken), cancellationToken);

    /// <summary>
    /// The processor must produce exactly the tower's image size; otherwise every image request would fail inside the
    /// model. Refuse the pipeline once, naming the file, instead.
    /// </summary>
    private static void CheckProcessorMatchesTower(ClipImageProcessor processor, ClipVisionConfig vision, string? file)
    {
        var c = processor.Config;
        (int H, int W)? output = c.DoCenterCrop ? (c.CropHeight, c.CropWidth)
            : !c.DoResize || c.ShortestEdge is not null ? null : (c.ResizeHeight!.Value, c.ResizeWidth!.Value);
        if (output != (vision.ImageSize, vision.ImageSize))
            throw new ModelConfigurationException(
                output is { } o
                    ? $"The image processor produces {o.W}x{o.H} images but the vision tower takes {vision.ImageSize}x{vision.ImageSize}"
                    : $"The image processor keeps each image's aspect ratio (no center crop) but the vision tower takes exactly {vision.ImageSize}x{vision.ImageSize}",
                file, c.DoCenterCrop ? "crop_size" : "size");
    }

    private static DevicePlacement ResolvePlacement(PipelineOptions options, LlavaConfig config, ILogger logger)
    {
        int context = Math.Min(options.ContextLength ?? config.Text.MaxPositionEmbeddings, config.Text.MaxPositionEmbeddings);
        var request = new DeviceResolutionRequest
        {
            Device = options.Device, DType = options.DType, AllowCpuFallback = options.AllowCpuFallback, Config = config,
            Positions = context + 1, Batch = options.MaxBatchSize, // exactly the KV cache the engine allocates
        };
        return (options.DeviceProvider ?? CpuDeviceProvider.Instance).Resolve(request, logger);
    }

    // ---------------------------------------------------------------- public requests

    /// <summary>Captions one image with the checkpoint's template (default prompt: "Describe this image in detail.").</summary>
    public Task<GenerationResult> CaptionAsync(ImageInput image, string? prompt = null, GenerationOptions? options = null,
        CancellationToken cancellationToken = default) =>
        ChatAsync(new[] { new ConversationMessage(ConversationRole.User, prompt ?? DefaultCaptionPrompt, 1) }, new[] { image }, options, cancellationToken);

    /// <summary>The instruction <see cref="CaptionAsync"/> uses when none is given.</summary>
    public const string DefaultCaptionPrompt = "Describe this image in detail.";

    /// <summary>Answers the last user message of a conversation (images in order of the messages' image counts).</summary>
    public async Task<GenerationResult> ChatAsync(IReadOnlyList<ConversationMessage> messages, IReadOnlyList<ImageInput>? images = null,
        GenerationOptions? options = null, CancellationToken cancellationToken = default)
    {
        var results = await GenerateBatchAsync(new[] { new PromptRequest(BuildPrompt(messages), images ?? Array.Empty<ImageInput>()) },
            options, null, cancellationToken).ConfigureAwait(false);
        return results[0];
    }

    /// <summary>As <see cref="ChatAsync"/>, streaming the answer's text as it is generated.</summary>
    public async IAsyncEnumerable<string> ChatStreamingAsync(IReadOnlyList<ConversationMessage> messages, IReadOnlyList<ImageInput>? images = null,
        GenerationOptions? options = null, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var channel = Channel.CreateUnbounded<string>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        var prompt = BuildPrompt(messages);
        var task = GenerateBatchAsync(new[] { new PromptRequest(prompt, images ?? Array.Empty<ImageInput>()) }, options,
            (row, piece) => channel.Writer.TryWrite(piece), cancellationToken);
        _ = task.ContinueWith(t => channel.Writer.TryComplete(t.Exception?.InnerException ?? (t.IsCanceled ? new OperationCanceledException(cancellationToken) : null)),
            CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        await foreach (var piece in channel.Reader.ReadAllAsync(CancellationToken.None).ConfigureAwait(false))
        {
            // Pieces may already be buffered when the caller cancels: stop at once rather than drain them.
            if (cancellationToken.IsCancellationRequested)
            {
                _ = task.ContinueWith(static t => _ = t.Exception, TaskScheduler.Default); // observe the abandoned run
                cancellationToken.ThrowIfCancellationRequested();
            }
            yield return piece;
        }
        await task.ConfigureAwait(false); // surfaces cancellation or errors
    }

    /// <summary>Captions many images, <see cref="PipelineOptions.MaxBatchSize"/> at a time (one at a time with beam search), results in input order.</summary>
    public async Task<IReadOnlyList<GenerationResult>> CaptionBatchAsync(IReadOnlyList<ImageInput> images, string? prompt = null,
        GenerationOptions? options = null, IProgress<int>? progress = null, CancellationToken cancellationToken = default)
    {
        var text = BuildPrompt(new[] { new ConversationMessage(ConversationRole.User, prompt ?? DefaultCaptionPrompt, 1) });
        var results = new List<GenerationResult>(images.Count);
        // Beam search runs one prompt at a time (its cache rows are the beams).
        int rowsAtOnce = (options ?? Options.Generation).IsBeamSearch ? 1 : Options.MaxBatchSize;
        foreach (var chunk in images.Chunk(rowsAtOnce))
        {
            results.AddRange(await GenerateBatchAsync(chunk.Select(i => new PromptRequest(text, new[] { i })).ToList(), options, null, cancellationToken).ConfigureAwait(false));
            progress?.Report(results.Count);
        }
        return results;
    }

    /// <summary>Generates from a prompt already rendered (the <c>raw</c> template): <c>&lt;image&gt;</c> marks each image.</summary>
    public async Task<GenerationResult> GenerateAsync(string prompt, IReadOnlyList<ImageInput>? images = null, GenerationOptions? options = null,
        CancellationToken cancellationToken = default) =>
        (await GenerateBatchAsync(new[] { new PromptRequest(prompt, images ?? Array.Empty<ImageInput>()) }, options, null, cancellationToken).ConfigureAwait(false))[0];

    /// <summary>Renders a conversation with the pipeline's template.</summary>
    public string BuildPrompt(IReadOnlyList<ConversationMessage> messages) => BuildPrompt(messages, null);

    /// <summary>
    /// How many positions of the context a prompt takes: its tokens, with each of <paramref name="imageCount"/>
    /// images counted as the image's patch embeddings rather than one marker.
    /// </summary>
    /// <param name="prompt">The prompt as <see cref="BuildPrompt(IReadOnlyList{ConversationMessage})"/> renders it.</param>
    /// <param name="imageCount">The images that come with the prompt.</param>
    public int CountPromptTokens(string prompt, int imageCount) =>
        _tokenizer.EncodePrompt(prompt, _model.Config.ImageTokenIndex).Length + imageCount * (_model.Config.ImageSeqLength - 1);

    /// <summary>Renders a conversation with the pipeline's template and, if given, a system message of the caller's.</summary>
    public string BuildPrompt(IReadOnlyList<ConversationMessage> messages, string? systemPrompt)
    {
        if (messages.Count == 0) throw new PromptException("The conversation has no messages");
        var conv = new ConversationBuilder(_template);
        if (systemPrompt is not null) conv.SystemPrompt = systemPrompt;
        foreach (var m in messages) conv.Add(m);
        return conv.BuildPrompt();
    }

    /// <summary>
    /// Runs several rendered prompts; each row takes a sequence slot of the engine (at most
    /// <see cref="PipelineOptions.MaxBatchSize"/> decode together, more wait for a slot) and is generated exactly as it
    /// would be alone. <paramref name="onText"/> receives (row, text piece) on the inference thread as text becomes final.
    /// </summary>
    public async Task<IReadOnlyList<GenerationResult>> GenerateBatchAsync(IReadOnlyList<PromptRequest> requests, GenerationOptions? options,
        Action<int, string>? onText, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_disposed != 0, this);
        if (requests.Count == 0) return Array.Empty<GenerationResult>();
        options ??= Options.Generation;
        try { options.Validate(); }
        catch (ArgumentOutOfRangeException e) { throw new PromptException($"Invalid generation option {e.ParamName}: {e.Message}", e); }
        if (options.IsBeamSearch && requests.Count > 1)
            throw new PromptException($"Beam search (NumBeams = {options.NumBeams}) runs one prompt at a time, but {requests.Count} were given together");
        if (options.NumBeams > Options.MaxBatchSize)
            throw new PromptException($"NumBeams = {options.NumBeams} needs {options.NumBeams} cache rows, more than MaxBatchSize = {Options.MaxBatchSize} (the memory the device was checked for)");
        var started = Stopwatch.StartNew();

        // Tokenize and preprocess on the caller's side: cheap checks fail fast, image decoding overlaps inference.
        var rows = new List<int[]>();
        foreach (var r in requests)
        {
            if (r.Prompt.Length > Options.MaxPromptCharacters)
                throw new PromptException($"The prompt has {r.Prompt.Length} characters, more than the limit of {Options.MaxPromptCharacters} (MaxPromptCharacters)");
            int markers = LlavaTokenizer.CountImageMarkers(r.Prompt);
            if (markers != r.Images.Count)
                throw new PromptException($"The prompt has {markers} <image> marker(s) but {r.Images.Count} image(s) were given");
            rows.Add(_tokenizer.EncodePrompt(r.Prompt, Config.ImageTokenIndex));
        }
        var images = await Task.Run(() => requests.Select(r => (IReadOnlyList<EngineImage>)r.Images.Select(MakeImage).ToList()).ToList(),
            cancellationToken).ConfigureAwait(false);
        var preprocessTime = started.Elapsed;

        var tcs = new TaskCompletionSource<IReadOnlyList<GenerationResult>>(TaskCreationOptions.RunContinuationsAsynchronously);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _disposing.Token);
        var ct = linked.Token;
        // Complete the caller's task as soon as the token fires, not when the inference thread reaches the request:
        // a queued request may sit behind long generations. The inference thread drops it (or stops it) on its own.
        using var onCancel = ct.Register(() => tcs.TrySetCanceled(cancellationToken.IsCancellationRequested ? cancellationToken : ct));
        var results = new GenerationResult[requests.Count];
        int remaining = requests.Count;
        var stops = _template.StopStrings;
        for (int i = 0; i < requests.Count; i++)
        {
            int row = i;
            var request = new SequenceRequest
            {
                PromptIds = rows[i], Images = images[i], Options = options, ExtraStopStrings = stops,
                OnText = onText is null ? null : piece => onText(row, piece),
                CancellationToken = ct, PreprocessTime = preprocessTime, Started = started,
            };
            var pending = new PendingRow(request,
                result =>
                {
                    results[row] = result;
                    if (Interlocked.Decrement(ref remaining) == 0) tcs.TrySetResult(results);
                },
                error =>
                {
                    tcs.TrySetException(error);
                    try { linked.Cancel(); } catch (ObjectDisposedException) { } // the other rows stop too
                },
                () => tcs.TrySetCanceled(cancellationToken.IsCancellationRequested ? cancellationToken : ct));
            try { await _queue.Writer.WriteAsync(pending, ct).ConfigureAwait(false); }
            catch (ChannelClosedException) { throw new ObjectDisposedException(nameof(MultimodalPipeline)); }
            catch (OperationCanceledException) when (tcs.Task.IsCompleted) { break; }
        }
        return await tcs.Task.ConfigureAwait(false);
    }

    /// <summary>Sequence slots in use and free, and the engine caches' counters (a snapshot; read from any thread).</summary>
    public EngineCounters CacheCounters => _engine.Counters;

    /// <summary>The engine; drive it only from the inference thread (tests read its sizes and counters).</summary>
    internal GenerationEngine Engine => _engine;

    /// <summary>Sequences holding a slot now.</summary>
    public int ActiveSequences => _engine.ActiveCount;

    private PreprocessedImage Preprocess(ImageInput image) =>
        image.FilePath is { } path ? _processor.Preprocess(path, Options.ImageLimits) : _processor.Preprocess(image.Bytes!, image.Name, Options.ImageLimits);

    /// <summary>
    /// An image for the engine: keyed by its bytes' hash and the preprocessing settings, and preprocessed here unless
    /// its embedding is cached already (then only if the cache dropped it before the request runs).
    /// </summary>
    private EngineImage MakeImage(ImageInput image)
    {
        if (Options.ImageCacheBytes == 0) return new EngineImage(Preprocess(image));
        string? key = null;
        try
        {
            if (image.FilePath is { } path)
            {
                var info = new FileInfo(path);
                if (info.Exists && info.Length <= Options.ImageLimits.MaxFileBytes)
                    using (var stream = File.OpenRead(path)) key = GenerationEngine.ImageKey(stream, _imageSettings);
            }
            else key = GenerationEngine.ImageKey(image.Bytes!, _imageSettings);
        }
        catch (IOException) { } // Preprocess names the problem
        catch (UnauthorizedAccessException) { }
        if (key is not null && _engine.HasImage(key)) return new EngineImage(key, () => Preprocess(image));
        return new EngineImage(Preprocess(image), key);
    }

    // ---------------------------------------------------------------- inference thread

    /// <summary>A row waiting for a slot, with what to do when it ends.</summary>
    private sealed record PendingRow(SequenceRequest Request, Action<GenerationResult> Done, Action<Exception> Fail, Action Cancelled);

    private readonly Dictionary<EngineSequence, PendingRow> _running = new(); // inference thread only

    private void WorkerLoop()
    {
        var reader = _queue.Reader;
        while (true)
        {
            // Waiting rows take the free slots (in arrival order), then one step advances every active row. A beam
            // search needs its beams' slots: it waits until the active rows are done, then runs to its end.
            while (reader.TryPeek(out var head))
            {
                bool beams = head.Request.Options.IsBeamSearch;
                if (beams ? _engine.ActiveCount > 0 : _engine.FreeSlots == 0) break;
                reader.TryRead(out var row);
                if (beams) RunBeams(row!); else Admit(row!);
            }
            if (_engine.ActiveCount > 0) { StepAll(); continue; }
            try
            {
                if (!reader.WaitToReadAsync().AsTask().GetAwaiter().GetResult()) break;
            }
            catch (Exception) { break; }
        }
        foreach (var (_, row) in _running) row.Cancelled();
        _running.Clear();
        _engine.CancelAll();
        if (_releaseOnWorkerExit) ReleaseNative();
    }

    private void Admit(PendingRow row)
    {
        if (row.Request.CancellationToken.IsCancellationRequested) { row.Cancelled(); return; }
        try
        {
            var seq = _engine.Admit(row.Request);
            if (seq.IsFinished) End(seq, row);
            else _running[seq] = row;
        }
        catch (OperationCanceledException) { row.Cancelled(); }
        catch (Exception e) { row.Fail(Wrap(e)); }
    }

    private void RunBeams(PendingRow row)
    {
        if (row.Request.CancellationToken.IsCancellationRequested) { row.Cancelled(); return; }
        try { row.Done(_engine.RunBeams(row.Request)); }
        catch (OperationCanceledException) { row.Cancelled(); }
        catch (Exception e) { row.Fail(Wrap(e)); }
    }

    private void StepAll()
    {
        IReadOnlyList<EngineSequence> ended;
        try { ended = _engine.Step(); }
        catch (Exception e)
        {
            // The step was shared: every row in it failed.
            var error = Wrap(e);
            foreach (var seq in _engine.CancelAll())
                if (_running.Remove(seq, out var row)) row.Fail(error);
            return;
        }
        foreach (var seq in ended)
            if (_running.Remove(seq, out var row)) End(seq, row);
    }

    private void End(EngineSequence seq, PendingRow row)
    {
        if (seq.Result is { } result)
        {
            _logger.LogDebug("Generated: prompt {Prompt} tokens ({Reused} from the prefix cache), {Tokens} new tokens, prefill {Prefill:F0} ms, decode {Decode:F0} ms",
                result.PromptTokens, seq.ReusedPrefixTokens, result.GeneratedTokens, result.Timings.Prefill.TotalMilliseconds, result.Timings.Decode.TotalMilliseconds);
            row.Done(result);
        }
        else row.Cancelled();
    }

    private Exception Wrap(Exception e) => e is System.Runtime.InteropServices.ExternalException
        // libtorch reports its own failures (an allocation it could not make, an internal check) this way;
        // give callers the library's type, with libtorch's first line and the full error inside.
        ? new DeviceException($"libtorch failed while running the request on {_model.LanguageModel.Device}: {e.Message.Split('\n')[0].Trim()}", e)
        : e;

    /// <summary>Stops the inference thread (pending requests are cancelled) and frees the model's native memory.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _disposing.Cancel();
        _queue.Writer.TryComplete();
        if (Thread.CurrentThread == _worker)
        {
            // Called from a callback of the running request: joining would wait for ourselves. The worker loop
            // releases the model once the current request has unwound.
            _releaseOnWorkerExit = true;
            return;
        }
        _worker.Join();
        ReleaseNative();
    }

    private void ReleaseNative()
    {
        // Requests still queued were cancelled through the linked token; complete their tasks.
        while (_queue.Reader.TryRead(out var row)) row.Cancelled();
        _engine.Dispose();
        _model.Dispose();
    }
}
