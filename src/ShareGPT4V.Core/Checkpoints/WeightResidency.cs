using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.Checkpoints;

/// <summary>
/// Brings memory-mapped weights into memory during the load. Mapping a checkpoint costs nothing by itself, so without
/// this the load would look instant and the first request would pay for reading the weights, page fault by page
/// fault. Here the kernel is first told the ranges will be needed (so a cold file is read with large sequential
/// readahead), then each range is mapped in one call (MADV_POPULATE_READ) or, where the kernel lacks that, by reading
/// one byte of every page; on as many threads as libtorch uses.
/// </summary>
internal static unsafe class WeightResidency
{
    private const long Chunk = 32L << 20;

    public static void Touch(IEnumerable<Tensor> tensors, CancellationToken ct)
    {
        var ranges = new List<(nint Start, long Length)>();
        foreach (var t in tensors)
        {
            if (t.device_type != DeviceType.CPU || !t.is_contiguous()) continue;
            long bytes = t.numel() * t.ElementSize;
            if (bytes == 0 || bytes > int.MaxValue) continue; // Tensor.bytes stops at 2 GiB; such a tensor just faults in later
            nint start = MappedMemory.Address(t);
            for (long off = 0; off < bytes; off += Chunk)
                ranges.Add((start + (nint)off, Math.Min(Chunk, bytes - off)));
        }
        foreach (var (start, length) in ranges) MappedMemory.Advise(start, length, MappedMemory.WillNeed);
        var parallel = new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, torch.get_num_threads()), CancellationToken = ct };
        long sink = 0;
        Parallel.ForEach(ranges, parallel, r =>
        {
            if (MappedMemory.Advise(r.Start, r.Length, MappedMemory.PopulateRead)) return;
            byte* p = (byte*)r.Start;
            long sum = 0;
            for (long off = 0; off < r.Length; off += MappedMemory.Page) sum += Volatile.Read(ref p[off]);
            sum += Volatile.Read(ref p[r.Length - 1]);
            Interlocked.Add(ref sink, sum);
        });
        GC.KeepAlive(sink);
    }
}
