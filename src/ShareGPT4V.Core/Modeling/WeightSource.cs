using TorchSharp;
using static TorchSharp.torch;
using TorchSharp.Modules;
using TorchSharp.Utils;

namespace ShareGPT4V.Modeling;

/// <summary>
/// Supplies each parameter, by its full checkpoint-style name, while a model is constructed. Models are built once
/// from a <see cref="MetaWeightSource"/> (no memory: names and shapes only) to check a checkpoint, then from the
/// checkpoint itself, so parameters are never allocated twice or initialised randomly.
/// </summary>
internal abstract class WeightSource
{
    /// <summary>
    /// The dtype activations are computed in. Large matrices (linear weights, embedding tables) may be stored in
    /// another dtype (see <see cref="Take"/>); every other parameter is supplied in this one.
    /// </summary>
    public ScalarType ComputeType { get; protected init; } = ScalarType.Float32;

    /// <summary>
    /// The parameter named <paramref name="name"/>, which must have <paramref name="shape"/>. The result is owned by
    /// the model. <paramref name="largeMatrix"/> marks a linear weight or embedding table, which may keep a storage
    /// dtype other than <see cref="ComputeType"/> (the layers that use them widen as they go).
    /// </summary>
    public abstract Tensor Take(string name, long[] shape, bool largeMatrix);

    /// <summary>The names requested so far, in order, with their shapes.</summary>
    public List<(string Name, long[] Shape)> Requested { get; } = new();

    /// <summary>A parameter in <see cref="ComputeType"/> (norms, biases, convolution and position embeddings).</summary>
    internal Parameter Param(string name, params long[] shape) => Make(name, shape, largeMatrix: false);

    /// <summary>A linear weight or embedding table, kept in the storage dtype.</summary>
    internal Parameter MatrixParam(string name, long rows, long columns) => Make(name, new[] { rows, columns }, largeMatrix: true);

    private Parameter Make(string name, long[] shape, bool largeMatrix)
    {
        Requested.Add((name, shape));
        var t = Take(name, shape, largeMatrix);
        if (t is QuantizedWeight q) return q; // already a parameter; its type tells the layers which kernel reads it
        return new Parameter(t, requires_grad: false);
    }
}

/// <summary>Parameters on the <c>meta</c> device: the model's structure without any memory.</summary>
internal sealed class MetaWeightSource : WeightSource
{
    private readonly ScalarType _dtype;

    public MetaWeightSource(ScalarType dtype = ScalarType.Float32)
    {
        _dtype = dtype;
        ComputeType = dtype;
    }

    public override Tensor Take(string name, long[] shape, bool largeMatrix) => torch.empty(shape, _dtype, device: torch.META);
}

/// <summary>Hands out tensors the caller already has, by name (shapes are checked).</summary>
internal sealed class GivenWeights : WeightSource
{
    private readonly Dictionary<string, Tensor> _tensors = new(StringComparer.Ordinal);

    public GivenWeights(ScalarType computeType) => ComputeType = computeType;

    public Tensor this[string name] { set => _tensors[name] = value; }

    public override Tensor Take(string name, long[] shape, bool largeMatrix)
    {
        var t = _tensors[name];
        var actual = t is QuantizedWeight q ? new[] { q.Rows, q.Columns } : t.shape;
        if (!actual.SequenceEqual(shape))
            throw new ArgumentException($"Tensor '{name}' has shape [{string.Join(", ", t.shape)}], expected [{string.Join(", ", shape)}]");
        return t;
    }
}
