using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using TorchSharp;

namespace ShareGPT4V.Checkpoints;

/// <summary>Memory advice for weights (Linux; elsewhere, and where the advice is refused, nothing happens).</summary>
internal static unsafe class MappedMemory
{
    private const long Page = 4096;
    private const int MadvDontNeed = 4;
    private const int MadvHugePage = 14;

    [DllImport("libc", EntryPoint = "madvise")]
    private static extern int Madvise(nint address, nuint length, int advice);

    private static bool _unavailable = !OperatingSystem.IsLinux();

    /// <summary>Asks for transparent huge pages for a freshly allocated, not yet written tensor.</summary>
    public static void AdviseHugePages(torch.Tensor t)
    {
        long bytes = t.numel() * t.ElementSize;
        if (bytes < 2L << 20 || bytes > int.MaxValue) return; // small tensors gain nothing; Tensor.bytes stops at 2 GiB
        Advise((nint)Unsafe.AsPointer(ref MemoryMarshal.GetReference(t.bytes)), bytes, MadvHugePage);
    }

    /// <summary>
    /// Drops the pages wholly inside a tensor that views a private file mapping from this process. They were only
    /// read, so a later access reads them again from the file (page cache); pages shared with neighbouring tensors at
    /// the edges are kept.
    /// </summary>
    public static void Release(torch.Tensor view)
    {
        long length = view.numel() * view.ElementSize;
        if (length < Page || length > int.MaxValue) return;
        nint start = (nint)Unsafe.AsPointer(ref MemoryMarshal.GetReference(view.bytes));
        nint first = (start + (nint)(Page - 1)) & ~(nint)(Page - 1);
        nint end = (start + (nint)length) & ~(nint)(Page - 1);
        if (end > first) Advise(first, end - first, MadvDontNeed);
    }

    private static void Advise(nint address, long length, int advice)
    {
        if (_unavailable) return;
        try
        {
            nint aligned = address & ~(nint)(Page - 1);
            Madvise(aligned, (nuint)(length + (address - aligned)), advice);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { _unavailable = true; }
    }
}
