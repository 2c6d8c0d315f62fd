using ShareGPT4V.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.Generation;

/// <summary>
/// A static key/value cache: per layer, keys and values of shape [maxBatch, kvHeads, maxSeq, headDim], allocated
/// once and written in place at the current positions. Nothing grows per token.
/// </summary>
internal sealed class KvCache : IDisposable
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
    /// Writes k/v [rows, kvHeads, T, headDim] of each row r at positions [starts[r], starts[r] + T) of slot slots[r].
    /// </summary>
    internal void WriteSlots(int layer, SlotRows rows, Tensor k, Tensor v)
    {
        long t = k.shape[2];
        for (int r = 0; r < rows.Count; r++)
        {
            int slot = rows.Slots[r];
            long start = rows.Starts[r];
            if ((uint)slot >= (uint)MaxBatch || start + t > MaxSequence)
                throw new PromptException($"Slot {slot} needs {start + t} positions but the KV cache holds {MaxSequence} in each of {MaxBatch} slots");
        }
        if (t == 1 && CopyOnePosition(layer, rows, k, v)) return;
        for (int r = 0; r < rows.Count; r++)
        {
            int slot = rows.Slots[r];
            long start = rows.Starts[r];
            using var kslot = _keys[layer].select(0, slot);
            using var vslot = _values[layer].select(0, slot);
            using var kd = kslot.narrow(1, start, t);
            using var vd = vslot.narrow(1, start, t);
            using var ks = k.select(0, r);
            using var vs = v.select(0, r);
            kd.copy_(ks);
            vd.copy_(vs);
        }
    }

    /// <summary>
    /// A decode step's write (one position per row, float32 in, a float32 or bfloat16 cache on the CPU) as plain copies of each head's row: the general
    /// path's eight libtorch calls per row and layer cost more than the copy. False when the tensors are not of that kind.
    /// </summary>
    private unsafe bool CopyOnePosition(int layer, SlotRows rows, Tensor k, Tensor v)
    {
        var cache = _keys[layer];
        if (DType is not (ScalarType.Float32 or ScalarType.BFloat16) || Device.type != DeviceType.CPU || k.dtype != ScalarType.Float32 || v.dtype != ScalarType.Float32
            || k.device_type != DeviceType.CPU || v.device_type != DeviceType.CPU || !k.is_contiguous() || !v.is_contiguous()
            || cache.NumberOfElements * cache.ElementSize > int.MaxValue)
            return false;
        var shape = cache.shape; // [maxBatch, kvHeads, maxSeq, headDim]
        long heads = shape[1], d = shape[3];
        if (k.numel() != rows.Count * heads * d || v.numel() != k.numel()) return false;
        byte* kc = (byte*)Checkpoints.MappedMemory.Address(cache), vc = (byte*)Checkpoints.MappedMemory.Address(_values[layer]);
        float* ks = (float*)Checkpoints.MappedMemory.Address(k), vs = (float*)Checkpoints.MappedMemory.Address(v);
        bool bf16 = DType == ScalarType.BFloat16;
        int size = bf16 ? 2 : 4;
        long bytes = d * size;
        // bfloat16 rounds to nearest even, as libtorch's conversion does (QuantKernels.ToBFloat16), so both paths agree.
        bool vector = QuantKernels.Vector && d % 16 == 0;
        for (int r = 0; r < rows.Count; r++)
            for (long h = 0; h < heads; h++)
            {
                long dst = (((long)rows.Slots[r] * heads + h) * MaxSequence + rows.Starts[r]) * d * size, src = (r * heads + h) * d;
                if (bf16)
                {
                    QuantKernels.ToBFloat16(ks + src, (ushort*)(kc + dst), (int)d, vector);
                    QuantKernels.ToBFloat16(vs + src, (ushort*)(vc + dst), (int)d, vector);
                }
                else
                {
                    Buffer.MemoryCopy(ks + src, kc + dst, bytes, bytes);
                    Buffer.MemoryCopy(vs + src, vc + dst, bytes, bytes);
                }
            }
        return true;
    }

    /// <summary>
    /// One slot's keys and values for positions [0, length) as float32 [1, kvHeads, length, headDim] copies, from a
    /// bfloat16 cache on the CPU (widening is exact: the bits shifted up). libtorch's conversion of the strided view
    /// took about 1 s over the layers of a 625-token prompt; a prompt that continues a cached prefix reads it so.
    /// </summary>
    internal unsafe (Tensor Keys, Tensor Values) SlotAsFloat32(int layer, int slot, long length)
    {
        if (DType != ScalarType.BFloat16 || Device.type != DeviceType.CPU || _keys[layer].NumberOfElements * 2 > int.MaxValue)
        {
            var (k, v) = Slot(layer, slot, length);
            using (k) using (v) return (k.to(ScalarType.Float32), v.to(ScalarType.Float32));
        }
        var shape = _keys[layer].shape; // [maxBatch, kvHeads, maxSeq, headDim]
        long heads = shape[1], d = shape[3];
        var keys = torch.empty(new[] { 1, heads, length, d }, ScalarType.Float32);
        var values = torch.empty(new[] { 1, heads, length, d }, ScalarType.Float32);
        foreach (var (cache, dst) in new[] { (_keys[layer], keys), (_values[layer], values) })
        {
            ushort* src = (ushort*)Checkpoints.MappedMemory.Address(cache);
            float* o = (float*)Checkpoints.MappedMemory.Address(dst);
            for (long h = 0; h < heads; h++)
            {
                ushort* from = src + ((long)slot * heads + h) * MaxSequence * d;
                uint* to = (uint*)(o + h * length * d);
                for (long i = 0; i < length * d; i++) to[i] = (uint)from[i] << 16;
            }
        }
        return (keys, values);
    }

    /// <summary>Views of one slot's keys and values for positions [0, length): [1, kvHeads, length, headDim].</summary>
    internal (Tensor Keys, Tensor Values) Slot(int layer, int slot, long length)
    {
        using var k = _keys[layer].narrow(0, slot, 1);
        using var v = _values[layer].narrow(0, slot, 1);
        return (k.narrow(2, 0, length), v.narrow(2, 0, length));
    }

    /// <summary>Bytes one position of one slot takes over all layers (keys and values).</summary>
    public long BytesPerPosition => Bytes / MaxBatch / MaxSequence;

    /// <summary>Slots <paramref name="to"/> take positions [0, <paramref name="positions"/>) of slot <paramref name="from"/> (beams starting from one prompt).</summary>
    internal void CopySlot(int from, ReadOnlySpan<int> to, long positions)
    {
        using var scope = torch.NewDisposeScope();
        foreach (var buffers in new[] { _keys, _values })
            foreach (var layer in buffers)
            {
                var source = layer.select(0, from).narrow(1, 0, positions);
                foreach (int slot in to) layer.select(0, slot).narrow(1, 0, positions).copy_(source);
            }
    }

    /// <summary>
    /// Beam search: slot <paramref name="slots"/>[i] takes positions [0, <paramref name="positions"/>) of slot
    /// <paramref name="slots"/>[<paramref name="sources"/>[i]] (an index-select over the batch dimension).
    /// </summary>
    internal void ReorderSlots(int[] slots, ReadOnlySpan<int> sources, long positions)
    {
        bool identity = true;
        var from = new long[sources.Length];
        for (int i = 0; i < sources.Length; i++)
        {
            if ((uint)sources[i] >= (uint)slots.Length) throw new ArgumentOutOfRangeException(nameof(sources), sources[i], $"Beam {sources[i]} is outside the {slots.Length} beams");
            from[i] = slots[sources[i]];
            identity &= sources[i] == i;
        }
        if (identity || positions <= 0) return;
        using var scope = torch.NewDisposeScope();
        var src = torch.tensor(from, device: Device);
        var dst = torch.tensor(slots.Select(x => (long)x).ToArray(), device: Device);
        foreach (var buffers in new[] { _keys, _values })
            foreach (var layer in buffers)
            {
                var view = layer.narrow(2, 0, positions);
                view.index_copy_(0, dst, view.index_select(0, src)); // index_select copies first, so overlapping slots are safe
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

/// <summary>The rows of a forward pass over cache slots: row r lives in slot <see cref="Slots"/>[r] and starts at position <see cref="Starts"/>[r].</summary>
internal sealed class SlotRows
{
    public SlotRows(int[] slots, long[] starts)
    {
        if (slots.Length != starts.Length) throw new ArgumentException("One start per slot is needed", nameof(starts));
        Slots = slots;
        Starts = starts;
    }

    public int[] Slots { get; }
    public long[] Starts { get; }
    public int Count => Slots.Length;
}
