using System.Reflection;

namespace ShareGPT4V.Cuda;

/// <summary>
/// Facts about the TorchSharp assembly read without starting it: any use of the <c>torch</c> class runs its static
/// constructor, which loads libtorch (and, when none can be found, fails in ways that end the process in a
/// single-file app).
/// </summary>
internal static class TorchSharpInfo
{
    /// <summary>TorchSharp's assembly version.</summary>
    public static string Version => typeof(TorchSharp.torch).Assembly.GetName().Version?.ToString() ?? "unknown";

    /// <summary>The libtorch version TorchSharp's native glue was built against (e.g. 2.10.0.0).</summary>
    public static string BuiltForLibTorch { get; } = ReadBuiltFor();

    private static string ReadBuiltFor()
    {
        // A const's value sits in the metadata: reading it does not run the class's static constructor.
        var field = typeof(TorchSharp.torch).GetField("libtorchPackageVersion", BindingFlags.NonPublic | BindingFlags.Static);
        return field?.IsLiteral == true && field.GetRawConstantValue() is string v ? v : "unknown";
    }
}
