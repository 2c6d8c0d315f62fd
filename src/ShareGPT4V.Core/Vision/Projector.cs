using ShareGPT4V.Modeling;
using TorchSharp;
using Parameter = TorchSharp.Modules.Parameter;
using TorchSharp.Modules;
using Linear = ShareGPT4V.Modeling.Linear;
using LayerNorm = ShareGPT4V.Modeling.LayerNorm;
using Embedding = ShareGPT4V.Modeling.Embedding;
using TorchSharp.Utils;
using static TorchSharp.torch;

namespace ShareGPT4V.Vision;

/// <summary>
/// The multimodal projector from CLIP features to LLaMA embeddings: <c>mlpNx_gelu</c> = N Linear layers with exact
/// (erf) GELU between them (LLaVA-1.5 uses N = 2), or <c>linear</c>. Keys follow llava-hf: <c>linear_1</c>,
/// <c>linear_2</c>, ... (original LLaVA's <c>mm_projector.0</c>, <c>.2</c>, ... map onto them).
/// </summary>
internal sealed class Projector : nn.Module<Tensor, Tensor>
{
    private readonly List<Linear> _linears = new();
    private readonly ScalarType _computeType;

    public Projector(string prefix, int depth, long visionHidden, long textHidden, WeightSource w) : base(nameof(Projector))
    {
        _computeType = w.ComputeType;
        for (int i = 0; i < depth; i++)
        {
            var l = new Linear($"{prefix}.linear_{i + 1}", i == 0 ? visionHidden : textHidden, textHidden, true, w);
            _linears.Add(l);
            register_module($"linear_{i + 1}", l);
        }
    }

    public int Depth => _linears.Count;

    public override Tensor forward(Tensor features)
    {
        using var scope = NewDisposeScope();
        var h = _linears[0].forward(features.to(_computeType));
        for (int i = 1; i < _linears.Count; i++)
            h = _linears[i].forward(nn.functional.gelu(h));
        return h.MoveToOuterDisposeScope();
    }
}
