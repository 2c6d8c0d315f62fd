namespace ShareGPT4V.Devices;

/// <summary>Which kind of device a <see cref="DeviceRequest"/> asks for.</summary>
public enum DeviceKind
{
    /// <summary><c>cpu</c>.</summary>
    Cpu,
    /// <summary><c>cuda</c> (the CUDA device with the most free memory) or <c>cuda:N</c>.</summary>
    Cuda,
    /// <summary><c>auto</c>: the best CUDA device when CUDA works, otherwise the CPU (logged).</summary>
    Auto,
}

/// <summary>
/// A parsed device option: <c>cpu</c>, <c>cuda</c>, <c>cuda:N</c> or <c>auto</c> (case-insensitive). Parsing checks
/// only the syntax; whether the device exists is decided by an <see cref="IDeviceProvider"/> when a model loads.
/// </summary>
public readonly record struct DeviceRequest(DeviceKind Kind, int? Index)
{
    /// <summary>The CPU.</summary>
    public static DeviceRequest Cpu => new(DeviceKind.Cpu, null);

    /// <summary>Parses a device string; <paramref name="option"/> names the option in the error message.</summary>
    public static DeviceRequest Parse(string? text, string option = "Device")
    {
        var s = (text ?? "").Trim().ToLowerInvariant();
        if (s is "cpu") return Cpu;
        if (s is "auto") return new DeviceRequest(DeviceKind.Auto, null);
        if (s is "cuda") return new DeviceRequest(DeviceKind.Cuda, null);
        if (s.StartsWith("cuda:", StringComparison.Ordinal))
        {
            var n = s.AsSpan(5);
            // Digits only: int.TryParse alone would accept "+1" or " 1".
            if (n.Length is > 0 and <= 4 && !n.ContainsAnyExceptInRange('0', '9'))
                return new DeviceRequest(DeviceKind.Cuda, int.Parse(n));
        }
        throw new DeviceException($"{option} '{text}' is not a device this library knows (use 'cpu', 'cuda', 'cuda:N' or 'auto')");
    }

    /// <summary>The option text that parses back to this request (<c>cpu</c>, <c>auto</c>, <c>cuda</c>, <c>cuda:N</c>).</summary>
    public override string ToString() => Kind switch
    {
        DeviceKind.Cpu => "cpu",
        DeviceKind.Auto => "auto",
        _ => Index is int i ? $"cuda:{i}" : "cuda",
    };
}
