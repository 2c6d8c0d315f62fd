using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.Checkpoints;

/// <summary>
/// Brings memory-mapped weights into memory during the load. Mapping a checkpoint costs nothing by itself, so without
/// this the load would look instant and the first request would pay for reading the weights, page fault by page
/// fault. Here the kernel is first told the ranges will be needed (so a cold file is read with large sequential
/// readahead), then one byte of every page is read, on as many threads as libtorch uses.
/// </summary>
internal static unsafe class WeightResidency
{
    private const long Page = 4096;
    private const long Chunk = 32L << 20;
    private const int MadvWillNeed = 3;

    [DllImport("libc", EntryPoint = "madvise", SetLastError = true)]
    private static extern int Madvise(nint address, nuint length, int advice);

    public static void Touch(IEnumerable<Tensor> tensors, CancellationToken ct)
    {
        var ranges = new List<(nint Start, long Length)>();
        foreach (var t in tensors)
        {
            if (t.device_type != DeviceType.CPU || !t.is_contiguous()) continue;
            long bytes = t.numel() * t.ElementSize;
            if (bytes == 0 || bytes > int.MaxValue) continue; // Tensor.bytes stops at 2 GiB; such a tensor just faults in later
            nint start = (nint)Unsafe.AsPointer(ref MemoryMarshal.GetReference(t.bytes));
            for (long off = 0; off < bytes; off += Chunk)
                ranges.Add((start + (nint)off, Math.Min(Chunk, bytes - off)));
        }
        if (OperatingSystem.IsLinux())
        {
            try
            {
                foreach (var (start, length) in ranges)
                {
                    nint aligned = start & ~(nint)(Page - 1);
                    Madvise(aligned, (nuint)(length + (start - aligned)), MadvWillNeed); // advice only: failures are harmless
                }
            }
            catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { }
        }
        var parallel = new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, torch.get_num_threads()), CancellationToken = ct };
        long sink = 0;
        Parallel.ForEach(ranges, parallel, r =>
        {
            byte* p = (byte*)r.Start;
            long sum = 0;
            for (long off = 0; off < r.Length; off += Page) sum += Volatile.Read(ref p[off]);
            sum += Volatile.Read(ref p[r.Length - 1]);
            Interlocked.Add(ref sink, sum);
        });
        GC.KeepAlive(sink);
    }
}
