using System.Runtime.InteropServices;

namespace ShareGPT4V.Modeling;

/// <summary>
/// Hands memory the C heap keeps after libtorch frees it back to the OS. glibc serves the megabyte-sized activations
/// of an image encoding or a prefill from its heap (its mmap threshold rises as large blocks are freed) and cannot
/// shrink past small blocks allocated between them, so without this a long-running process keeps the high-water mark
/// of every stage resident. Called after stages that allocate heavily; does nothing where glibc is not the C library.
/// </summary>
internal static class CHeap
{
    [DllImport("libc", EntryPoint = "malloc_trim")]
    private static extern int MallocTrim(nuint pad);

    private static bool _unavailable = !OperatingSystem.IsLinux();

    public static void Trim()
    {
        if (_unavailable) return;
        try { MallocTrim(0); }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { _unavailable = true; }
    }
}
