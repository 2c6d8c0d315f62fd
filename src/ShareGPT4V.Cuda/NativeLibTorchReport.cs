using System.Text.RegularExpressions;

namespace ShareGPT4V.Cuda;

/// <summary>
/// Which native libtorch the process has loaded, read from the process's memory map (<c>/proc/self/maps</c>): the
/// paths of libtorch_cpu, libtorch_cuda, TorchSharp's glue library and the CUDA runtime, and libtorch's version where
/// its folder says it (a PyTorch install's <c>version.py</c>, a libtorch archive's <c>build-version</c>, or a NuGet
/// package folder).
/// </summary>
public sealed record NativeLibTorchReport
{
    /// <summary>Path of the loaded libtorch_cpu, or null when none is loaded.</summary>
    public string? LibTorchCpu { get; init; }
    /// <summary>Path of the loaded libtorch_cuda, or null for a CPU-only libtorch.</summary>
    public string? LibTorchCuda { get; init; }
    /// <summary>Path of TorchSharp's native glue library (libLibTorchSharp).</summary>
    public string? LibTorchSharp { get; init; }
    /// <summary>Path of the loaded CUDA runtime (libcudart), when one is loaded.</summary>
    public string? CudaRuntime { get; init; }
    /// <summary>Path of the loaded CUDA driver library (libcuda), when one is loaded.</summary>
    public string? CudaDriver { get; init; }
    /// <summary>libtorch's version as its folder states it, or null when the folder does not say.</summary>
    public string? LibTorchVersion { get; init; }
    /// <summary>Every mapped library whose name marks it as libtorch's, TorchSharp's or CUDA's.</summary>
    public IReadOnlyList<string> Libraries { get; init; } = Array.Empty<string>();

    /// <summary>Whether the loaded libtorch is a CUDA build.</summary>
    public bool CudaBuildLoaded => LibTorchCuda is not null;

    /// <summary>One line for logs.</summary>
    public string Summary =>
        LibTorchCpu is null ? "libtorch not loaded yet"
        : $"{(CudaBuildLoaded ? "CUDA" : "CPU-only")} libtorch {LibTorchVersion ?? "(version unknown)"} from {Path.GetDirectoryName(LibTorchCpu)}"
          + (LibTorchSharp is null ? "" : $", glue {LibTorchSharp}");

    private static readonly string[] Interesting =
    {
        "libtorch", "libc10", "libLibTorchSharp", "libcudart", "libcuda.so", "libcublas", "libcudnn", "libnvidia-ml", "libgomp",
    };

    /// <summary>The report for this process (empty on systems without <c>/proc</c>).</summary>
    public static NativeLibTorchReport Current()
    {
        const string maps = "/proc/self/maps";
        return File.Exists(maps) ? Parse(File.ReadAllText(maps)) : new NativeLibTorchReport();
    }

    /// <summary>Builds a report from the text of a <c>/proc/PID/maps</c> file.</summary>
    public static NativeLibTorchReport Parse(string maps, Func<string, string?>? versionOf = null)
    {
        versionOf ??= VersionOfLibraryFolder;
        var libs = new List<string>();
        foreach (var line in maps.Split('\n'))
        {
            // address perms offset dev inode path: the path is the sixth field and may contain spaces.
            var fields = line.Split(' ', 6, StringSplitOptions.RemoveEmptyEntries);
            if (fields.Length < 6) continue;
            var path = fields[5].Trim();
            if (!path.StartsWith('/') || path.EndsWith(" (deleted)", StringComparison.Ordinal)) continue;
            var name = Path.GetFileName(path);
            if (Interesting.Any(p => name.StartsWith(p, StringComparison.Ordinal)) && !libs.Contains(path)) libs.Add(path);
        }
        string? Find(Func<string, bool> match) => libs.FirstOrDefault(p => match(Path.GetFileName(p)));
        var cpu = Find(n => n == "libtorch_cpu.so");
        return new NativeLibTorchReport
        {
            LibTorchCpu = cpu,
            LibTorchCuda = Find(n => n == "libtorch_cuda.so"),
            LibTorchSharp = Find(n => n == "libLibTorchSharp.so"),
            CudaRuntime = Find(n => n.StartsWith("libcudart", StringComparison.Ordinal)),
            CudaDriver = Find(n => n.StartsWith("libcuda.so", StringComparison.Ordinal)),
            LibTorchVersion = cpu is null ? null : versionOf(Path.GetDirectoryName(cpu)!),
            Libraries = libs,
        };
    }

    private static readonly Regex PyVersion = new(@"__version__\s*=\s*['""]([^'""]+)['""]", RegexOptions.CultureInvariant);
    private static readonly Regex NuGetFolder = new(@"/(libtorch-[a-z0-9.\-]+)/(\d+\.\d+\.\d+[^/]*)/runtimes/", RegexOptions.CultureInvariant | RegexOptions.IgnoreCase);

    /// <summary>libtorch's version as its library folder records it, or null.</summary>
    public static string? VersionOfLibraryFolder(string libDir)
    {
        var parent = Path.GetDirectoryName(libDir.TrimEnd('/'));
        if (parent is not null)
        {
            var py = Path.Combine(parent, "version.py"); // PyTorch wheel: site-packages/torch/{lib, version.py}
            if (File.Exists(py) && PyVersion.Match(File.ReadAllText(py)) is { Success: true } m) return m.Groups[1].Value;
            var bv = Path.Combine(parent, "build-version"); // libtorch archive: libtorch/{lib, build-version}
            if (File.Exists(bv)) return File.ReadAllText(bv).Trim();
        }
        var n = NuGetFolder.Match(libDir.Replace('\\', '/') + "/");
        return n.Success ? $"{n.Groups[2].Value} ({n.Groups[1].Value} package)" : null;
    }

    /// <summary>The summary line, then one line per library.</summary>
    public override string ToString()
    {
        var lines = new List<string> { Summary };
        lines.AddRange(Libraries.Select(l => "  " + l));
        return string.Join(Environment.NewLine, lines);
    }
}
