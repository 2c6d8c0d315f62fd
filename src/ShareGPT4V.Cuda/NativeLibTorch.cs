using System.Runtime.InteropServices;

namespace ShareGPT4V.Cuda;

/// <summary>
/// Loads libtorch from a folder of the caller's choosing (a PyTorch install's <c>torch/lib</c>, an unpacked libtorch
/// archive) before TorchSharp starts, so an app can run on a CUDA libtorch that no runtime package provides.
/// <para>
/// TorchSharp finds libtorch by name; once a library with the same soname is loaded, the dynamic loader hands out
/// that one. So the libraries are loaded here by full path (c10, torch_cpu, the CUDA pair when present, torch), and
/// then TorchSharp's glue library (<c>libLibTorchSharp.so</c>, the copy TorchSharp itself would pick) is loaded with
/// every symbol bound at once: a glue built for another libtorch fails here with the missing symbol named, instead
/// of crashing the process at its first call.
/// </para>
/// </summary>
public static class NativeLibTorch
{
    private const int RtldLazy = 0x1, RtldNow = 0x2, RtldGlobal = 0x100;
    private static readonly object Gate = new();
    private static string? _loadedFrom;

    /// <summary>The folder <see cref="Load"/> loaded libtorch from, or null.</summary>
    public static string? LoadedFrom { get { lock (Gate) return _loadedFrom; } }

