using System.Runtime.InteropServices;
using TorchSharp;

namespace ShareGPT4V.Devices;

/// <summary>
/// Turns "libtorch is missing" into a <see cref="LibTorchNotFoundException"/> that names the runtime package for this
/// platform. TorchSharp itself only fails deep inside its first native call (often as a TypeInitializationException),
/// because the library depends on TorchSharp alone and each app chooses its libtorch package.
/// </summary>
internal static class LibTorchRuntime
{
    /// <summary>libtorch version that TorchSharp 0.107 binds to; its runtime packages carry this version.</summary>
    public const string Version = "2.10.0";

    private static volatile bool _loaded;

    /// <summary>The CPU runtime package for this process's platform, or null where none is published.</summary>
    public static string? CpuPackageForThisPlatform() => (OperatingSystem.IsLinux(), OperatingSystem.IsWindows(), OperatingSystem.IsMacOS(), RuntimeInformation.ProcessArchitecture) switch
    {
        (true, _, _, Architecture.X64) => "libtorch-cpu-linux-x64",
        (_, true, _, Architecture.X64) => "libtorch-cpu-win-x64",
        (_, true, _, Architecture.Arm64) => "libtorch-cpu-win-arm64",
        (_, _, true, Architecture.Arm64) => "libtorch-cpu-osx-arm64",
        _ => null,
    };

    /// <summary>Loads TorchSharp's native backend for <paramref name="device"/>, or throws naming the package to add.</summary>
    public static void EnsureLoaded(DeviceType device = DeviceType.CPU)
    {
        if (_loaded && device == DeviceType.CPU) return;
        try
        {
            torch.InitializeDeviceType(device);
            if (device == DeviceType.CPU) _loaded = true;
        }
        catch (Exception e) when (e is TypeInitializationException or NotSupportedException or DllNotFoundException
                                      or EntryPointNotFoundException or BadImageFormatException)
        {
            throw Missing(e);
        }
    }

    internal static LibTorchNotFoundException Missing(Exception inner)
    {
        var package = CpuPackageForThisPlatform();
        var rid = RuntimeInformation.RuntimeIdentifier;
        var what = package is null
            ? $"no libtorch CPU runtime package is published for this platform ({rid}); load a libtorch from a folder with ShareGPT4V.Cuda's NativeLibTorch.Load"
            : $"add the libtorch runtime package for this platform ({rid}) to the app: dotnet add package {package} --version {Version}";
        return new LibTorchNotFoundException(
            $"The native libtorch runtime could not be loaded: {what}. (TorchSharp said: {FirstLine(Innermost(inner).Message)})", package, inner);
    }

    private static string FirstLine(string s) => s.Split('\n', 2)[0].Trim();

    private static Exception Innermost(Exception e)
    {
        while (e.InnerException is not null) e = e.InnerException;
        return e;
    }
}
