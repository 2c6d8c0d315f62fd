using TorchSharp;

namespace ShareGPT4V.Cuda;

/// <summary>
/// The real probe: makes sure the CUDA build of libtorch is loaded (from <see cref="CudaOptions.LibTorchDirectory"/>,
/// <c>SHAREGPT4V_LIBTORCH_DIR</c>, the app's runtime packages or <c>LD_LIBRARY_PATH</c>, in that order), asks
/// libtorch whether CUDA works, and lists the devices through the driver. Every problem found goes into
/// <see cref="CudaProbeResult.Problem"/> with what to do about it.
/// </summary>
internal sealed class TorchSharpCudaProbe : ICudaProbe
{
    private readonly string? _libTorchDirectory;

    public TorchSharpCudaProbe(string? libTorchDirectory = null)
    {
        _libTorchDirectory = string.IsNullOrWhiteSpace(libTorchDirectory)
            ? Environment.GetEnvironmentVariable(CudaOptions.LibTorchDirectoryVariable) is { Length: > 0 } env ? env : null
            : libTorchDirectory;
    }

    public CudaProbeResult Probe()
    {
        var problems = new List<string>();
        var libtorch = EnsureCudaLibTorch();
        if (libtorch is not null) problems.Add(libtorch);

        IReadOnlyList<CudaDeviceInfo> devices = Array.Empty<CudaDeviceInfo>();
        int? driverVersion = null;
        if (CudaDriver.Initialise() is { } driverProblem) problems.Add(driverProblem);
        else
        {
            driverVersion = CudaDriver.DriverVersion();
            devices = CudaDriver.ListDevices();
            if (devices.Count == 0)
                problems.Add("the NVIDIA driver lists no CUDA device" + (Environment.GetEnvironmentVariable("CUDA_VISIBLE_DEVICES") is { } v ? $" (CUDA_VISIBLE_DEVICES='{v}')" : ""));
        }

        if (problems.Count == 0)
        {
            // Only now touch TorchSharp's CUDA side: the CUDA libtorch is loaded, so this cannot pick another one.
            bool available;
            int count;
            try { available = torch.cuda.is_available(); count = available ? torch.cuda.device_count() : 0; }
            catch (Exception e) when (e is NotSupportedException or DllNotFoundException or EntryPointNotFoundException or InvalidOperationException or TypeInitializationException)
            {
                available = false;
                count = 0;
                problems.Add($"TorchSharp could not start its CUDA backend: {FirstLine(e)}");
            }
            if (problems.Count == 0 && !available)
                problems.Add($"libtorch reports CUDA unavailable although the driver (CUDA {Version(driverVersion)}) lists {devices.Count} device(s): "
                             + "the driver may be older than the CUDA version this libtorch was built for");
            else if (available && count < devices.Count)
                devices = devices.Take(count).ToList();
        }

        var native = NativeLibTorchReport.Current();
        return new CudaProbeResult
        {
            Available = problems.Count == 0 && devices.Count > 0,
            Problem = problems.Count == 0 ? null : string.Join("; ", problems) + $". Loaded now: {native.Summary}.",
            Devices = devices,
            DriverVersion = driverVersion,
            Native = native,
        };
    }

    /// <summary>Loads the CUDA libtorch if it is not loaded yet; null on success, else the problem and the remedy.</summary>
    private string? EnsureCudaLibTorch()
    {
        var now = NativeLibTorchReport.Current();
        if (now.CudaBuildLoaded) return null;
        if (_libTorchDirectory is not null)
        {
            try
            {
                var report = NativeLibTorch.Load(_libTorchDirectory);
                return report.CudaBuildLoaded ? null
                    : $"LibTorchDirectory '{_libTorchDirectory}' holds a CPU-only libtorch (no libtorch_cuda.so)";
            }
            catch (DeviceException e) { return e.Message; }
        }
        if (now.LibTorchCpu is not null && NativeLibTorch.LoadedFrom is { } from)
            return $"the libtorch loaded from '{from}' is a CPU-only build (no libtorch_cuda.so there): " + Remedy;
        if (now.LibTorchCpu is { } cpu)
            return $"the CPU-only libtorch from '{Path.GetDirectoryName(cpu)}' is already loaded, so the CUDA build cannot be: " + Remedy;

        // Where TorchSharp would look (the app's runtime packages), then the library path set before the process started.
        var candidates = NativeLibTorch.GlueSearchDirectories()
            .Concat((Environment.GetEnvironmentVariable("LD_LIBRARY_PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries));
        var dir = candidates.FirstOrDefault(d => File.Exists(Path.Combine(d, "libtorch_cuda.so")));
        if (dir is null)
            return "the CUDA build of libtorch (libtorch_cuda.so) was not found next to the app or on LD_LIBRARY_PATH: " + Remedy;
        try
        {
            NativeLibTorch.Load(dir);
            return null;
        }
        catch (DeviceException e) { return e.Message; }
    }

    private const string Remedy =
        "provide it with the TorchSharp CUDA runtime package for your platform, or point CudaOptions.LibTorchDirectory "
        + "(or the SHAREGPT4V_LIBTORCH_DIR variable) at the lib folder of a CUDA libtorch or PyTorch install "
        + "(site-packages/torch/lib) whose version matches the libtorch TorchSharp was built for, and leave the CPU "
        + "libtorch package out of the app (docs/cuda.md)";

    private static string Version(int? v) => v is int x ? $"{x / 1000}.{x % 1000 / 10}" : "unknown";

    private static string FirstLine(Exception e)
    {
        var m = e.Message;
        int nl = m.IndexOf('\n');
        return (nl < 0 ? m : m[..nl]).Trim();
    }
}
