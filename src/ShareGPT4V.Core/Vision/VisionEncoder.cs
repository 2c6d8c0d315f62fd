using ShareGPT4V.Configuration;
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
/// The CLIP ViT vision tower (transformers' <c>CLIPVisionModel</c>): patch + class + position embeddings,
/// pre-LayerNorm, pre-norm encoder layers with <c>quick_gelu</c> MLPs. Keys: <c>vision_model.*</c>.
/// </summary>
internal sealed class VisionEncoder : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "vision_model")] private readonly ClipVisionTransformer _visionModel;

    public ClipVisionConfig Config { get; }

    public VisionEncoder(string prefix, ClipVisionConfig config, WeightSource w) : base(nameof(VisionEncoder))
    {
        Config = config;
        _visionModel = new ClipVisionTransformer(Join(prefix, "vision_model"), config, w);
        RegisterComponents();
    }

    internal static string Join(string prefix, string name) => prefix.Length == 0 ? name : prefix + "." + name;

    /// <summary>Pixels [N, 3, H, W] → the last hidden state [N, 1 + patches, hidden] (before post_layernorm).</summary>
    public override Tensor forward(Tensor pixels) => _visionModel.Run(pixels, Config.NumHiddenLayers, null);

    /// <summary>
    /// Hidden state number <paramref name="hiddenStateIndex"/> (0 = embeddings after pre_layrnorm, i = output of layer i;
    /// negative counts from the end as in transformers' <c>hidden_states</c> tuple). Only the layers needed are run.
    /// </summary>
    public Tensor HiddenState(Tensor pixels, int hiddenStateIndex)
    {
        int n = Config.NumHiddenLayers + 1;
        int idx = hiddenStateIndex < 0 ? n + hiddenStateIndex : hiddenStateIndex;
        if (idx < 0 || idx >= n)
            throw new ArgumentOutOfRangeException(nameof(hiddenStateIndex), $"Hidden state {hiddenStateIndex} is outside the {n} states of this tower");
        return _visionModel.Run(pixels, idx, null);
    }

    /// <summary>Every hidden state, [L + 1] tensors of [N, 1 + patches, hidden] (for checks against references).</summary>
    public List<Tensor> AllHiddenStates(Tensor pixels)
    {
        var states = new List<Tensor>();
        using var last = _visionModel.Run(pixels, Config.NumHiddenLayers, states);
        return states;
    }
}

internal sealed class ClipVisionTransformer : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "embeddings")] private readonly ClipVisionEmbeddings _embeddings;
    [ComponentName(Name = "pre_layrnorm")] private readonly LayerNorm _preLayrnorm; // sic: the checkpoint key has this typo
    [ComponentName(Name = "encoder")] private readonly ClipEncoder _encoder;
    [ComponentName(Name = "post_layernorm")] private readonly LayerNorm _postLayernorm; // unused by LLaVA, kept for key parity

    public ClipVisionTransformer(string prefix, ClipVisionConfig c, WeightSource w) : base(nameof(ClipVisionTransformer))
    {
        _embeddings = new ClipVisionEmbeddings(prefix + ".embeddings", c, w);
        _preLayrnorm = new LayerNorm(prefix + ".pre_layrnorm", c.HiddenSize, c.LayerNormEps, w);
        _encoder = new ClipEncoder(prefix + ".encoder", c, w);
        _postLayernorm = new LayerNorm(prefix + ".post_layernorm", c.HiddenSize, c.LayerNormEps, w);
        RegisterComponents();
    }

    public override Tensor forward(Tensor pixels) => Run(pixels, _encoder.Count, null);

    /// <summary>Runs the embeddings and the first <paramref name="layers"/> encoder layers.</summary>
    public Tensor Run(Tensor pixels, int layers, List<Tensor>? states)
    {
        using var scope = NewDisposeScope();
        var h = _preLayrnorm.forward(_embeddings.forward(pixels));
        if (states is not null) states.Add(h.alias().MoveToOuterDisposeScope());
        for (int i = 0; i < layers; i++)
        {
            var next = _encoder[i].forward(h);
            h.Dispose(); // free each layer's input as soon as it is used (an alias in states keeps its data)
            h = next;
            if (states is not null) states.Add(h.alias().MoveToOuterDisposeScope());
        }
        return h.MoveToOuterDisposeScope();
    }
}

