using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.Modeling;

/// <summary>The dtype activations are computed in: for now the weights' own.</summary>
public static class ComputePrecision
{
    /// <param name="weights">The dtype the weights are kept in; null when each keeps its checkpoint dtype.</param>
    /// <param name="device">Where the model runs.</param>
    public static ScalarType For(ScalarType? weights, Device? device) => weights ?? ScalarType.Float32;
}
