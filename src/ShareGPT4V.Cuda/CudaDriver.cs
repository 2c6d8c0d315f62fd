using System.Runtime.InteropServices;
using System.Text;

namespace ShareGPT4V.Cuda;

/// <summary>
/// Device discovery through the CUDA driver API (<c>libcuda.so.1</c>, installed with the NVIDIA driver): count,
/// names, compute capability, total memory and PCI bus ids, in CUDA ordinal order (the order libtorch uses, including
/// <c>CUDA_VISIBLE_DEVICES</c>). Free memory comes from NVML (<c>libnvidia-ml.so.1</c>), which needs no CUDA context;
/// without NVML it is read through the device's primary context. Libraries are looked up at run time, so a machine
/// without a driver gets a clear answer instead of a load failure.
/// </summary>
internal static unsafe class CudaDriver
{
    private const int AttrComputeCapabilityMajor = 75, AttrComputeCapabilityMinor = 76;

    private static readonly object Gate = new();
    private static bool _initialised;
    private static string? _error;
    private static delegate* unmanaged<uint, int> _cuInit;
    private static delegate* unmanaged<int*, int> _cuDriverGetVersion;
    private static delegate* unmanaged<int*, int> _cuDeviceGetCount;
    private static delegate* unmanaged<int*, int, int> _cuDeviceGet;
    private static delegate* unmanaged<byte*, int, int, int> _cuDeviceGetName;
    private static delegate* unmanaged<int*, int, int, int> _cuDeviceGetAttribute;
    private static delegate* unmanaged<nuint*, int, int> _cuDeviceTotalMem;
    private static delegate* unmanaged<byte*, int, int, int> _cuDeviceGetPCIBusId;
    private static delegate* unmanaged<IntPtr*, int, int> _cuDevicePrimaryCtxRetain;
    private static delegate* unmanaged<int, int> _cuDevicePrimaryCtxRelease;
    private static delegate* unmanaged<IntPtr, int> _cuCtxPushCurrent;
    private static delegate* unmanaged<IntPtr*, int> _cuCtxPopCurrent;
    private static delegate* unmanaged<nuint*, nuint*, int> _cuMemGetInfo;
    private static delegate* unmanaged<int> _nvmlInit;
    private static delegate* unmanaged<byte*, IntPtr*, int> _nvmlDeviceGetHandleByPciBusId;
    private static delegate* unmanaged<IntPtr, ulong*, int> _nvmlDeviceGetMemoryInfo; // fills { total, free, used }

    /// <summary>Loads and initialises the driver once; returns null when usable, else why not.</summary>
    public static string? Initialise()
    {
        lock (Gate)
        {
            if (_initialised) return _error;
            _initialised = true;
            _error = Load();
            return _error;
        }
    }

    private static string? Load()
    {
        if (!OperatingSystem.IsLinux()) return "CUDA device discovery is implemented for Linux only";
        if (!NativeLibrary.TryLoad("libcuda.so.1", out var cuda))
            return "the NVIDIA driver's libcuda.so.1 could not be loaded: this machine has no NVIDIA driver, or it is not on the library path";
        IntPtr F(string name) => NativeLibrary.TryGetExport(cuda, name, out var p) ? p : IntPtr.Zero;
        _cuInit = (delegate* unmanaged<uint, int>)F("cuInit");
        _cuDriverGetVersion = (delegate* unmanaged<int*, int>)F("cuDriverGetVersion");
        _cuDeviceGetCount = (delegate* unmanaged<int*, int>)F("cuDeviceGetCount");
        _cuDeviceGet = (delegate* unmanaged<int*, int, int>)F("cuDeviceGet");
        _cuDeviceGetName = (delegate* unmanaged<byte*, int, int, int>)F("cuDeviceGetName");
        _cuDeviceGetAttribute = (delegate* unmanaged<int*, int, int, int>)F("cuDeviceGetAttribute");
        _cuDeviceTotalMem = (delegate* unmanaged<nuint*, int, int>)F("cuDeviceTotalMem_v2");
        _cuDeviceGetPCIBusId = (delegate* unmanaged<byte*, int, int, int>)F("cuDeviceGetPCIBusId");
        _cuDevicePrimaryCtxRetain = (delegate* unmanaged<IntPtr*, int, int>)F("cuDevicePrimaryCtxRetain");
        _cuDevicePrimaryCtxRelease = (delegate* unmanaged<int, int>)F("cuDevicePrimaryCtxRelease_v2");
        _cuCtxPushCurrent = (delegate* unmanaged<IntPtr, int>)F("cuCtxPushCurrent_v2");
        _cuCtxPopCurrent = (delegate* unmanaged<IntPtr*, int>)F("cuCtxPopCurrent_v2");
        _cuMemGetInfo = (delegate* unmanaged<nuint*, nuint*, int>)F("cuMemGetInfo_v2");
        if (_cuInit == null || _cuDeviceGetCount == null || _cuDeviceGet == null || _cuDeviceGetName == null
            || _cuDeviceGetAttribute == null || _cuDeviceTotalMem == null)
            return "libcuda.so.1 lacks the driver API functions this library uses (driver too old?)";
        int rc = _cuInit(0);
        if (rc != 0) return $"cuInit failed with CUDA error {rc}{(rc == 100 ? " (no CUDA-capable device)" : "")}";

        if (NativeLibrary.TryLoad("libnvidia-ml.so.1", out var nvml)
            && NativeLibrary.TryGetExport(nvml, "nvmlInit_v2", out var init)
            && NativeLibrary.TryGetExport(nvml, "nvmlDeviceGetHandleByPciBusId_v2", out var byBus)
            && NativeLibrary.TryGetExport(nvml, "nvmlDeviceGetMemoryInfo", out var mem))
        {
            var nvmlInit = (delegate* unmanaged<int>)init;
            if (nvmlInit() == 0)
            {
                _nvmlInit = nvmlInit;
                _nvmlDeviceGetHandleByPciBusId = (delegate* unmanaged<byte*, IntPtr*, int>)byBus;
                _nvmlDeviceGetMemoryInfo = (delegate* unmanaged<IntPtr, ulong*, int>)mem;
            }
        }
        return null;
    }