internal sealed class ClipVisionEmbeddings : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "class_embedding")] private readonly Parameter _classEmbedding;
    [ComponentName(Name = "patch_embedding")] private readonly PatchConv _patchEmbedding;
    [ComponentName(Name = "position_embedding")] private readonly Embedding _positionEmbedding;
    private readonly ClipVisionConfig _c;

    public ClipVisionEmbeddings(string prefix, ClipVisionConfig c, WeightSource w) : base(nameof(ClipVisionEmbeddings))
    {
        _c = c;
        _classEmbedding = w.Param(prefix + ".class_embedding", c.HiddenSize);
        _patchEmbedding = new PatchConv(prefix + ".patch_embedding", c, w);
        _positionEmbedding = new Embedding(prefix + ".position_embedding", c.NumPatches + 1, c.HiddenSize, w);
        RegisterComponents();
    }

    public override Tensor forward(Tensor pixels)
    {
        using var scope = NewDisposeScope();
        long n = pixels.shape[0];
        var patches = _patchEmbedding.forward(pixels.to(_classEmbedding.dtype)); // [N, hidden, gh, gw]
        patches = patches.flatten(2).transpose(1, 2);                          // [N, patches, hidden]
        var cls = _classEmbedding.reshape(1, 1, -1).expand(n, 1, -1);
        var h = torch.cat(new[] { cls, patches }, 1);
        h = HeldScalars.Add(h, _positionEmbedding.Weight.to(h.dtype).unsqueeze(0));
        return h.MoveToOuterDisposeScope();
    }
}

/// <summary>The patch embedding: a bias-free convolution whose kernel and stride are the patch size.</summary>
internal sealed class PatchConv : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "weight")] private readonly Parameter _weight;
    private readonly long _patch;

    public PatchConv(string prefix, ClipVisionConfig c, WeightSource w) : base(nameof(PatchConv))
    {
        _patch = c.PatchSize;
        _weight = w.Param(prefix + ".weight", c.HiddenSize, c.NumChannels, c.PatchSize, c.PatchSize);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        if (!Autocast.Applies(x) || _weight.dtype != ScalarType.Float32)
            return nn.functional.conv2d(x, _weight, null, strides: new[] { _patch, _patch }, padding: new[] { 0L, 0L }, dilation: new[] { 1L, 1L }, groups: 1);
        using var scope = NewDisposeScope();
        var dt = Autocast.Current!.Value;
        return nn.functional.conv2d(x.to(dt), _weight.to(dt), null, strides: new[] { _patch, _patch }, padding: new[] { 0L, 0L }, dilation: new[] { 1L, 1L }, groups: 1)
            .to(x.dtype).MoveToOuterDisposeScope();
    }
}

internal sealed class ClipEncoder : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "layers")] private readonly ModuleList<ClipEncoderLayer> _layers;

    public ClipEncoder(string prefix, ClipVisionConfig c, WeightSource w) : base(nameof(ClipEncoder))
    {
        _layers = new ModuleList<ClipEncoderLayer>();
        for (int i = 0; i < c.NumHiddenLayers; i++)
            _layers.Add(new ClipEncoderLayer($"{prefix}.layers.{i}", c, w));
        RegisterComponents();
    }

    public int Count => _layers.Count;
    public ClipEncoderLayer this[int i] => _layers[i];

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        foreach (var l in _layers) x = l.forward(x);
        return x.MoveToOuterDisposeScope();
    }
}

