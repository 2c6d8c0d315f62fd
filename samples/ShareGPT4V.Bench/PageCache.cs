using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;

namespace ShareGPT4V.Bench;

/// <summary>How much of a checkpoint is in the OS page cache before the load: a load from cache and one from disk differ tenfold.</summary>
internal static class PageCache
{
    [DllImport("libc", EntryPoint = "mincore", SetLastError = true)]
    private static extern unsafe int MinCore(void* address, nuint length, byte* vector);

    /// <summary>Percent of the bytes of the folder's weight files resident in the page cache, or null where it cannot be told (not Linux).</summary>
    public static unsafe double? ResidentPercent(string folder)
    {
        if (!OperatingSystem.IsLinux()) return null;
        var files = Directory.GetFiles(folder, "*.safetensors").Concat(Directory.GetFiles(folder, "*.bin")).ToList();
        long total = 0, resident = 0;
        const long Page = 4096;
        try
        {
            foreach (var f in files)
            {
                long length = new FileInfo(f).Length;
                if (length == 0) continue;
                using var map = MemoryMappedFile.CreateFromFile(f, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
                using var view = map.CreateViewAccessor(0, length, MemoryMappedFileAccess.Read);
                byte* p = null;
                view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
                try
                {
                    long pages = (length + Page - 1) / Page;
                    var vector = new byte[pages];
                    fixed (byte* v = vector)
                        if (MinCore(p + view.PointerOffset, (nuint)length, v) != 0) return null;
                    resident += vector.Count(b => (b & 1) != 0) * Page;
                    total += pages * Page;
                }
                finally
                {
                    view.SafeMemoryMappedViewHandle.ReleasePointer();
                }
            }
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException or IOException or UnauthorizedAccessException)
        {
            return null;
        }
        return total == 0 ? null : 100.0 * resident / total;
    }
}
