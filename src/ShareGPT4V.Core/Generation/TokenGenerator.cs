using ShareGPT4V.Modeling;
using ShareGPT4V.Language;
using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.Generation;

/// <summary>
/// The synchronous core of generation for one batch: <see cref="Prefill"/> the prompt into a static KV cache, then
/// <see cref="DecodeOneToken"/> per step. Only ids and logits cross this boundary; it runs on one thread.
/// Left-padded rows keep their own positions (real-token count), so a padded row decodes exactly as it would alone.
/// </summary>
public sealed class TokenGenerator : IDisposable
{
    private readonly LlavaModel _model;
    private readonly KvCache _cache;
    private readonly bool _ownsCache;
    private Tensor? _mask;       // [B, capacity] int64: 1 = real token
    private long[] _nextPosition = Array.Empty<long>();
    private long _length;        // positions used in the cache
    private int _batch;

    public TokenGenerator(LlavaModel model, KvCache cache, bool ownsCache = false)
    {
        _model = model;
        _cache = cache;
        _ownsCache = ownsCache;
    }

    public long Length => _length;
    public int Batch => _batch;
    public KvCache Cache => _cache;

    /// <summary>Runs the prompt. Returns the logits of each row's last position, [B, V] float32 (caller owns).</summary>
    public Tensor Prefill(MultimodalInputs inputs)
    {
        using var noGrad = torch.no_grad();
        using var scope = NewDisposeScope();
        _batch = (int)inputs.Embeddings.shape[0];
        long t = inputs.Length;
        if (_batch > _cache.MaxBatch || t >= _cache.MaxSequence)
            throw new PromptException($"The prompt needs {t} positions (batch {_batch}) but the context holds {_cache.MaxSequence} (batch {_cache.MaxBatch})");
        _mask?.Dispose();
        _mask = torch.zeros(_batch, _cache.MaxSequence, ScalarType.Int64, inputs.AttentionMask.device);
        _mask.narrow(1, 0, t).copy_(inputs.AttentionMask);
        _mask.DetachFromDisposeScope();
        _nextPosition = inputs.Lengths.Select(l => (long)l).ToArray();
        bool padded = inputs.Lengths.Any(l => l != t);
        var logits = _model.LanguageModel.Forward(inputs.Embeddings, inputs.PositionIds,
            padded ? _mask.narrow(1, 0, t) : null, _cache, 0, LogitsMode.Last);
        _length = t;
        var result = logits.squeeze(1).to(ScalarType.Float32).MoveToOuterDisposeScope();
        Modeling.CHeap.Trim(); // the prompt's activations are freed now: give their memory back
        return result;
    }

    /// <summary>Appends one token per row and returns the next logits, [B, V] float32 (caller owns).</summary>
    public Tensor DecodeOneToken(ReadOnlySpan<long> tokens)
    {
        if (_mask is null) throw new InvalidOperationException("Prefill must run before DecodeOneToken");
        if (tokens.Length != _batch) throw new ArgumentException($"Expected {_batch} tokens, got {tokens.Length}");
        if (_length + 1 > _cache.MaxSequence)
            throw new PromptException($"The context window of {_cache.MaxSequence} positions is full");
        using var noGrad = torch.no_grad();
        using var scope = NewDisposeScope();
        var device = _model.LanguageModel.Device;
        var ids = torch.tensor(tokens.ToArray(), device: device).reshape(_batch, 1);
        var emb = _model.LanguageModel.Embed(ids);
        var pos = torch.tensor(_nextPosition, device: device).reshape(_batch, 1);
        _mask.narrow(1, _length, 1).fill_(HeldScalars.One);
        bool padded = _nextPosition.Any(p => p != _length);
        var logits = _model.LanguageModel.Forward(emb, pos, padded ? _mask.narrow(1, 0, _length + 1) : null, _cache, _length, LogitsMode.Last);
        _length++;
        for (int i = 0; i < _nextPosition.Length; i++) _nextPosition[i]++;
        return logits.squeeze(1).to(ScalarType.Float32).MoveToOuterDisposeScope();
    }

    /// <summary>Greedy decoding of <paramref name="maxNewTokens"/> tokens (no early stop): the reference protocol.</summary>
    public long[][] Greedy(MultimodalInputs inputs, int maxNewTokens, Action<int, Tensor>? onStepLogits = null)
    {
        var outputs = new List<long>[inputs.Lengths.Length];
        for (int i = 0; i < outputs.Length; i++) outputs[i] = new List<long>();
        var logits = Prefill(inputs);
        for (int step = 0; step < maxNewTokens; step++)
        {
            onStepLogits?.Invoke(step, logits);
            long[] next;
            using (var am = logits.argmax(-1))
            using (var host = am.cpu()) next = host.data<long>().ToArray(); // data<T> reads CPU memory only
            logits.Dispose();
            for (int i = 0; i < next.Length; i++) outputs[i].Add(next[i]);
            if (step == maxNewTokens - 1) break;
            logits = DecodeOneToken(next);
        }
        return outputs.Select(o => o.ToArray()).ToArray();
    }

    public void Dispose()
    {
        _mask?.Dispose();
        _mask = null;
        if (_ownsCache) _cache.Dispose();
    }
}
