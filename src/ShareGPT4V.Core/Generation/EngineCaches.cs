using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.Generation;

/// <summary>
/// Projected image embeddings [tokens, hidden] by image key, least recently used dropped first, within a byte budget.
/// Lookups may come from any thread (callers skip preprocessing a cached image); tensors are used on the engine's.
/// </summary>
internal sealed class ImageEmbeddingCache : IDisposable
{
    private readonly long _budget;
    private readonly Dictionary<string, LinkedListNode<(string Key, Tensor Value)>> _map = new();
    private readonly LinkedList<(string Key, Tensor Value)> _order = new(); // most recent first
    private readonly object _lock = new();

    public ImageEmbeddingCache(long budgetBytes) => _budget = budgetBytes;

    public long Bytes { get; private set; }
    public long Hits { get; private set; }
    public long Misses { get; private set; }

    public int Count
    {
        get { lock (_lock) return _map.Count; }
    }

    public bool Contains(string key)
    {
        lock (_lock) return _map.ContainsKey(key);
    }

    /// <summary>The cached embedding (owned by the cache: do not dispose), or null; counts a hit or a miss.</summary>
    public Tensor? Get(string key)
    {
        lock (_lock)
        {
            if (!_map.TryGetValue(key, out var node)) { Misses++; return null; }
            Hits++;
            _order.Remove(node);
            _order.AddFirst(node);
            return node.Value.Value;
        }
    }

    /// <summary>Keeps a copy of <paramref name="embedding"/> if it fits the budget.</summary>
    public void Put(string key, Tensor embedding)
    {
        long bytes = embedding.NumberOfElements * embedding.ElementSize;
        if (bytes > _budget) return;
        lock (_lock)
        {
            if (_map.ContainsKey(key)) return;
            while (Bytes + bytes > _budget && _order.Last is { } last) Remove(last);
            var copy = embedding.clone().DetachFromDisposeScope();
            _map[key] = _order.AddFirst((key, copy));
            Bytes += bytes;
        }
    }

    private void Remove(LinkedListNode<(string Key, Tensor Value)> node)
    {
        _order.Remove(node);
        _map.Remove(node.Value.Key);
        Bytes -= node.Value.Value.NumberOfElements * node.Value.Value.ElementSize;
        node.Value.Value.Dispose();
    }

    public void Clear()
    {
        lock (_lock) while (_order.Last is { } last) Remove(last);
    }

    public void Dispose() => Clear();
}

/// <summary>
/// Keys and values of finished sequences (prompt and answer), so a later prompt that starts with the same positions,
/// the next turn of a chat, copies them into its slot and prefills only what is new. A sequence is identified per
/// position by its token id, or for image positions by the image's key and the position within the image. Bounded by
/// a byte budget, least recently used dropped first; the entry a sequence started from, or one it extends, is replaced
/// by the sequence's own when it finishes.
/// </summary>
internal sealed class PrefixCache : IDisposable
{
    private sealed class Entry
    {
        public required long[] Signature;
        public required int PromptLength; // positions of the prompt; the rest are the answer
        public required Tensor[] Keys;   // per layer [kvHeads, length, headDim]
        public required Tensor[] Values;
        public required long Bytes;
        public long LastUse;
    }

    private readonly long _budget;
    private readonly List<Entry> _entries = new();
    private long _clock;

    public PrefixCache(long budgetBytes) => _budget = budgetBytes;

    public bool Enabled => _budget > 0;
    public long Bytes { get; private set; }
    public int Count => _entries.Count;
    public long Hits { get; private set; }
    public long TokensReused { get; private set; }
    public long Evictions { get; private set; }

    /// <summary>
    /// Copies into <paramref name="slot"/> the longest cached prefix of <paramref name="signature"/>, at most
    /// <paramref name="maxLength"/> positions; returns the number of positions copied (0: none).
    /// </summary>
    public int Restore(long[] signature, int maxLength, KvCache cache, int slot, out object? source)
    {
        source = null;
        Entry? best = null;
        int bestLength = 0;
        foreach (var e in _entries)
        {
            int n = Math.Min(Math.Min(e.Signature.Length, signature.Length), maxLength);
            int common = 0;
            while (common < n && e.Signature[common] == signature[common]) common++;
            if (common > bestLength) { best = e; bestLength = common; }
        }
        if (best is null) return 0;
        best.LastUse = ++_clock;
        for (int layer = 0; layer < cache.Layers; layer++)
        {
            var (keys, values) = cache.Buffers(layer);
            using var kd = keys.select(0, slot).narrow(1, 0, bestLength);
            using var vd = values.select(0, slot).narrow(1, 0, bestLength);
            using var ks = best.Keys[layer].narrow(1, 0, bestLength);
            using var vs = best.Values[layer].narrow(1, 0, bestLength);
            kd.copy_(ks);
            vd.copy_(vs);
        }
        Hits++;
        TokensReused += bestLength;
        source = best;
        return bestLength;
    }

    /// <summary>
    /// Keeps positions [0, signature.Length) of <paramref name="slot"/> if they fit the budget. The entry the sequence
    /// started from (<paramref name="source"/>) is replaced when the sequence reused all of that entry's prompt: its
    /// conversation moved on. A sibling that shares less (another question about the same image) leaves it.
    /// </summary>
    public void Store(long[] signature, int promptLength, KvCache cache, int slot, object? source, int reused)
    {
        long bytes = signature.LongLength * cache.BytesPerPosition;
        if (bytes > _budget || signature.Length == 0) return;
        if (source is Entry old && reused >= old.PromptLength && _entries.IndexOf(old) is int at and >= 0) Remove(at);
        // A conversation that moved on replaces its earlier turn; an identical or longer entry makes this one useless.
        for (int i = _entries.Count - 1; i >= 0; i--)
        {
            var e = _entries[i];
            if (IsPrefix(signature, e.Signature)) { e.LastUse = ++_clock; return; }
            if (IsPrefix(e.Signature, signature)) Remove(i);
        }
        while (Bytes + bytes > _budget && _entries.Count > 0)
        {
            int oldest = 0;
            for (int i = 1; i < _entries.Count; i++) if (_entries[i].LastUse < _entries[oldest].LastUse) oldest = i;
            Remove(oldest);
            Evictions++;
        }
        var keys = new Tensor[cache.Layers];
        var values = new Tensor[cache.Layers];
        using (NewDisposeScope())
        {
            for (int layer = 0; layer < cache.Layers; layer++)
            {
                var (k, v) = cache.Buffers(layer);
                keys[layer] = k.select(0, slot).narrow(1, 0, signature.Length).clone().DetachFromDisposeScope();
                values[layer] = v.select(0, slot).narrow(1, 0, signature.Length).clone().DetachFromDisposeScope();
            }
        }
        _entries.Add(new Entry { Signature = signature, PromptLength = promptLength, Keys = keys, Values = values, Bytes = bytes, LastUse = ++_clock });
        Bytes += bytes;
    }

    private static bool IsPrefix(long[] shorter, long[] longer)
    {
        if (shorter.Length > longer.Length) return false;
        for (int i = 0; i < shorter.Length; i++) if (shorter[i] != longer[i]) return false;
        return true;
    }

    private void Remove(int index)
    {
        var e = _entries[index];
        _entries.RemoveAt(index);
        Bytes -= e.Bytes;
        foreach (var t in e.Keys) t.Dispose();
        foreach (var t in e.Values) t.Dispose();
    }

    public void Clear()
    {
        while (_entries.Count > 0) Remove(_entries.Count - 1);
    }

    public void Dispose() => Clear();
}
