using System.Diagnostics;
using System.Security.Cryptography;
using ShareGPT4V.Language;
using ShareGPT4V.Modeling;
using ShareGPT4V.Preprocessing;
using ShareGPT4V.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.Generation;

/// <summary>Sizes of a <see cref="GenerationEngine"/>.</summary>
internal sealed record EngineOptions
{
    /// <summary>Sequence slots: how many requests decode together. The KV cache holds this many rows.</summary>
    public int MaxBatchSize { get; init; } = 8;
    /// <summary>Context window in tokens (prompt with image tokens, plus answer); each slot holds one more position.</summary>
    public required int ContextLength { get; init; }
    /// <summary>What to do when a prompt plus its new tokens exceed <see cref="ContextLength"/>.</summary>
    public PromptOverflow Overflow { get; init; } = PromptOverflow.Refuse;
    /// <summary>Budget of the image embedding cache in bytes (0 = off).</summary>
    public long ImageCacheBytes { get; init; } = 128L << 20;
    /// <summary>Budget of the KV prefix cache in bytes (0 = off); finished sequences' keys and values kept for their next turn.</summary>
    public long PrefixCacheBytes { get; init; } = 256L << 20;

    /// <summary>Checks ranges; throws <see cref="ArgumentOutOfRangeException"/> naming the option.</summary>
    public void Validate()
    {
        if (MaxBatchSize <= 0) throw new ArgumentOutOfRangeException(nameof(MaxBatchSize), MaxBatchSize, "MaxBatchSize must be positive");
        if (ContextLength <= 0) throw new ArgumentOutOfRangeException(nameof(ContextLength), ContextLength, "ContextLength must be positive");
        if (ImageCacheBytes < 0) throw new ArgumentOutOfRangeException(nameof(ImageCacheBytes), ImageCacheBytes, "ImageCacheBytes must be >= 0");
        if (PrefixCacheBytes < 0) throw new ArgumentOutOfRangeException(nameof(PrefixCacheBytes), PrefixCacheBytes, "PrefixCacheBytes must be >= 0");
    }
}

/// <summary>
/// The generation loop every caller runs: the pipeline, the benchmark, the GPU check and the golden tests.
/// <para>
/// It holds <see cref="EngineOptions.MaxBatchSize"/> sequence slots over one KV cache allocated up front
/// (slots × (context + 1) positions, the size the memory estimate is given). <see cref="Admit"/> gives a request a
/// free slot, encodes its images (through the image cache), copies any cached KV prefix into the slot and prefills
/// the rest of the prompt alone, then samples its first token. <see cref="Step"/> advances every active slot by one
/// token in one forward pass (the decode kernels read each weight once for all rows) and samples each row with its
/// own sampler and history. A finished or cancelled sequence frees its slot at once. Every row attends only to its own
/// slot, at its own positions, through kernels that compute each row on its own: an answer is the same whichever
/// other requests share the steps.
/// </para>
/// Not thread-safe: one thread drives it (the pipeline's inference thread).
/// </summary>
internal sealed class GenerationEngine : IDisposable
{
    private readonly LlavaModel _model;
    private readonly LlavaTokenizer? _tokenizer;
    private readonly KvCache _cache;
    private readonly EngineSequence?[] _slots;
    private readonly ImageEmbeddingCache _images;
    private readonly PrefixCache _prefixes;
    private float[] _hostLogits = Array.Empty<float>();
    private bool _disposed;

    /// <summary>
    /// Creates the engine and its KV cache. Without a tokenizer the engine produces ids only (no text, no stop
    /// strings; the end-of-sequence id comes from the model's config).
    /// </summary>
    public GenerationEngine(LlavaModel model, LlavaTokenizer? tokenizer, EngineOptions options)
    {
        ArgumentNullException.ThrowIfNull(model);
        options.Validate();
        _model = model;
        _tokenizer = tokenizer;
        Options = options;
        _cache = model.CreateCache(options.MaxBatchSize, options.ContextLength + 1);
        _slots = new EngineSequence?[options.MaxBatchSize];
        _images = new ImageEmbeddingCache(options.ImageCacheBytes);
        _prefixes = new PrefixCache(options.PrefixCacheBytes);
    }