    /// <summary>
    /// Loads libtorch from <paramref name="directory"/> and checks TorchSharp's glue against it. Call before any other
    /// use of TorchSharp. Idempotent for the same folder; a different folder, or a libtorch already loaded from
    /// elsewhere, is refused with a <see cref="DeviceException"/>.
    /// </summary>
    public static NativeLibTorchReport Load(string directory)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(directory);
        if (!OperatingSystem.IsLinux())
            throw new DeviceException("Loading libtorch from a folder is implemented for Linux only (LibTorchDirectory)");
        var dir = Path.GetFullPath(directory).TrimEnd('/');
        lock (Gate)
        {
            if (_loadedFrom is not null)
            {
                if (_loadedFrom == dir) return NativeLibTorchReport.Current();
                throw new DeviceException($"libtorch was already loaded from '{_loadedFrom}'; it cannot be replaced by '{dir}' in the same process");
            }
            if (!Directory.Exists(dir))
                throw new DeviceException($"LibTorchDirectory '{dir}' does not exist");
            var required = new[] { "libc10.so", "libtorch_cpu.so" };
            var missing = required.Where(f => !File.Exists(Path.Combine(dir, f))).ToList();
            if (missing.Count > 0)
                throw new DeviceException($"LibTorchDirectory '{dir}' has no {string.Join(" or ", missing)}: point it at the lib folder of a "
                                          + "libtorch or PyTorch installation (for PyTorch: the torch/lib folder inside site-packages)");

            var before = NativeLibTorchReport.Current();
            // The memory map shows resolved paths; the folder may have been named through a link.
            if (before.LibTorchCpu is { } loaded && Path.GetDirectoryName(loaded) != Dl.RealPath(dir))
                throw new DeviceException($"libtorch was already loaded from '{Path.GetDirectoryName(loaded)}' before LibTorchDirectory '{dir}' "
                                          + "could be: configure it before any other use of TorchSharp, and do not ship a libtorch runtime package with the app");

            // TorchSharp loads a libtorch it finds next to the app by its full path, which maps a second copy beside this
            // one; the two then register the same operators and libtorch aborts the process.
            var own = GlueSearchDirectories().FirstOrDefault(d => File.Exists(Path.Combine(d, "libtorch_cpu.so")) && Dl.RealPath(d) != Dl.RealPath(dir));
            if (own is not null)
                throw new DeviceException($"LibTorchDirectory '{dir}' cannot be used: the app carries its own libtorch in '{own}', which TorchSharp "
                                          + "would load as well (two copies of libtorch abort the process). Build the app without a libtorch runtime "
                                          + "package (this repository's samples: -p:ShareGPT4VExternalLibTorch=true), or leave LibTorchDirectory unset");

            foreach (var name in new[] { "libc10.so", "libtorch_cpu.so", "libc10_cuda.so", "libtorch_cuda.so", "libtorch.so" })
            {
                var path = Path.Combine(dir, name);
                if (!File.Exists(path)) continue;
                // Lazy binding as PyTorch itself loads them; global so later libraries resolve against this copy.
                if (Dl.Open(path, RtldLazy | RtldGlobal, out var error) == IntPtr.Zero)
                    throw new DeviceException($"Could not load {path}: {error}");
            }

            var glue = FindGlue();
            if (glue is null)
                throw new DeviceException("TorchSharp's native glue libLibTorchSharp.so was not found next to the app "
                                          + $"(searched {string.Join(", ", GlueSearchDirectories())}): publish the app with the TorchSharp package");
            if (Dl.Open(glue, RtldNow | RtldGlobal, out var glueError) == IntPtr.Zero)
                throw new DeviceException($"TorchSharp's native glue '{glue}' does not fit the libtorch in '{dir}' "
                                          + $"({NativeLibTorchReport.VersionOfLibraryFolder(dir) ?? "version unknown"}): {glueError}. "
                                          + $"TorchSharp {TorchSharpInfo.Version} was built for libtorch "
                                          + $"{TorchSharpInfo.BuiltForLibTorch}: use that libtorch version, or build libLibTorchSharp.so from "
                                          + "TorchSharp's source against this libtorch and put it in place of the app's copy (see docs/cuda.md)");
            _loadedFrom = dir;
        }
        return NativeLibTorchReport.Current();
    }

    /// <summary>
    /// Whether a CPU run can start: a libtorch is loaded already, or libtorch_cpu.so is next to the app or on
    /// LD_LIBRARY_PATH (where TorchSharp's own probing finds it).
    /// </summary>
    public static bool CpuLibTorchAvailable() =>
        NativeLibTorchReport.Current().LibTorchCpu is not null
        || GlueSearchDirectories().Concat((Environment.GetEnvironmentVariable("LD_LIBRARY_PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries))
            .Any(d => File.Exists(Path.Combine(d, "libtorch_cpu.so")));

    /// <summary>The libLibTorchSharp.so that TorchSharp's own probing would load first, or null.</summary>
    public static string? FindGlue() =>
        GlueSearchDirectories().Select(d => Path.Combine(d, "libLibTorchSharp.so")).FirstOrDefault(File.Exists);

    /// <summary>The app's native search folders in probing order: the host's list, then the app folder.</summary>
    public static IReadOnlyList<string> GlueSearchDirectories()
    {
        var dirs = new List<string>();
        if (AppContext.GetData("NATIVE_DLL_SEARCH_DIRECTORIES") is string list)
            dirs.AddRange(list.Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries));
        dirs.Add(AppContext.BaseDirectory);
        return dirs.Select(d => Path.GetFullPath(d).TrimEnd('/')).Distinct().ToList();
    }

    /// <summary>dlopen/dlerror, from libc (glibc 2.34 and later) or libdl (older glibc).</summary>
    internal static unsafe class Dl
    {
        private static readonly delegate* unmanaged<byte*, int, IntPtr> DlOpen;
        private static readonly delegate* unmanaged<byte*> DlError;
        private static readonly delegate* unmanaged<byte*, byte*, byte*> RealPathFn;

        static Dl()
        {
            foreach (var lib in new[] { "libc.so.6", "libdl.so.2" })
            {
                if (!NativeLibrary.TryLoad(lib, out var h)) continue;
                if (RealPathFn == null && NativeLibrary.TryGetExport(h, "realpath", out var rp)) RealPathFn = (delegate* unmanaged<byte*, byte*, byte*>)rp;
                if (NativeLibrary.TryGetExport(h, "dlopen", out var open) && NativeLibrary.TryGetExport(h, "dlerror", out var err))
                {
                    DlOpen = (delegate* unmanaged<byte*, int, IntPtr>)open;
                    DlError = (delegate* unmanaged<byte*>)err;
                    return;
                }
            }
        }

        /// <summary>The path with every link resolved (the path itself when that fails).</summary>
        public static string RealPath(string path)
        {
            if (RealPathFn == null) return path;
            var bytes = System.Text.Encoding.UTF8.GetBytes(path + "\0");
            var buffer = new byte[4096]; // PATH_MAX
            fixed (byte* p = bytes)
            fixed (byte* b = buffer)
            {
                if (RealPathFn(p, b) == null) return path;
                return Marshal.PtrToStringUTF8((IntPtr)b) ?? path;
            }
        }

        public static IntPtr Open(string path, int mode, out string? error)
        {
            error = null;
            if (DlOpen == null) { error = "dlopen is not available on this system"; return IntPtr.Zero; }
            var bytes = System.Text.Encoding.UTF8.GetBytes(path + "\0");
            IntPtr handle;
            fixed (byte* p = bytes) handle = DlOpen(p, mode);
            if (handle == IntPtr.Zero)
            {
                var e = DlError();
                error = e == null ? "unknown dlopen error" : Marshal.PtrToStringUTF8((IntPtr)e);
            }
            return handle;
        }
    }
}
