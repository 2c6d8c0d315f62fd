using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace ShareGPT4V.Devices;

/// <summary>
/// Shortens how long libtorch's OpenMP workers spin after a parallel region (<c>GOMP_SPINCOUNT=20000</c>, about
/// 0.1 ms, instead of libgomp's 300 000), unless the environment already set <c>GOMP_SPINCOUNT</c> or
/// <c>OMP_WAIT_POLICY</c>. A decode step runs our own kernel threads (Modeling/KernelThreads) between small libtorch
/// operations; once a batch of rows makes one of those big enough for OpenMP (silu of 8 × 5632 values), the workers it
/// woke kept spinning on the cores our kernel needed: 8 concurrent requests took 359 ms per step on the benchmark
/// model, 225–310 ms with the workers sleeping at once, 260 ms with this spin count, which keeps back-to-back
/// regions (training) as fast as before (docs/benchmarks.md). libgomp reads the variable once, when libtorch loads,
/// so it is set as this assembly is first used, before any TorchSharp call of ours; Linux only (libtorch's builds
/// for other systems use other OpenMP runtimes).
/// </summary>
internal static class OpenMPSpin
{
    public const string Variable = "GOMP_SPINCOUNT";
    public const string Value = "20000";

    /// <summary>What this process runs with: the user's setting, ours, or null for libgomp's defaults.</summary>
    public static string? Applied { get; private set; }

#pragma warning disable CA2255 // a library module initializer: the variable must be in place before TorchSharp loads libtorch
    [ModuleInitializer]
#pragma warning restore CA2255
    internal static void Initialize()
    {
        try
        {
            if (!OperatingSystem.IsLinux()) return;
            var (set, applied) = Decide(Environment.GetEnvironmentVariable, () => File.ReadAllText("/proc/self/maps"));
            // .NET keeps its own copy of the environment on Unix; libgomp reads the C library's.
            Applied = set && setenv(Variable, Value, 1) != 0 ? null : applied;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException or IOException or UnauthorizedAccessException)
        {
            // No C library to call or no /proc: libtorch runs with libgomp's defaults.
        }
    }

    /// <summary>Whether to set <see cref="Variable"/>, and what the process then runs with: a setting the user made
    /// wins; a libgomp already mapped (the host loaded libtorch first) has read its settings, so nothing changes.</summary>
    internal static (bool Set, string? Applied) Decide(Func<string, string?> environment, Func<string> memoryMaps)
    {
        foreach (var name in new[] { Variable, "OMP_WAIT_POLICY" })
            if (environment(name) is { Length: > 0 } value) return (false, $"{name}={value} (environment)");
        if (memoryMaps().Contains("libgomp", StringComparison.Ordinal)) return (false, null);
        return (true, $"{Variable}={Value}");
    }

    [DllImport("libc", EntryPoint = "setenv", CharSet = CharSet.Ansi)]
    private static extern int setenv(string name, string value, int overwrite);
}