    /// <summary>The sizes the engine was made with.</summary>
    public EngineOptions Options { get; }
    /// <summary>The model the engine runs.</summary>
    public LlavaModel Model => _model;
    /// <summary>The KV cache of all slots (allocated once).</summary>
    public KvCache Cache => _cache;
    /// <summary>Sequence slots.</summary>
    public int MaxBatchSize => _slots.Length;
    /// <summary>Sequences that hold a slot now.</summary>
    public int ActiveCount => _slots.Count(s => s is not null);
    /// <summary>The most sequences that held slots at once since the engine was made.</summary>
    public int PeakActive { get; private set; }
    /// <summary>Slots free for <see cref="Admit"/>.</summary>
    public int FreeSlots => _slots.Length - ActiveCount;

    /// <summary>The caches' counters.</summary>
    public EngineCounters Counters => new()
    {
        ImageCacheHits = _images.Hits, ImageCacheMisses = _images.Misses, ImageCacheBytes = _images.Bytes, ImageCacheEntries = _images.Count,
        PrefixCacheHits = _prefixes.Hits, PrefixTokensReused = _prefixes.TokensReused, PrefixCacheEntries = _prefixes.Count,
        PrefixCacheBytes = _prefixes.Bytes, PrefixCacheEvictions = _prefixes.Evictions,
    };

    /// <summary>True when the image cache holds the embedding of <paramref name="key"/> (callable from any thread).</summary>
    public bool HasImage(string key) => _images.Contains(key);

    /// <summary>Drops every cached image embedding and KV prefix.</summary>
    public void ClearCaches()
    {
        _images.Clear();
        _prefixes.Clear();
    }

