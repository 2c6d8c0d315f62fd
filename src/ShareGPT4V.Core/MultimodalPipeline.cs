using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
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
using ChatMessage = ShareGPT4V.Conversation.ChatMessage;

namespace ShareGPT4V;

/// <summary>One prompt of a batch: text with <c>&lt;image&gt;</c> markers (as the template renders it) and its images.</summary>
public sealed record PromptRequest(string Prompt, IReadOnlyList<ImageInput> Images);

/// <summary>
/// The facade over a loaded model, tokenizer and image processor: caption, chat (also streamed) and batches.
/// <para>
/// Threading: every model computation runs on one dedicated inference thread fed by a bounded queue
/// (<see cref="PipelineOptions.MaxQueueLength"/>), so the pipeline may be called from any number of threads at once;
/// requests run one after another in arrival order (a batch call runs its rows together), and all per-request state
/// (samplers, detokenizers, outputs) belongs to the request, so an answer does not depend on what else is queued.
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
    private readonly Channel<Action> _queue;
    private readonly Thread _worker;
    private readonly CancellationTokenSource _disposing = new();
    private readonly int _context;
    private KvCache? _cache; // reused across requests while big enough (inference thread only)
    private int _disposed;
    private volatile bool _releaseOnWorkerExit; // Dispose was called on the inference thread itself

    public PipelineOptions Options { get; }
    public ModelFolder Folder { get; }
    public LlavaConfig Config => _model.Config;
    public LlavaTokenizer Tokenizer => _tokenizer;
    public ConversationTemplate Template => _template;
    /// <summary>The model; use only from inside the pipeline's own requests or when no request is running.</summary>
    public LlavaModel Model => _model;
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
        _queue = Channel.CreateBounded<Action>(new BoundedChannelOptions(options.MaxQueueLength)
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
        if (gguf)
        {
            using (var llm = Checkpoints.Gguf.GgufFile.Open(folder.ModelPath)) tokenizer = Checkpoints.Gguf.GgufModel.ReadTokenizer(llm);
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
        // blocks are used as they are).
        bool asStored = gguf && quantization is null && DTypeChoice.Parse(options.DType) is null && placement.Device.type == DeviceType.CPU;
        var model = ModelLoader.Load(folder, new LoadOptions
        {
            DType = asStored ? null : placement.DType, Device = placement.Device, VisionTowerPath = towerPath, Quantization = quantization,
        }, progress, cancellationToken);
        if (quantization is not null || gguf)
            logger.LogInformation("Weight storage: {Storage}", Modeling.WeightStorage.Describe(model));
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
            Positions = context + 1, Batch = options.MaxBatchSize, // the largest KV cache EnsureCache can allocate
        };
        return (options.DeviceProvider ?? CpuDeviceProvider.Instance).Resolve(request, logger);
    }

    // ---------------------------------------------------------------- public requests

    /// <summary>Captions one image with the checkpoint's template (default prompt: "Describe this image in detail.").</summary>
    public Task<GenerationResult> CaptionAsync(ImageInput image, string? prompt = null, GenerationOptions? options = null,
        CancellationToken cancellationToken = default) =>
        ChatAsync(new[] { new ChatMessage(ChatRole.User, prompt ?? DefaultCaptionPrompt, 1) }, new[] { image }, options, cancellationToken);

    public const string DefaultCaptionPrompt = "Describe this image in detail.";

    /// <summary>Answers the last user message of a conversation (images in order of the messages' image counts).</summary>
    public async Task<GenerationResult> ChatAsync(IReadOnlyList<ChatMessage> messages, IReadOnlyList<ImageInput>? images = null,
        GenerationOptions? options = null, CancellationToken cancellationToken = default)
    {
        var results = await GenerateBatchAsync(new[] { new PromptRequest(BuildPrompt(messages), images ?? Array.Empty<ImageInput>()) },
            options, null, cancellationToken).ConfigureAwait(false);
        return results[0];
    }

    /// <summary>As <see cref="ChatAsync"/>, streaming the answer's text as it is generated.</summary>
    public async IAsyncEnumerable<string> ChatStreamingAsync(IReadOnlyList<ChatMessage> messages, IReadOnlyList<ImageInput>? images = null,
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
        var text = BuildPrompt(new[] { new ChatMessage(ChatRole.User, prompt ?? DefaultCaptionPrompt, 1) });
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
    public string BuildPrompt(IReadOnlyList<ChatMessage> messages) => BuildPrompt(messages, null);

    /// <summary>Renders a conversation with the pipeline's template and, if given, a system message of the caller's.</summary>
    public string BuildPrompt(IReadOnlyList<ChatMessage> messages, string? systemPrompt)
    {
        if (messages.Count == 0) throw new PromptException("The conversation has no messages");
        var conv = new ConversationBuilder(_template);
        if (systemPrompt is not null) conv.SystemPrompt = systemPrompt;
        foreach (var m in messages) conv.Add(m);
        return conv.BuildPrompt();
    }

    /// <summary>
    /// Runs several rendered prompts together (left-padded), each row generated as it would be alone.
    /// <paramref name="onText"/> receives (row, text piece) on the inference thread as text becomes final.
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
        var images = await Task.Run(() => requests.SelectMany(r => r.Images).Select(Preprocess).ToList(), cancellationToken).ConfigureAwait(false);
        var preprocessTime = started.Elapsed;

        var tcs = new TaskCompletionSource<IReadOnlyList<GenerationResult>>(TaskCreationOptions.RunContinuationsAsynchronously);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _disposing.Token);
        var ct = linked.Token;
        // Complete the caller's task as soon as the token fires, not when the inference thread reaches the request:
        // a queued request may sit behind long generations. The inference thread skips (or stops) it on its own.
        using var onCancel = ct.Register(() => tcs.TrySetCanceled(cancellationToken.IsCancellationRequested ? cancellationToken : ct));
        void Work()
        {
            if (ct.IsCancellationRequested) { tcs.TrySetCanceled(cancellationToken.IsCancellationRequested ? cancellationToken : ct); return; }
            try { tcs.TrySetResult(Run(rows, images, options, onText, preprocessTime, started, ct)); }
            catch (OperationCanceledException) { tcs.TrySetCanceled(cancellationToken.IsCancellationRequested ? cancellationToken : ct); }
            catch (System.Runtime.InteropServices.ExternalException e)
            {
                // libtorch reports its own failures (an allocation it could not make, an internal check) this way;
                // give callers the library's type, with libtorch's first line and the full error inside.
                tcs.TrySetException(new DeviceException(
                    $"libtorch failed while running the request on {_model.LanguageModel.Device}: {e.Message.Split('\n')[0].Trim()}", e));
            }
            catch (Exception e) { tcs.TrySetException(e); }
        }
        try { await _queue.Writer.WriteAsync(Work, ct).ConfigureAwait(false); }
        catch (ChannelClosedException) { throw new ObjectDisposedException(nameof(MultimodalPipeline)); }
        return await tcs.Task.ConfigureAwait(false);
    }

    private PreprocessedImage Preprocess(ImageInput image) =>
        image.FilePath is { } path ? _processor.Preprocess(path, Options.ImageLimits) : _processor.Preprocess(image.Bytes!, image.Name, Options.ImageLimits);

    // ---------------------------------------------------------------- inference thread

    private void WorkerLoop()
    {
        var reader = _queue.Reader;
        while (true)
        {
            Action? work;
            try
            {
                if (!reader.WaitToReadAsync().AsTask().GetAwaiter().GetResult()) break;
                if (!reader.TryRead(out work)) continue;
            }
            catch (Exception) { break; }
            work();
        }
        if (_releaseOnWorkerExit) ReleaseNative();
    }

    private IReadOnlyList<GenerationResult> Run(List<int[]> rows, List<PreprocessedImage> images, GenerationOptions options,
        Action<int, string>? onText, TimeSpan preprocessTime, Stopwatch started, CancellationToken ct)
    {
        using var noGrad = torch.no_grad();
        using var scope = NewDisposeScope();
        var sw = Stopwatch.StartNew();
        Tensor? imageEmbeddings = null;
        if (images.Count > 0)
        {
            var pixels = PreprocessedImage.Stack(images).to(_model.LanguageModel.Device);
            imageEmbeddings = _model.EncodeImages(pixels);
            WaitForDevice(); // device work is asynchronous: finish it so the phase timings are real
        }
        var visionTime = sw.Elapsed;
        ct.ThrowIfCancellationRequested();

        using var inputs = _model.BuildInputs(rows.Select(r => r.Select(x => (long)x).ToArray()).ToList(), imageEmbeddings);
        int promptLength = (int)inputs.Length;
        int maxNew = options.MaxNewTokens;
        if (promptLength + maxNew > _context)
        {
            if (Options.Overflow == PromptOverflow.ClampNewTokens && promptLength < _context)
                maxNew = _context - promptLength;
            else
                throw new PromptException(promptLength >= _context
                    ? $"The prompt takes {promptLength} tokens (image tokens included), more than the context window of {_context}"
                    : $"The prompt takes {promptLength} tokens and {maxNew} new tokens were asked for: {promptLength + maxNew} exceeds the context window of {_context} (lower MaxNewTokens or set Overflow = ClampNewTokens)");
        }
        if (options.IsBeamSearch)
            return new[] { RunBeams(rows[0], imageEmbeddings, options, maxNew, onText, preprocessTime, visionTime, started, ct) };
        var cache = EnsureCache(rows.Count, promptLength + maxNew + 1);
        using var generator = new TokenGenerator(_model, cache);
        int batch = rows.Count;
        var samplers = Enumerable.Range(0, batch).Select(_ => new Sampler(options)).ToArray();
        var texts = Enumerable.Range(0, batch).Select(_ => new OutputText(_tokenizer, options.StopStrings.Concat(_template.StopStrings).Distinct().ToList())).ToArray();
        var outputs = Enumerable.Range(0, batch).Select(_ => new List<int>()).ToArray();
        var histories = rows.Select(r => ProcessorHistory.ForPrompt(Config, r)).ToArray(); // what the processors see, per layout
        var finish = new FinishReason?[batch];
        int eos = _tokenizer.EosId;

        sw.Restart();
        var logits = generator.Prefill(inputs);
        WaitForDevice();
        var prefillTime = sw.Elapsed;
        TimeSpan ttft = started.Elapsed;
        sw.Restart();
        var next = new long[batch];
        // One buffer for the whole request: a fresh array per token would be a large-object-heap allocation
        // (128 KB for a 32k vocabulary) and a gen-2 collection every few tokens.
        float[]? rowsLogits = null;
        for (int step = 0; ; step++)
        {
            if (step >= maxNew)
            {
                for (int r = 0; r < batch; r++) finish[r] ??= maxNew < options.MaxNewTokens ? FinishReason.ContextFull : FinishReason.Length;
                break;
            }
            long vocab = logits.shape[1];
            if (rowsLogits is null || rowsLogits.LongLength != batch * vocab) rowsLogits = new float[checked(batch * (int)vocab)];
            if (logits.device_type == DeviceType.CPU) logits.data<float>().CopyTo(rowsLogits);
            else using (var host = logits.cpu()) host.data<float>().CopyTo(rowsLogits); // data<T> reads CPU memory only
            logits.Dispose();
            for (int r = 0; r < batch; r++)
            {
                if (finish[r] is not null) { next[r] = eos; continue; }
                int id = samplers[r].Sample(rowsLogits.AsSpan((int)(r * vocab), (int)vocab), CollectionsMarshal.AsSpan(histories[r]));
                next[r] = id;
                if (options.StopAtEndOfSequence && id == eos) { finish[r] = FinishReason.EndOfSequence; continue; }
                outputs[r].Add(id);
                histories[r].Add(id);
                var piece = texts[r].Append(id);
                if (piece.Length > 0) onText?.Invoke(r, piece);
                if (texts[r].Stopped) finish[r] = FinishReason.StopString;
            }
            if (step == 0) ttft = started.Elapsed;
            if (finish.All(f => f is not null)) break;
            ct.ThrowIfCancellationRequested();
            if (step + 1 >= maxNew) continue;
            logits = generator.DecodeOneToken(next);
        }
        var decodeTime = sw.Elapsed;
        var results = new GenerationResult[batch];
        for (int r = 0; r < batch; r++)
        {
            var rest = texts[r].Complete();
            if (rest.Length > 0) onText?.Invoke(r, rest);
            results[r] = new GenerationResult
            {
                Text = texts[r].FinalText,
                TokenIds = outputs[r],
                FinishReason = finish[r]!.Value,
                PromptTokens = inputs.Lengths[r],
                Timings = new GenerationTimings
                {
                    Preprocess = preprocessTime, Vision = visionTime, Prefill = prefillTime, Decode = decodeTime,
                    TimeToFirstToken = ttft, Total = started.Elapsed,
                },
            };
        }
        _logger.LogDebug("Generated {Rows} row(s): prompt {Prompt} tokens, {Tokens} new tokens, prefill {Prefill:F0} ms, decode {Decode:F0} ms",
            batch, promptLength, outputs.Sum(o => o.Count), prefillTime.TotalMilliseconds, decodeTime.TotalMilliseconds);
        return results;
    }

    /// <summary>Beam search for one prompt: the prompt is run once per beam, the answer is released whole at the end.</summary>
    private GenerationResult RunBeams(int[] row, Tensor? imageEmbeddings, GenerationOptions options, int maxNew,
        Action<int, string>? onText, TimeSpan preprocessTime, TimeSpan visionTime, Stopwatch started, CancellationToken ct)
    {
        int beams = options.NumBeams;
        var ids = row.Select(x => (long)x).ToArray();
        using var copies = imageEmbeddings?.repeat(beams, 1, 1);
        using var inputs = _model.BuildInputs(Enumerable.Repeat(ids, beams).ToList(), copies);
        var cache = EnsureCache(beams, (int)inputs.Length + maxNew + 1);
        using var generator = new TokenGenerator(_model, cache);
        int eos = options.StopAtEndOfSequence ? _tokenizer.EosId : -1;
        var search = new BeamSearch(options, ProcessorHistory.ForPrompt(Config, row), eos, maxNew);
        var sw = Stopwatch.StartNew();
        TimeSpan prefillTime = TimeSpan.Zero, ttft = TimeSpan.Zero;
        var (tokens, endedWithEos, _) = maxNew == 0 ? (Array.Empty<int>(), false, 0.0)
            : BeamSearchRunner.Run(generator, inputs, search, () =>
            {
                if (prefillTime == TimeSpan.Zero) { prefillTime = sw.Elapsed; ttft = started.Elapsed; }
                ct.ThrowIfCancellationRequested();
            });
        var decodeTime = sw.Elapsed - prefillTime;
        var text = new OutputText(_tokenizer, options.StopStrings.Concat(_template.StopStrings).Distinct().ToList());
        var kept = new List<int>();
        var whole = new System.Text.StringBuilder();
        foreach (var id in tokens)
        {
            kept.Add(id);
            whole.Append(text.Append(id));
            if (text.Stopped) break;
        }
        whole.Append(text.Complete());
        if (whole.Length > 0) onText?.Invoke(0, whole.ToString());
        var finish = text.Stopped ? FinishReason.StopString : endedWithEos ? FinishReason.EndOfSequence
            : maxNew < options.MaxNewTokens ? FinishReason.ContextFull : FinishReason.Length;
        return new GenerationResult
        {
            Text = text.FinalText, TokenIds = kept, FinishReason = finish, PromptTokens = inputs.Lengths[0],
            Timings = new GenerationTimings
            {
                Preprocess = preprocessTime, Vision = visionTime, Prefill = prefillTime, Decode = decodeTime,
                TimeToFirstToken = ttft == TimeSpan.Zero ? started.Elapsed : ttft, Total = started.Elapsed,
            },
        };
    }

    private void WaitForDevice()
    {
        if (Placement.Device.type == DeviceType.CUDA) torch.cuda.synchronize(Placement.Device);
    }

    private KvCache EnsureCache(int batch, int positions)
    {
        if (_cache is not null && _cache.MaxBatch >= batch && _cache.MaxSequence >= positions) return _cache;
        int keepBatch = _cache?.MaxBatch ?? 0;
        // Forget the old cache before allocating: if the allocation fails, no later request may use a disposed cache.
        _cache?.Dispose();
        _cache = null;
        // Round up so a run of similar requests reuses one allocation instead of growing per request.
        int size = Math.Min(_context + 1, (positions + 255) / 256 * 256);
        _cache = _model.CreateCache(Math.Max(batch, keepBatch), Math.Max(size, positions));
        return _cache;
    }

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
        // Requests still queued were cancelled through the linked token; run them so their tasks complete.
        while (_queue.Reader.TryRead(out var work)) work();
        _cache?.Dispose();
        _cache = null;
        _model.Dispose();
    }
}