internal sealed class ClipEncoderLayer : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "self_attn")] private readonly ClipAttention _selfAttn;
    [ComponentName(Name = "layer_norm1")] private readonly LayerNorm _layerNorm1;
    [ComponentName(Name = "mlp")] private readonly ClipMlp _mlp;
    [ComponentName(Name = "layer_norm2")] private readonly LayerNorm _layerNorm2;

    public ClipEncoderLayer(string prefix, ClipVisionConfig c, WeightSource w) : base(nameof(ClipEncoderLayer))
    {
        _selfAttn = new ClipAttention(prefix + ".self_attn", c, w);
        _layerNorm1 = new LayerNorm(prefix + ".layer_norm1", c.HiddenSize, c.LayerNormEps, w);
        _mlp = new ClipMlp(prefix + ".mlp", c, w);
        _layerNorm2 = new LayerNorm(prefix + ".layer_norm2", c.HiddenSize, c.LayerNormEps, w);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = HeldScalars.Add(x, _selfAttn.forward(_layerNorm1.forward(x)));
        h = HeldScalars.Add(h, _mlp.forward(_layerNorm2.forward(h)));
        return h.MoveToOuterDisposeScope();
    }
}

internal sealed class ClipAttention : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "k_proj")] private readonly Linear _kProj;
    [ComponentName(Name = "v_proj")] private readonly Linear _vProj;
    [ComponentName(Name = "q_proj")] private readonly Linear _qProj;
    [ComponentName(Name = "out_proj")] private readonly Linear _outProj;
    private readonly int _heads, _headDim;

    public ClipAttention(string prefix, ClipVisionConfig c, WeightSource w) : base(nameof(ClipAttention))
    {
        _heads = c.NumAttentionHeads;
        _headDim = c.HeadDim;
        _kProj = new Linear(prefix + ".k_proj", c.HiddenSize, c.HiddenSize, true, w);
        _vProj = new Linear(prefix + ".v_proj", c.HiddenSize, c.HiddenSize, true, w);
        _qProj = new Linear(prefix + ".q_proj", c.HiddenSize, c.HiddenSize, true, w);
        _outProj = new Linear(prefix + ".out_proj", c.HiddenSize, c.HiddenSize, true, w);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        long b = x.shape[0], t = x.shape[1];
        Tensor Heads(Tensor y) => y.view(b, t, _heads, _headDim).transpose(1, 2);
        var q = Heads(_qProj.forward(x));
        var k = Heads(_kProj.forward(x));
        var v = Heads(_vProj.forward(x));
        // Full (unmasked) attention with the 1/sqrt(head_dim) scale CLIP uses.
        var o = Autocast.Attention(q, k, v);
        o = o.transpose(1, 2).reshape(b, t, _heads * _headDim);
        return _outProj.forward(o).MoveToOuterDisposeScope();
    }
}

internal sealed class ClipMlp : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "fc1")] private readonly Linear _fc1;
    [ComponentName(Name = "fc2")] private readonly Linear _fc2;
    private readonly string _act;
    private static readonly Scalar QuickGeluScale = 1.702.ToScalar(); // held: see HeldScalars

    public ClipMlp(string prefix, ClipVisionConfig c, WeightSource w) : base(nameof(ClipMlp))
    {
        _act = c.HiddenAct;
        _fc1 = new Linear(prefix + ".fc1", c.HiddenSize, c.IntermediateSize, true, w);
        _fc2 = new Linear(prefix + ".fc2", c.IntermediateSize, c.HiddenSize, true, w);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = _fc1.forward(x);
        h = _act switch
        {
            "quick_gelu" => h * torch.sigmoid(h * QuickGeluScale),
            "gelu" => nn.functional.gelu(h),
            _ => nn.functional.gelu(h, TorchSharp.Modules.GELU.Approximate.tanh),
        };
        return _fc2.forward(h).MoveToOuterDisposeScope();
    }
}
