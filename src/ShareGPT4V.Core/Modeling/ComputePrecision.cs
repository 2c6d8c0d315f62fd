using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.Modeling;

/// <summary>
/// The dtype activations are computed in. On CPU that is float32 even for half-precision weights: CPU GEMMs in
/// bfloat16 / float16 are two orders of magnitude slower than in float32, while the decode kernels read half-precision
/// weights directly (half the memory traffic) and GEMMs widen one weight matrix at a time. Other devices compute in
/// the weights' dtype.
/// </summary>
internal static class ComputePrecision
{
    /// <param name="weights">The dtype the large weights are kept in; null when each keeps its checkpoint dtype.</param>
    /// <param name="device">Where the model runs.</param>
    public static ScalarType For(ScalarType? weights, Device? device)
    {
        bool cpu = device is null || device.type == DeviceType.CPU;
        return weights switch
        {
            ScalarType.Float64 => ScalarType.Float64,
            ScalarType.Float16 or ScalarType.BFloat16 when !cpu => weights.Value,
            _ => ScalarType.Float32,
        };
    }
}