    /// <summary>
    /// The image cache key of encoded image bytes under the given preprocessing settings (any text that changes when a
    /// setting that changes the pixels does).
    /// </summary>
    public static string ImageKey(ReadOnlySpan<byte> encoded, string settings)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        sha.AppendData(encoded);
        sha.AppendData(System.Text.Encoding.UTF8.GetBytes("\n" + settings));
        return Convert.ToHexString(sha.GetHashAndReset());
    }

    /// <summary>As <see cref="ImageKey(ReadOnlySpan{byte}, string)"/> for a file, read as a stream.</summary>
    public static string ImageKey(Stream encoded, string settings)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[81920];
        int n;
        while ((n = encoded.Read(buffer)) > 0) sha.AppendData(buffer, 0, n);
        sha.AppendData(System.Text.Encoding.UTF8.GetBytes("\n" + settings));
        return Convert.ToHexString(sha.GetHashAndReset());
    }

    // ---------------------------------------------------------------- admission and prefill

    /// <summary>
    /// Takes a free slot for <paramref name="request"/>, prefills it and samples its first token. The sequence may be
    /// finished already (end of sequence, a stop string, or no new tokens asked for); its slot is then free again.
    /// Throws <see cref="InvalidOperationException"/> when no slot is free, <see cref="PromptException"/> for a prompt
    /// that does not fit.
    /// </summary>
    public EngineSequence Admit(SequenceRequest request)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentNullException.ThrowIfNull(request);
        request.Options.Validate();
        if (request.Options.IsBeamSearch) throw new ArgumentException("Beam search runs through RunBeams", nameof(request));
        int slot = Array.IndexOf(_slots, null);
        if (slot < 0) throw new InvalidOperationException("Every sequence slot is taken");
        request.CancellationToken.ThrowIfCancellationRequested();
        var seq = new EngineSequence(this, request, slot, _tokenizer);
        using var noGrad = torch.no_grad();
        using var scope = NewDisposeScope();
        var p = PrefillSlot(request, slot, request.UsePrefixCache);
        seq.PrefixSource = p.PrefixSource;
        seq.VisionTime = p.Vision;
        seq.PrefillTime = p.Prefill;
        _slots[slot] = seq;
        PeakActive = Math.Max(PeakActive, ActiveCount);
        seq.Begin(p.Signature, p.Reused, p.MaxNew, request.Options.MaxNewTokens);
        try { Consume(new[] { seq }, p.Logits.unsqueeze(0)); }
        catch { seq.Cancel(); throw; }
        return seq;
    }

    private sealed record Prefilled(Tensor Logits, long[] Signature, int Reused, int MaxNew, TimeSpan Vision, TimeSpan Prefill, object? PrefixSource);

    /// <summary>
    /// Encodes the request's images (through the image cache), copies any cached KV prefix into <paramref name="slot"/>
    /// and prefills the rest of the prompt there. Returns the last position's logits [vocab] (float32).
    /// </summary>
    private Prefilled PrefillSlot(SequenceRequest request, int slot, bool usePrefixCache)
    {
        var sw = Stopwatch.StartNew();
        var config = _model.Config;
        var ids = request.PromptIds;
        var (signature, imageStarts) = Signature(ids, request.Images);
        int length = signature.Length;
        if (length == 0) throw new PromptException("The prompt is empty");
        int context = Options.ContextLength;
        int maxNew = request.Options.MaxNewTokens;
        if (length + maxNew > context)
        {
            if (Options.Overflow == PromptOverflow.ClampNewTokens && length < context)
                maxNew = context - length;
            else
                throw new PromptException(length >= context
                    ? $"The prompt takes {length} tokens (image tokens included), more than the context window of {context} (shorten the prompt or send fewer images)"
                    : $"The prompt takes {length} tokens and {maxNew} new tokens were asked for: {length + maxNew} exceeds the context window of {context} " +
                      $"(set GenerationOptions.MaxNewTokens to {context - length} or less, or PipelineOptions.Overflow = PromptOverflow.ClampNewTokens to shorten the answer to fit)");
        }

        // A cached prefix first: the images it covers need no encoding. At least the last prompt position is
        // computed, for its logits.
        object? prefixSource = null;
        int reused = usePrefixCache && _prefixes.Enabled ? _prefixes.Restore(signature, length - 1, _cache, slot, out prefixSource) : 0;

        Tensor? imageEmbeddings = null;
        if (request.Images.Count > 0)
        {
            int perImage = config.ImageSeqLength;
            var rows = new Tensor?[request.Images.Count];
            var missing = new List<int>();
            for (int i = 0; i < rows.Length; i++)
            {
                if (imageStarts[i] + perImage <= reused) continue; // inside the reused prefix
                var key = request.Images[i].CacheKey;
                rows[i] = key is null ? null : _images.Get(key);
                if (rows[i] is null) missing.Add(i);
            }
            // One image per tower call: an embedding then has the same bits whichever images it was requested with,
            // so a cached one equals a fresh one (a batched GEMM may round differently).
            foreach (int i in missing)
            {
                using var pixels = PreprocessedImage.Stack(new[] { request.Images[i].Pixels }).to(_model.LanguageModel.Device);
                rows[i] = _model.EncodeImages(pixels).squeeze(0);
                if (request.Images[i].CacheKey is { } key) _images.Put(key, rows[i]!);
            }
            var shape = new long[] { perImage, config.Text.HiddenSize };
            imageEmbeddings = torch.stack(rows.Select(r => r ?? torch.zeros(shape, _model.LanguageModel.DType, _model.LanguageModel.Device)), 0);
            WaitForDevice();
        }
        var vision = sw.Elapsed;
        request.CancellationToken.ThrowIfCancellationRequested();

        sw.Restart();
        var row = ids.Select(x => (long)x).ToArray();
        using var inputs = _model.BuildInputs(new[] { row }, imageEmbeddings);
        if (inputs.Length != length) throw new InvalidOperationException($"Prompt layout mismatch: {inputs.Length} positions, expected {length}");
        var emb = inputs.Embeddings.narrow(1, reused, length - reused);
        var positions = HeldScalars.Arange(reused, length, _model.LanguageModel.Device).unsqueeze(0);
        var logits = _model.LanguageModel.ForwardSlots(emb, positions, _cache, new SlotRows(new[] { slot }, new[] { (long)reused }), LogitsMode.Last);
        var rowLogits = logits.reshape(-1).to(ScalarType.Float32);
        WaitForDevice();
        var prefill = sw.Elapsed;
        CHeap.Trim(); // the prompt's activations are freed now: give their memory back
        return new Prefilled(rowLogits, signature, reused, maxNew, vision, prefill, prefixSource);
    }

    /// <summary>
    /// Beam search for one request (<see cref="GenerationOptions.NumBeams"/> beams), as transformers' generate() does it
    /// (see <see cref="BeamSearch"/>): the prompt is prefilled once and copied into one slot per beam, then each step
    /// advances all beams together and reorders their slots. Needs that many free slots; runs to the end before
    /// returning. The text is released whole, through <see cref="SequenceRequest.OnText"/>, at the end.
    /// </summary>
    public GenerationResult RunBeams(SequenceRequest request)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentNullException.ThrowIfNull(request);
        var options = request.Options;
        options.Validate();
        int beams = options.NumBeams;
        if (beams > MaxBatchSize)
            throw new PromptException($"NumBeams = {beams} needs {beams} sequence slots, more than MaxBatchSize = {MaxBatchSize} (the memory the device was checked for)");
        var slots = Enumerable.Range(0, _slots.Length).Where(i => _slots[i] is null).Take(beams).ToArray();
        if (slots.Length < beams) throw new InvalidOperationException($"Beam search needs {beams} free slots, {slots.Length} are free");
        request.CancellationToken.ThrowIfCancellationRequested();
        var started = request.Started ?? Stopwatch.StartNew();
        using var noGrad = torch.no_grad();
        using var scope = NewDisposeScope();
        var p = PrefillSlot(request, slots[0], usePrefixCache: false);
        var ttft = started.Elapsed;
        var sw = Stopwatch.StartNew();
        int length = p.Signature.Length, eos = options.StopAtEndOfSequence ? EosId : -1;
        int vocab = (int)p.Logits.shape[0];
        var search = new BeamSearch(options, ProcessorHistory.ForPrompt(_model.Config, request.PromptIds), eos, p.MaxNew);
        int[] tokens = Array.Empty<int>();
        bool endedWithEos = false;
        if (p.MaxNew > 0)
        {
            // Every beam starts from the prompt: copy its keys and values instead of computing them again.
            _cache.CopySlot(slots[0], slots.AsSpan(1), length);
            var host = new float[beams * vocab];
            var first = new float[vocab];
            p.Logits.data<float>().CopyTo(first);
            for (int b = 0; b < beams; b++) first.CopyTo(host, b * vocab);
            long position = length;
            var device = _model.LanguageModel.Device;
            while (search.Step(host, vocab))
            {
                request.CancellationToken.ThrowIfCancellationRequested();
                using var step = NewDisposeScope();
                _cache.ReorderSlots(slots, search.SourceBeams, position);
                var ids = search.NextTokens.Select(x => (long)x).ToArray();
                var starts = Enumerable.Repeat(position, beams).ToArray();
                var emb = _model.LanguageModel.EmbedHostIds(ids, beams);
                var positions = torch.tensor(starts, device: device).reshape(beams, 1);
                var logits = _model.LanguageModel.ForwardSlots(emb, positions, _cache, new SlotRows(slots, starts), LogitsMode.Last)
                    .reshape(beams, vocab).to(ScalarType.Float32);
                if (logits.device_type == DeviceType.CPU) logits.data<float>().CopyTo(host);
                else using (var h = logits.cpu()) h.data<float>().CopyTo(host);
                position++;
            }
            (tokens, endedWithEos, _) = search.Result();
        }
        var decode = sw.Elapsed;
        var stops = options.StopStrings.Concat(request.ExtraStopStrings).Distinct().ToList();
        var text = _tokenizer is null ? null : new OutputText(_tokenizer, stops);
        var kept = new List<int>();
        // Append returns the text that became final with each token and Complete the rest: the answer arrives whole,
        // in one piece, once the search has chosen it.
        var whole = new System.Text.StringBuilder();
        foreach (var id in tokens)
        {
            kept.Add(id);
            whole.Append(text?.Append(id));
            if (text?.Stopped == true) break;
        }
        whole.Append(text?.Complete());
        if (whole.Length > 0) request.OnText?.Invoke(whole.ToString());
        bool stopped = text?.Stopped == true;
        var finish = stopped ? FinishReason.StopString : endedWithEos ? FinishReason.EndOfSequence
            : p.MaxNew < options.MaxNewTokens ? FinishReason.ContextFull : FinishReason.Length;
        return new GenerationResult
        {
            Text = text?.FinalText ?? "", TokenIds = kept, FinishReason = finish, PromptTokens = length,
            Timings = new GenerationTimings
            {
                Preprocess = request.PreprocessTime, Vision = p.Vision, Prefill = p.Prefill, Decode = decode,
                TimeToFirstToken = ttft, Total = started.Elapsed,
            },
        };
    }

    /// <summary>The end-of-sequence id: the tokenizer's, else the model config's.</summary>
    internal int EosId => _tokenizer?.EosId ?? _model.Config.Text.EosTokenId;

    /// <summary>
    /// Each prompt position's identity: the token id, or for an image position the image's key and index within it
    /// (a per-request unique value when the image has no key). The expansion of placeholders follows
    /// <see cref="LlavaModel.BuildInputs"/>. Also returns each image's first position.
    /// </summary>
    private (long[] Signature, int[] ImageStarts) Signature(IReadOnlyList<int> ids, IReadOnlyList<EngineImage> images)
    {
        int placeholder = _model.Config.ImageTokenIndex, perImage = _model.Config.ImageSeqLength;
        var sig = new List<long>(ids.Count);
        var starts = new List<int>();
        int i = 0;
        while (i < ids.Count)
        {
            if (ids[i] != placeholder) { sig.Add(ids[i]); i++; continue; }
            int run = 0;
            while (i + run < ids.Count && ids[i + run] == placeholder) run++;
            int count = perImage > 1 && run % perImage == 0 ? run / perImage : run;
            for (int k = 0; k < count; k++)
            {
                int index = starts.Count;
                if (index >= images.Count) throw new PromptException($"The prompt has more image placeholders than the {images.Count} image(s) given");
                starts.Add(sig.Count);
                ulong h = images[index].CacheKey is { } key ? Convert.ToUInt64(key[..16], 16) : (ulong)Interlocked.Increment(ref _anonymousImages) * 0x9E3779B97F4A7C15UL;
                for (int j = 0; j < perImage; j++) sig.Add(-1 - (long)((h + (ulong)j) >> 1));
            }
            i += run;
        }
        if (starts.Count != images.Count)
            throw new PromptException($"{images.Count} image(s) were given but the prompt has placeholders for {starts.Count}");
        return (sig.ToArray(), starts.ToArray());
    }

    private static long _anonymousImages;

    // ---------------------------------------------------------------- decoding

    /// <summary>
    /// Advances every active sequence by one token (one forward pass for all of them); a cancelled sequence is dropped
    /// first. Returns the sequences that ended in this step (finished or cancelled); their slots are free.
    /// </summary>
    public IReadOnlyList<EngineSequence> Step()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var ended = new List<EngineSequence>();
        var active = new List<EngineSequence>();
        foreach (var s in _slots)
        {
            if (s is null) continue;
            if (s.Request.CancellationToken.IsCancellationRequested) { s.Cancel(); ended.Add(s); }
            else active.Add(s);
        }
        if (active.Count == 0) return ended;
        using var noGrad = torch.no_grad();
        using var scope = NewDisposeScope();
        int n = active.Count;
        var ids = new long[n];
        var slots = new int[n];
        var starts = new long[n];
        for (int r = 0; r < n; r++)
        {
            ids[r] = active[r].PendingToken;
            slots[r] = active[r].Slot;
            starts[r] = active[r].KvLength;
        }
        var device = _model.LanguageModel.Device;
        var emb = _model.LanguageModel.EmbedHostIds(ids, n);
        var positions = torch.tensor(starts, device: device).reshape(n, 1);
        var logits = _model.LanguageModel.ForwardSlots(emb, positions, _cache, new SlotRows(slots, starts), LogitsMode.Last);
        foreach (var s in active) s.Fed();
        Consume(active, logits.reshape(n, -1).to(ScalarType.Float32));
        foreach (var s in active) if (s.IsFinished) ended.Add(s);
        return ended;
    }

    /// <summary>Samples each row's next token from logits [rows, vocab] and applies the stop conditions.</summary>
    private void Consume(IReadOnlyList<EngineSequence> rows, Tensor logits)
    {
        long vocab = logits.shape[1];
        int total = checked(rows.Count * (int)vocab);
        if (_hostLogits.Length < total) _hostLogits = new float[total]; // reused: a fresh array per step would churn the large-object heap
        if (logits.device_type == DeviceType.CPU) logits.data<float>().CopyTo(_hostLogits);
        else using (var host = logits.cpu()) host.data<float>().CopyTo(_hostLogits); // the step's one wait for the device
        for (int r = 0; r < rows.Count; r++)
        {
            var s = rows[r];
            if (s.Request.OnStepLogits is { } hook)
                using (var row = logits[r]) hook(s.GeneratedCount, row);
            s.Sample(_hostLogits.AsSpan(r * (int)vocab, (int)vocab));
        }
    }

    /// <summary>Ends every active sequence (after a failure of the step they shared) and returns them; their slots are free.</summary>
    public IReadOnlyList<EngineSequence> CancelAll()
    {
        var all = _slots.Where(s => s is not null).Select(s => s!).ToList();
        foreach (var s in all) s.Cancel();
        return all;
    }

    internal void Free(EngineSequence seq, bool keepPrefix)
    {
        if (_slots[seq.Slot] != seq) return;
        if (keepPrefix && seq.Request.UsePrefixCache && _prefixes.Enabled && seq.KvSignature() is { } sig)
        {
            using var noGrad = torch.no_grad();
            _prefixes.Store(sig, seq.PromptTokens, _cache, seq.Slot, seq.PrefixSource, seq.ReusedPrefixTokens);
        }
        _slots[seq.Slot] = null;
    }

    /// <summary>
    /// Runs requests to completion, at most <see cref="MaxBatchSize"/> at a time: a request waits for a free slot
    /// and takes it as soon as one frees. Results in input order; a cancelled request throws at the end.
    /// </summary>
    public IReadOnlyList<GenerationResult> Run(IReadOnlyList<SequenceRequest> requests)
    {
        var sequences = new EngineSequence?[requests.Count];
        int next = 0, done = 0;
        while (done < requests.Count)
        {
            while (next < requests.Count && FreeSlots > 0)
            {
                var seq = sequences[next++] = Admit(requests[next - 1]);
                if (seq.IsFinished) done++;
            }
            done += Step().Count;
        }
        return sequences.Select(s => s!.Result ?? throw new OperationCanceledException(s.Request.CancellationToken)).ToArray();
    }

    private void WaitForDevice()
    {
        var device = _model.LanguageModel.Device;
        if (device.type == DeviceType.CUDA) torch.cuda.synchronize(device);
    }

    /// <summary>Frees the KV cache and the caches (the model belongs to the caller).</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        for (int i = 0; i < _slots.Length; i++) _slots[i] = null;
        _images.Dispose();
        _prefixes.Dispose();
        _cache.Dispose();
    }
}

