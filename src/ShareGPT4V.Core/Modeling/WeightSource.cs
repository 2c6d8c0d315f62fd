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
public abstract class WeightSource
{
    /// <summary>The parameter named <paramref name="name"/>, which must have <paramref name="shape"/>. The result is owned by the model.</summary>
    public abstract Tensor Take(string name, long[] shape);

    /// <summary>The names requested so far, in order, with their shapes.</summary>
    public List<(string Name, long[] Shape)> Requested { get; } = new();

    internal Parameter Param(string name, params long[] shape)
    {
        Requested.Add((name, shape));
        var t = Take(name, shape);
        var p = new Parameter(t, requires_grad: false);
        return p;
    }
}

/// <summary>Parameters on the <c>meta</c> device: the model's structure without any memory.</summary>
public sealed class MetaWeightSource : WeightSource
{
    private readonly ScalarType _dtype;
    public MetaWeightSource(ScalarType dtype = ScalarType.Float32) => _dtype = dtype;
    public override Tensor Take(string name, long[] shape) => torch.empty(shape, _dtype, device: torch.META);
}

/// <summary>Hands out tensors the caller already has, by name (shapes are checked).</summary>
internal sealed class GivenWeights : WeightSource
{
    private readonly Dictionary<string, Tensor> _tensors = new(StringComparer.Ordinal);
    public Tensor this[string name] { set => _tensors[name] = value; }

    public override Tensor Take(string name, long[] shape)
    {
        var t = _tensors[name];
        if (!t.shape.SequenceEqual(shape))
            throw new ArgumentException($"Tensor '{name}' has shape [{string.Join(", ", t.shape)}], expected [{string.Join(", ", shape)}]");
        return t;
    }
}
