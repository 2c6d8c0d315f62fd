using TorchSharp;

namespace ShareGPT4V.Devices;

/// <summary>The element-type option: <c>auto</c> (the device's policy) or an explicit float type.</summary>
internal static class DTypeChoice
{
    /// <summary>The names accepted by the <c>DType</c> options.</summary>
    public const string Accepted = "auto, float32 (fp32), float16 (fp16), bfloat16 (bf16)";

    /// <summary>Null for <c>auto</c>, else the float type named. Unknown names fail with the option named.</summary>
    public static torch.ScalarType? Parse(string? text, string option = "DType") => (text ?? "").Trim().ToLowerInvariant() switch
    {
        "auto" or "" => null,
        "float32" or "fp32" => torch.ScalarType.Float32,
        "float16" or "fp16" or "half" => torch.ScalarType.Float16,
        "bfloat16" or "bf16" => torch.ScalarType.BFloat16,
        _ => throw new ModelConfigurationException($"{option} '{text}' is not supported ({Accepted})", null, option),
    };

    /// <summary>The lower-case name used in messages and logs.</summary>
    public static string Name(torch.ScalarType t) => t switch
    {
        torch.ScalarType.Float32 => "float32",
        torch.ScalarType.Float16 => "float16",
        torch.ScalarType.BFloat16 => "bfloat16",
        _ => t.ToString().ToLowerInvariant(),
    };
}