/// <summary>One request inside the <see cref="GenerationEngine"/>: its slot, sampler, output and timings.</summary>
internal sealed class EngineSequence
{
    private readonly GenerationEngine _engine;
    private readonly Sampler _sampler;
    private readonly OutputText? _text;
    private readonly List<int> _output = new();
    private readonly List<int> _history; // the ids the logits processors see
    private readonly int _eos;
    private readonly Stopwatch _started;
    private long[] _promptSignature = Array.Empty<long>();
    private int _maxNew, _askedNew;
    private TimeSpan _ttft, _firstTokenAt;
    private FinishReason? _finish;

    internal EngineSequence(GenerationEngine engine, SequenceRequest request, int slot, LlavaTokenizer? tokenizer)
    {
        _engine = engine;
        Request = request;
        Slot = slot;
        _sampler = new Sampler(request.Options);
        var stops = request.Options.StopStrings.Concat(request.ExtraStopStrings).Distinct().ToList();
        if (tokenizer is null && stops.Count > 0) throw new ArgumentException("Stop strings need an engine with a tokenizer", nameof(request));
        _text = tokenizer is null ? null : new OutputText(tokenizer, stops);
        _eos = engine.EosId;
        _started = request.Started ?? Stopwatch.StartNew();
        // What the processors see: the prompt as each layout's reference passes it to generate(), then the answer.
        _history = ProcessorHistory.ForPrompt(engine.Model.Config, request.PromptIds);
    }

