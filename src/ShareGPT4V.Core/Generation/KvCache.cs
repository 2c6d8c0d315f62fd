using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.Generation;

/// <summary>
/// A static key/value cache: per layer, keys and values of shape [maxBatch, kvHeads, maxSeq, headDim], allocated
/// once and written in place at the current positions. Nothing grows per token.
/// </summary>
public sealed class KvCache : IDisposable
{
    private readonly Tensor[] _keys;
    private readonly Tensor[] _values;

    public int MaxBatch { get; }
    public int MaxSequence { get; }
    public int Layers => _keys.Length;
    public ScalarType DType { get; }
    public Device Device { get; }

    public KvCache(int layers, int maxBatch, int kvHeads, int maxSequence, int headDim, ScalarType dtype, Device device)
    {
        if (layers <= 0 || maxBatch <= 0 || kvHeads <= 0 || maxSequence <= 0 || headDim <= 0)
            throw new ArgumentOutOfRangeException(nameof(maxSequence), "KV cache dimensions must be positive");
        MaxBatch = maxBatch;
        MaxSequence = maxSequence;
        DType = dtype;
        Device = device;
        _keys = new Tensor[layers];
        _values = new Tensor[layers];
        for (int i = 0; i < layers; i++)
        {
            _keys[i] = torch.zeros(new long[] { maxBatch, kvHeads, maxSequence, headDim }, dtype, device);
            _values[i] = torch.zeros(new long[] { maxBatch, kvHeads, maxSequence, headDim }, dtype, device);
            _keys[i].DetachFromDisposeScope();
            _values[i].DetachFromDisposeScope();
        }
    }

    /// <summary>Bytes the cache holds.</summary>
    public long Bytes => _keys.Sum(k => k.NumberOfElements * k.ElementSize) * 2;

    /// <summary>
    /// Writes k/v [B, kvHeads, T, d] at positions [start, start + T) of layer <paramref name="layer"/> and returns views of
    /// the keys and values for positions [0, start + T).
    /// </summary>
    public (Tensor Keys, Tensor Values) Update(int layer, long start, Tensor k, Tensor v)
    {
        long b = k.shape[0], t = k.shape[2];
        if (b > MaxBatch || start + t > MaxSequence)
            throw new PromptException($"The sequence needs {start + t} positions for batch {b} but the KV cache holds {MaxSequence} for batch {MaxBatch}");
        var kc = _keys[layer].narrow(0, 0, b);
        var vc = _values[layer].narrow(0, 0, b);
        using (var kd = kc.narrow(2, start, t)) kd.copy_(k);
        using (var vd = vc.narrow(2, start, t)) vd.copy_(v);
        var keys = kc.narrow(2, 0, start + t);
        var values = vc.narrow(2, 0, start + t);
        kc.Dispose();
        vc.Dispose();
        return (keys, values);
    }

    /// <summary>
    /// Beam search: rows [0, n) of every layer take the contents of rows <paramref name="sources"/>[i] for positions
    /// [0, <paramref name="positions"/>), n = sources.Length (an index-select over the batch dimension).
    /// </summary>
    internal void Reorder(ReadOnlySpan<int> sources, long positions)
    {
        bool identity = true;
        for (int i = 0; i < sources.Length; i++)
        {
            if ((uint)sources[i] >= (uint)MaxBatch) throw new ArgumentOutOfRangeException(nameof(sources), sources[i], $"Row {sources[i]} is outside the cache's batch of {MaxBatch}");
            identity &= sources[i] == i;
        }
        if (identity || positions <= 0) return;
        using var scope = torch.NewDisposeScope();
        var index = torch.tensor(sources.ToArray().Select(x => (long)x).ToArray(), device: Device);
        foreach (var buffers in new[] { _keys, _values })
            foreach (var layer in buffers)
            {
                var rows = layer.narrow(0, 0, sources.Length).narrow(2, 0, positions);
                rows.copy_(rows.index_select(0, index)); // index_select copies first, so overlapping rows are safe
            }
    }

    /// <summary>The whole key and value buffers of a layer, [maxBatch, kvHeads, maxSeq, headDim] (owned by the cache), for kernels that read the cache in place.</summary>
    internal (Tensor Keys, Tensor Values) Buffers(int layer) => (_keys[layer], _values[layer]);

    public void Dispose()
    {
        foreach (var t in _keys) t.Dispose();
        foreach (var t in _values) t.Dispose();
    }
}
