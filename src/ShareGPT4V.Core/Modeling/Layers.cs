using TorchSharp;
using static TorchSharp.torch;
using TorchSharp.Modules;
using TorchSharp.Utils;

namespace ShareGPT4V.Modeling;

/// <summary>y = x Wᵀ + b, with the weight named <c>{prefix}.weight</c> as in the checkpoints.</summary>
public sealed class Linear : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "weight")] private readonly Parameter _weight;
    [ComponentName(Name = "bias")] private readonly Parameter? _bias;

    public long InFeatures { get; }
    public long OutFeatures { get; }
    public Tensor Weight => _weight;
    public Tensor? Bias => _bias;

    public Linear(string prefix, long inFeatures, long outFeatures, bool hasBias, WeightSource w) : base(nameof(Linear))
    {
        InFeatures = inFeatures;
        OutFeatures = outFeatures;
        _weight = w.Param(prefix + ".weight", outFeatures, inFeatures);
        if (hasBias) _bias = w.Param(prefix + ".bias", outFeatures);
        RegisterComponents();
    }

    /// <summary>A linear layer over existing tensors (the layer takes ownership), e.g. for measurements.</summary>
    public static Linear FromTensors(Tensor weight, Tensor? bias)
    {
        var source = new GivenWeights { ["w.weight"] = weight };
        if (bias is not null) source["w.bias"] = bias;
        return new Linear("w", weight.shape[1], weight.shape[0], bias is not null, source);
    }

    public override Tensor forward(Tensor x) => nn.functional.linear(x, _weight, _bias);
}

/// <summary>LayerNorm over the last dimension with weight and bias.</summary>
public sealed class LayerNorm : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "weight")] private readonly Parameter _weight;
    [ComponentName(Name = "bias")] private readonly Parameter _bias;
    private readonly long[] _shape;
    private readonly double _eps;

    public LayerNorm(string prefix, long dim, double eps, WeightSource w) : base(nameof(LayerNorm))
    {
        _shape = new[] { dim };
        _eps = eps;
        _weight = w.Param(prefix + ".weight", dim);
        _bias = w.Param(prefix + ".bias", dim);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => nn.functional.layer_norm(x, _shape, _weight, _bias, _eps);
}

/// <summary>LLaMA's RMSNorm: normalise in float32, scale by the weight in the input's dtype (as transformers does).</summary>
public sealed class RmsNorm : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "weight")] private readonly Parameter _weight;
    private readonly double _eps;

    public RmsNorm(string prefix, long dim, double eps, WeightSource w) : base(nameof(RmsNorm))
    {
        _eps = eps;
        _weight = w.Param(prefix + ".weight", dim);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var dtype = x.dtype;
        var h = x.to(ScalarType.Float32);
        var variance = h.pow(2).mean(new long[] { -1 }, keepdim: true);
        h = h * torch.rsqrt(variance + _eps);
        return (_weight * h.to(dtype)).MoveToOuterDisposeScope();
    }
}

/// <summary>A lookup table, <c>{prefix}.weight</c> of shape [num, dim].</summary>
public sealed class Embedding : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "weight")] private readonly Parameter _weight;
    public Tensor Weight => _weight;
    public long NumEmbeddings { get; }

    public Embedding(string prefix, long num, long dim, WeightSource w) : base(nameof(Embedding))
    {
        NumEmbeddings = num;
        _weight = w.Param(prefix + ".weight", num, dim);
        RegisterComponents();
    }

    /// <summary>Ids of any shape → embeddings of shape ids.shape + [dim]. Ids must be in range (checked by callers).</summary>
    public override Tensor forward(Tensor ids)
    {
        using var scope = NewDisposeScope();
        var flat = _weight.index_select(0, ids.reshape(-1));
        var shape = ids.shape.Append(_weight.shape[1]).ToArray();
        return flat.reshape(shape).MoveToOuterDisposeScope();
    }
}