    /// <summary>The request this sequence runs.</summary>
    public SequenceRequest Request { get; }
    /// <summary>The KV cache row it holds while active.</summary>
    public int Slot { get; }
    /// <summary>Positions of the slot written so far.</summary>
    public int KvLength { get; private set; }
    /// <summary>Prompt positions (image tokens included).</summary>
    public int PromptTokens => _promptSignature.Length;
    /// <summary>Prompt positions copied from the prefix cache instead of computed.</summary>
    public int ReusedPrefixTokens { get; private set; }
    /// <summary>Tokens sampled so far (the final end-of-sequence token included).</summary>
    public int GeneratedCount { get; private set; }
    /// <summary>True once the sequence ended (finished or cancelled).</summary>
    public bool IsFinished => _finish is not null || IsCancelled;
    /// <summary>True when the sequence was cancelled.</summary>
    public bool IsCancelled { get; private set; }
    /// <summary>The result once finished (null while running or when cancelled).</summary>
    public GenerationResult? Result { get; private set; }
    internal long PendingToken { get; private set; }
    internal object? PrefixSource { get; set; }
    /// <summary>Time the images took at admission (vision tower and projector, or the image cache).</summary>
    public TimeSpan VisionTime { get; internal set; }
    /// <summary>Time the prefill took (the positions not reused from the prefix cache), the first token's sampling included.</summary>
    public TimeSpan PrefillTime { get; internal set; }

