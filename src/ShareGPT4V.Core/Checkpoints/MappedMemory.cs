using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using TorchSharp;

namespace ShareGPT4V.Checkpoints;

/// <summary>Memory advice for weights (Linux; elsewhere, and where the kernel refuses the advice, nothing happens).</summary>
internal static unsafe class MappedMemory
{
    public const long Page = 4096;
    public const int WillNeed = 3;
    private const int DontNeed = 4;
    private const int HugePage = 14;
    public const int PopulateRead = 22; // Linux 5.14+

    [DllImport("libc", EntryPoint = "madvise")]
    private static extern int Madvise(nint address, nuint length, int advice);

    private static bool _unavailable = !OperatingSystem.IsLinux();

    /// <summary>The address of a CPU tensor's first element (callers keep to tensors under 2 GiB, Tensor.bytes' limit).</summary>
    public static nint Address(torch.Tensor t) => (nint)Unsafe.AsPointer(ref MemoryMarshal.GetReference(t.bytes));

    /// <summary>Asks for transparent huge pages for a freshly allocated, not yet written tensor.</summary>
    public static void AdviseHugePages(torch.Tensor t)
    {
        long bytes = t.numel() * t.ElementSize;
        if (bytes < 2L << 20 || bytes > int.MaxValue) return; // small tensors gain nothing
        Advise(Address(t), bytes, HugePage);
    }

    /// <summary>Maps every page of a tensor that views a file mapping in one call, reading the file where needed.</summary>
    public static bool Populate(torch.Tensor t)
    {
        long bytes = t.numel() * t.ElementSize;
        return bytes is > 0 and <= int.MaxValue && Advise(Address(t), bytes, PopulateRead);
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
        nint start = Address(view);
        nint first = (start + (nint)(Page - 1)) & ~(nint)(Page - 1);
        nint end = (start + (nint)length) & ~(nint)(Page - 1);
        if (end > first) Advise(first, end - first, DontNeed);
    }

    /// <summary>madvise over the pages covering [address, address + length); false when refused or unavailable.</summary>
    public static bool Advise(nint address, long length, int advice)
    {
        if (_unavailable) return false;
        try
        {
            nint aligned = address & ~(nint)(Page - 1);
            return Madvise(aligned, (nuint)(length + (address - aligned)), advice) == 0;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            _unavailable = true;
            return false;
        }
    }
}