    /// <summary>The driver's CUDA version as an integer (13000 = 13.0), or null.</summary>
    public static int? DriverVersion()
    {
        if (Initialise() is not null || _cuDriverGetVersion == null) return null;
        int v;
        return _cuDriverGetVersion(&v) == 0 ? v : null;
    }

    /// <summary>Every visible device; throws <see cref="DeviceException"/> when there is no usable driver.</summary>
    public static IReadOnlyList<CudaDeviceInfo> ListDevices()
    {
        if (Initialise() is { } error) throw new DeviceException(error);
        int count;
        Check(_cuDeviceGetCount(&count), "cuDeviceGetCount");
        var list = new List<CudaDeviceInfo>(count);
        for (int i = 0; i < count; i++)
        {
            int dev;
            Check(_cuDeviceGet(&dev, i), "cuDeviceGet");
            var name = new byte[256];
            fixed (byte* p = name) Check(_cuDeviceGetName(p, name.Length, dev), "cuDeviceGetName");
            int major, minor;
            Check(_cuDeviceGetAttribute(&major, AttrComputeCapabilityMajor, dev), "cuDeviceGetAttribute");
            Check(_cuDeviceGetAttribute(&minor, AttrComputeCapabilityMinor, dev), "cuDeviceGetAttribute");
            nuint total;
            Check(_cuDeviceTotalMem(&total, dev), "cuDeviceTotalMem");
            string? bus = null;
            if (_cuDeviceGetPCIBusId != null)
            {
                var b = new byte[64];
                fixed (byte* p = b) if (_cuDeviceGetPCIBusId(p, b.Length, dev) == 0) bus = CString(b);
            }
            var (free, _) = MemoryInfo(dev, bus) ?? ((long)total, (long)total);
            list.Add(new CudaDeviceInfo
            {
                Index = i, Name = CString(name), ComputeCapabilityMajor = major, ComputeCapabilityMinor = minor,
                TotalBytes = (long)total, FreeBytes = free, PciBusId = bus,
            });
        }
        return list;
    }

    /// <summary>Free and total bytes of device <paramref name="index"/> now (whole device, all processes).</summary>
    public static (long Free, long Total) GetMemoryInfo(int index)
    {
        if (Initialise() is { } error) throw new DeviceException(error);
        int dev;
        Check(_cuDeviceGet(&dev, index), "cuDeviceGet");
        string? bus = null;
        if (_cuDeviceGetPCIBusId != null)
        {
            var b = new byte[64];
            fixed (byte* p = b) if (_cuDeviceGetPCIBusId(p, b.Length, dev) == 0) bus = CString(b);
        }
        return MemoryInfo(dev, bus) ?? throw new DeviceException($"The free memory of cuda:{index} could not be read (no NVML and no context)");
    }

    private static (long Free, long Total)? MemoryInfo(int dev, string? bus)
    {
        if (_nvmlInit != null && bus is not null)
        {
            var busBytes = Encoding.ASCII.GetBytes(bus + "\0");
            IntPtr handle;
            int rc;
            fixed (byte* p = busBytes) rc = _nvmlDeviceGetHandleByPciBusId(p, &handle);
            var m = stackalloc ulong[3];
            if (rc == 0 && _nvmlDeviceGetMemoryInfo(handle, m) == 0) return ((long)m[1], (long)m[0]);
        }
        // Without NVML: the primary context is the one libtorch uses too, so retaining it costs nothing extra later.
        if (_cuDevicePrimaryCtxRetain == null || _cuCtxPushCurrent == null || _cuMemGetInfo == null || _cuCtxPopCurrent == null) return null;
        IntPtr ctx;
        if (_cuDevicePrimaryCtxRetain(&ctx, dev) != 0) return null;
        try
        {
            if (_cuCtxPushCurrent(ctx) != 0) return null;
            nuint free, total;
            int rc = _cuMemGetInfo(&free, &total);
            IntPtr popped;
            _cuCtxPopCurrent(&popped);
            return rc == 0 ? ((long)free, (long)total) : null;
        }
        finally
        {
            if (_cuDevicePrimaryCtxRelease != null) _cuDevicePrimaryCtxRelease(dev);
        }
    }

    private static void Check(int rc, string call)
    {
        if (rc != 0) throw new DeviceException($"CUDA driver call {call} failed with error {rc}");
    }

    private static string CString(byte[] b)
    {
        int n = Array.IndexOf(b, (byte)0);
        return Encoding.ASCII.GetString(b, 0, n < 0 ? b.Length : n);
    }
}