    internal void Begin(long[] promptSignature, int reused, int maxNew, int askedNew)
    {
        _promptSignature = promptSignature;
        ReusedPrefixTokens = reused;
        KvLength = promptSignature.Length;
        _maxNew = maxNew;
        _askedNew = askedNew;
        if (maxNew == 0) Finish(FinishReason.Length);
    }

    internal void Fed() => KvLength++;

    internal void Sample(ReadOnlySpan<float> logits)
    {
        if (_finish is not null) return;
        int id = _sampler.Sample(logits, System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_history));
        GeneratedCount++;
        if (GeneratedCount == 1) { _ttft = _started.Elapsed; _firstTokenAt = _ttft; }
        PendingToken = id;
        if (Request.Options.StopAtEndOfSequence && id == _eos) { Finish(FinishReason.EndOfSequence); return; }
        _output.Add(id);
        _history.Add(id);
        if (_text is not null)
        {
            var piece = _text.Append(id);
            if (piece.Length > 0) Request.OnText?.Invoke(piece);
            if (_text.Stopped) { Finish(FinishReason.StopString); return; }
        }
        if (GeneratedCount >= _maxNew) Finish(_maxNew < _askedNew ? FinishReason.ContextFull : FinishReason.Length);
    }

    private void Finish(FinishReason reason)
    {
        _finish = reason;
        var rest = _text?.Complete() ?? "";
        if (rest.Length > 0) Request.OnText?.Invoke(rest);
        var now = _started.Elapsed;
        Result = new GenerationResult
        {
            Text = _text?.FinalText ?? "",
            TokenIds = _output,
            FinishReason = reason,
            PromptTokens = PromptTokens,
            Timings = new GenerationTimings
            {
                Preprocess = Request.PreprocessTime, Vision = VisionTime, Prefill = PrefillTime,
                Decode = GeneratedCount > 0 ? now - _firstTokenAt : TimeSpan.Zero,
                TimeToFirstToken = GeneratedCount > 0 ? _ttft : now, Total = now,
            },
        };
        _engine.Free(this, keepPrefix: true);
    }

    internal void Cancel()
    {
        if (IsFinished) return;
        IsCancelled = true;
        _engine.Free(this, keepPrefix: false);
    }

    /// <summary>The identity of the positions in the slot: prompt, then the generated tokens fed back.</summary>
    internal long[]? KvSignature()
    {
        if (KvLength < _promptSignature.Length) return null;
        var sig = new long[KvLength];
        _promptSignature.CopyTo(sig, 0);
        for (int i = _promptSignature.Length; i < KvLength; i++) sig[i] = _output[i - _promptSignature.Length];
        return sig;
    }
}
