using ShareGPT4V.Configuration;
using ShareGPT4V.Generation;
using ShareGPT4V.Modeling;
using TorchSharp;
using TorchSharp.Modules;
using TorchSharp.Utils;
using static TorchSharp.torch;
using Embedding = ShareGPT4V.Modeling.Embedding;
using Linear = ShareGPT4V.Modeling.Linear;

namespace ShareGPT4V.Language;

/// <summary>Which logits a forward pass computes: the vocabulary projection is the largest matmul of a decode step.</summary>
internal enum LogitsMode
{
    /// <summary>Logits for every position (checks, scoring).</summary>
    All,
    /// <summary>Logits for the last position of each row only (generation).</summary>
    Last,
    /// <summary>No logits (prefill of a prompt whose continuation is supplied).</summary>
    None,
}

/// <summary>
/// The LLaMA causal language model (transformers' <c>LlamaForCausalLM</c>): token embeddings, decoder layers with
/// RMSNorm, rotary grouped-query attention and a SwiGLU MLP, final norm and the LM head. Keys: <c>model.*</c>, <c>lm_head.*</c>.
/// Takes input embeddings as a first-class input so image features can be spliced in.
/// </summary>
internal sealed class LlamaModel : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "model")] private readonly LlamaTransformer _model;
    [ComponentName(Name = "lm_head")] private readonly Linear? _lmHead;
    private readonly RotaryEmbedding _rope;
    private readonly ScalarType _computeType;

    public LlamaConfig Config { get; }

    public LlamaModel(string prefix, LlamaConfig config, WeightSource w) : base(nameof(LlamaModel))
    {
        Config = config;
        _computeType = w.ComputeType;
        _model = new LlamaTransformer(Join(prefix, "model"), config, w);
        // Tied embeddings reuse embed_tokens as the output projection; the checkpoint then has no lm_head.
        if (!config.TieWordEmbeddings)
            _lmHead = new Linear(Join(prefix, "lm_head"), config.HiddenSize, config.VocabSize, false, w);
        _rope = new RotaryEmbedding(config);
        RegisterComponents();
    }

    private static string Join(string prefix, string name) => prefix.Length == 0 ? name : prefix + "." + name;

    /// <summary>The dtype of activations and of the KV cache (the large weights may be stored narrower, see <see cref="WeightSource.ComputeType"/>).</summary>
    public ScalarType DType => _computeType;
    public Device Device => _model.EmbedTokens.Weight.device;

    /// <summary>Token ids [B, T] → embeddings [B, T, H] in <see cref="DType"/>. Ids outside the vocabulary are refused.</summary>
    public Tensor Embed(Tensor ids)
    {
        if (ids.numel() > 0)
        {
            using var lo = ids.min();
            using var hi = ids.max();
            long min = lo.item<long>(), max = hi.item<long>();
            if (min < 0 || max >= Config.VocabSize)
                throw new PromptException($"Token id {(min < 0 ? min : max)} is outside the vocabulary [0, {Config.VocabSize})");
        }
        var rows = _model.EmbedTokens.forward(ids);
        if (rows.dtype == _computeType) return rows;
        using (rows) return rows.to(_computeType);
    }

    /// <summary>
    /// Token ids [rows, T] given on the host → embeddings [rows, T, H]: the range check runs on the host, so a decode
    /// step waits for nothing on the device.
    /// </summary>
    internal Tensor EmbedHostIds(long[] ids, long rows)
    {
        foreach (var id in ids)
            if (id < 0 || id >= Config.VocabSize)
                throw new PromptException($"Token id {id} is outside the vocabulary [0, {Config.VocabSize})");
        using var scope = NewDisposeScope();
        var t = torch.tensor(ids, device: Device).reshape(rows, ids.Length / rows);
        var emb = _model.EmbedTokens.forward(t);
        if (emb.dtype != _computeType) emb = emb.to(_computeType);
        return emb.MoveToOuterDisposeScope();
    }

    /// <summary>Prompts of at least this many tokens give the C heap back after each layer (see ForwardSlots).</summary>
    internal const int TrimEveryLayerFrom = 64;

    /// <summary>
    /// One forward pass of rows that each live in their own KV cache slot (the generation engine's layout): row r
    /// writes its keys and values at [starts[r], starts[r] + T) of slot slots[r] and attends to that slot's positions
    /// [0, starts[r] + T) only, so each row is computed as it would be alone. A prefill runs one row (T tokens,
    /// start > 0 when a cached prefix is reused); a decode step runs every active row with T = 1.
    /// </summary>
    internal Tensor ForwardSlots(Tensor inputsEmbeds, Tensor positionIds, KvCache cache, SlotRows rows, LogitsMode logits)
    {
        using var scope = NewDisposeScope();
        long b = inputsEmbeds.shape[0], t = inputsEmbeds.shape[1];
        if (b != rows.Count) throw new ArgumentException($"{b} rows of embeddings for {rows.Count} slots");
        if (b > 1 && t > 1) throw new ArgumentException("Several slots advance one token at a time");
        if (b > MatVec.MaxRows && inputsEmbeds.device_type == DeviceType.CPU)
        {
            // More rows than the decode kernel takes: run them in groups it takes, so every row is still computed
            // as it is alone (a GEMM over all rows would round differently), at the cost of reading the weights again.
            var parts = new List<Tensor>();
            for (int first = 0; first < b; first += MatVec.MaxRows)
            {
                int n = (int)Math.Min(MatVec.MaxRows, b - first);
                var group = new SlotRows(rows.Slots[first..(first + n)], rows.Starts[first..(first + n)]);
                parts.Add(ForwardSlots(inputsEmbeds.narrow(0, first, n), positionIds.narrow(0, first, n), cache, group, logits));
            }
            return torch.cat(parts, 0).MoveToOuterDisposeScope();
        }
        var h = inputsEmbeds.to(DType);
        var (cos, sin) = _rope.Get(positionIds, h.dtype);
        long start = rows.Starts[0];
        bool causal = b == 1 && start == 0 && t > 1;
        // One row continuing a cached prefix: causal over the new positions, everything cached visible.
        var mask = b == 1 && !causal ? BuildMask(null, 1, t, start, h.dtype, h.device) : null;
        for (int i = 0; i < _model.Layers.Count; i++)
        {
            var next = _model.Layers[i].ForwardSlots(h, cos, sin, mask, causal, cache, i, rows);
            h.Dispose();
            h = next;
            // A long prompt's layer frees tens of megabytes of activations between small long-lived blocks (the KV
            // cache's views, held scalars); without a trim the heap keeps every layer's holes until the pass ends.
            if (t >= TrimEveryLayerFrom) CHeap.Trim();
        }
        h = _model.Norm.forward(h);
        Tensor result = logits switch
        {
            LogitsMode.None => torch.empty(0),
            LogitsMode.Last => Project(h.narrow(1, t - 1, 1)),
            _ => Project(h),
        };
        return result.MoveToOuterDisposeScope();
    }

    /// <summary>Full forward on token ids without cache (logits for every position).</summary>
    public override Tensor forward(Tensor ids)
    {
        using var scope = NewDisposeScope();
        var emb = Embed(ids);
        long b = ids.shape[0], t = ids.shape[1];
        var pos = HeldScalars.Arange(0, t, ids.device).unsqueeze(0).expand(b, t);
        return Forward(emb, pos, null, null, 0, LogitsMode.All).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// One forward pass over input embeddings [B, T, H] at positions <paramref name="positionIds"/> [B, T].
    /// <paramref name="attentionMask"/> [B, start + T] marks real tokens (1) and padding (0) over the cached and new
    /// positions; null means no padding. With a cache, k/v are written at [start, start + T).
    /// <paramref name="hiddenStates"/>, when given, receives the input of each layer and the final normed output.
    /// </summary>
    public Tensor Forward(Tensor inputsEmbeds, Tensor positionIds, Tensor? attentionMask, KvCache? cache, long start,
        LogitsMode logits, List<Tensor>? hiddenStates = null)
    {
        using var scope = NewDisposeScope();
        long b = inputsEmbeds.shape[0], t = inputsEmbeds.shape[1];
        long total = start + t;
        if (cache is null && start != 0)
            throw new ArgumentException("A start position needs a KV cache", nameof(start));
        var h = inputsEmbeds.to(DType);
        var (cos, sin) = _rope.Get(positionIds, h.dtype);
        // A fresh, unpadded prompt needs no mask tensor: attention runs causally, without materialising scores.
        bool causal = attentionMask is null && start == 0 && t > 1;
        var mask = causal ? null : BuildMask(attentionMask, b, t, start, h.dtype, h.device);
        for (int i = 0; i < _model.Layers.Count; i++)
        {
            if (hiddenStates is not null) hiddenStates.Add(h.alias().MoveToOuterDisposeScope());
            var next = _model.Layers[i].Forward(h, cos, sin, mask, causal, cache, i, start);
            h.Dispose(); // free each layer's input as soon as it is used, not when the whole pass ends
            h = next;
        }
        h = _model.Norm.forward(h);
        if (hiddenStates is not null) hiddenStates.Add(h.alias().MoveToOuterDisposeScope());
        Tensor result = logits switch
        {
            LogitsMode.None => torch.empty(0),
            LogitsMode.Last => Project(h.narrow(1, t - 1, 1)),
            _ => Project(h),
        };
        return result.MoveToOuterDisposeScope();
    }

    // Training with gradient checkpointing runs the decoder layers itself (each one twice: without and then with
    // autograd), so it needs Forward's pieces separately. No cache, positions from 0.
    internal int LayerCount => _model.Layers.Count;

    /// <summary>Rotary tables and mask for a full-sequence pass over [B, T] (mask null and causal true when unpadded).</summary>
    internal (Tensor Cos, Tensor Sin, Tensor? Mask, bool Causal) PrepareLayers(Tensor positionIds, Tensor? attentionMask, long b, long t, Device device)
    {
        var (cos, sin) = _rope.Get(positionIds, DType);
        bool causal = attentionMask is null && t > 1;
        var mask = causal ? null : BuildMask(attentionMask, b, t, 0, DType, device);
        return (cos, sin, mask, causal);
    }

    internal Tensor RunLayer(int i, Tensor h, Tensor cos, Tensor sin, Tensor? mask, bool causal) =>
        _model.Layers[i].Forward(h, cos, sin, mask, causal, null, i, 0);

    /// <summary>Final norm and LM head over the last layer's output.</summary>
    internal Tensor Head(Tensor h)
    {
        using var scope = NewDisposeScope();
        return Project(_model.Norm.forward(h)).MoveToOuterDisposeScope();
    }

    private Tensor Project(Tensor h) =>
        _lmHead is not null ? _lmHead.forward(h) : Linear.Apply(h, _model.EmbedTokens.Weight, null);

    /// <summary>
    /// Additive mask [B, 1, T, start + T]: causal over positions, padding keys excluded. The dtype's lowest value
    /// (not -inf) keeps fully-masked padding rows finite, so no NaN can reach real rows through 0 × NaN.
    /// </summary>
    private static Tensor? BuildMask(Tensor? attentionMask, long b, long t, long start, ScalarType dtype, Device device)
    {
        long total = start + t;
        if (attentionMask is null && t == 1)
            return null; // one new token attends to everything cached: no mask needed
        using var scope = NewDisposeScope();
        var qPos = HeldScalars.Arange(start, total, device).unsqueeze(1); // [T, 1]
        var kPos = HeldScalars.Arange(0, total, device).unsqueeze(0);     // [1, S]
        var allowed = (kPos <= qPos).unsqueeze(0).unsqueeze(0);                          // [1, 1, T, S]
        if (attentionMask is not null)
        {
            if (attentionMask.shape[0] != b || attentionMask.shape[1] != total)
                throw new ArgumentException($"Attention mask has shape [{string.Join(", ", attentionMask.shape)}], expected [{b}, {total}]");
            var keyOk = attentionMask.to(ScalarType.Bool).reshape(b, 1, 1, total);
            allowed = allowed.logical_and(keyOk);
        }
        var m = torch.zeros(allowed.shape, dtype, device).masked_fill(allowed.logical_not(), HeldScalars.Lowest(dtype));
        return m.expand(b, 1, t, total).MoveToOuterDisposeScope();
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing) _rope.Dispose();
        base.Dispose(disposing);
    }
}

internal sealed class LlamaTransformer : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "embed_tokens")] private readonly Embedding _embedTokens;
    [ComponentName(Name = "layers")] private readonly ModuleList<LlamaDecoderLayer> _layers;
    [ComponentName(Name = "norm")] private readonly RmsNorm _norm;

    public LlamaTransformer(string prefix, LlamaConfig c, WeightSource w) : base(nameof(LlamaTransformer))
    {
        _embedTokens = new Embedding(prefix + ".embed_tokens", c.VocabSize, c.HiddenSize, w);
        _layers = new ModuleList<LlamaDecoderLayer>();
        for (int i = 0; i < c.NumHiddenLayers; i++)
            _layers.Add(new LlamaDecoderLayer($"{prefix}.layers.{i}", c, w));
        _norm = new RmsNorm(prefix + ".norm", c.HiddenSize, c.RmsNormEps, w);
        RegisterComponents();
    }

    public Embedding EmbedTokens => _embedTokens;
    public ModuleList<LlamaDecoderLayer> Layers => _layers;
    public RmsNorm Norm => _norm;

    public override Tensor forward(Tensor x) => throw new NotSupportedException("Use LlamaModel.Forward");
}

internal sealed class LlamaDecoderLayer : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "self_attn")] private readonly LlamaAttention _selfAttn;
    [ComponentName(Name = "mlp")] private readonly LlamaMlp _mlp;
    [ComponentName(Name = "input_layernorm")] private readonly RmsNorm _inputLayernorm;
    [ComponentName(Name = "post_attention_layernorm")] private readonly RmsNorm _postAttentionLayernorm;

    public LlamaDecoderLayer(string prefix, LlamaConfig c, WeightSource w) : base(nameof(LlamaDecoderLayer))
    {
        _selfAttn = new LlamaAttention(prefix + ".self_attn", c, w);
        _mlp = new LlamaMlp(prefix + ".mlp", c, w);
        _inputLayernorm = new RmsNorm(prefix + ".input_layernorm", c.HiddenSize, c.RmsNormEps, w);
        _postAttentionLayernorm = new RmsNorm(prefix + ".post_attention_layernorm", c.HiddenSize, c.RmsNormEps, w);
        RegisterComponents();
    }

    public Tensor Forward(Tensor x, Tensor cos, Tensor sin, Tensor? mask, bool causal, KvCache? cache, int layer, long start)
    {
        using var scope = NewDisposeScope();
        var h = HeldScalars.Add(x, _selfAttn.Forward(_inputLayernorm.forward(x), cos, sin, mask, causal, cache, layer, start));
        h = HeldScalars.Add(h, _mlp.forward(_postAttentionLayernorm.forward(h)));
        return h.MoveToOuterDisposeScope();
    }

    public Tensor ForwardSlots(Tensor x, Tensor cos, Tensor sin, Tensor? mask, bool causal, KvCache cache, int layer, SlotRows rows)
    {
        using var scope = NewDisposeScope();
        Tensor h;
        using (var normed = _inputLayernorm.forward(x))
        using (var attended = _selfAttn.ForwardSlots(normed, cos, sin, mask, causal, cache, layer, rows))
            h = HeldScalars.Add(x, attended);
        // A long prompt's attention freed tens of megabytes of activations whose sizes the MLP's do not reuse: give them
        // back before the MLP allocates (as LlamaModel.ForwardSlots does after each layer).
        if (x.shape[1] >= LlamaModel.TrimEveryLayerFrom) CHeap.Trim();
        h = HeldScalars.Add(h, _mlp.forward(_postAttentionLayernorm.forward(h)));
        return h.MoveToOuterDisposeScope();
    }

    public override Tensor forward(Tensor x) => throw new NotSupportedException("Use Forward with rotary tables");
}

internal sealed class LlamaAttention : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "q_proj")] private readonly Linear _qProj;
    [ComponentName(Name = "k_proj")] private readonly Linear _kProj;
    [ComponentName(Name = "v_proj")] private readonly Linear _vProj;
    [ComponentName(Name = "o_proj")] private readonly Linear _oProj;
    private readonly int _heads, _kvHeads, _headDim;

    public LlamaAttention(string prefix, LlamaConfig c, WeightSource w) : base(nameof(LlamaAttention))
    {
        _heads = c.NumAttentionHeads;
        _kvHeads = c.NumKeyValueHeads;
        _headDim = c.HeadDim;
        _qProj = new Linear(prefix + ".q_proj", c.HiddenSize, (long)_heads * _headDim, c.AttentionBias, w);
        _kProj = new Linear(prefix + ".k_proj", c.HiddenSize, (long)_kvHeads * _headDim, c.AttentionBias, w);
        _vProj = new Linear(prefix + ".v_proj", c.HiddenSize, (long)_kvHeads * _headDim, c.AttentionBias, w);
        _oProj = new Linear(prefix + ".o_proj", (long)_heads * _headDim, c.HiddenSize, c.AttentionBias, w);
        RegisterComponents();
    }

    // causal: there is no mask because queries and keys are the same positions from 0; attend causally.
    public Tensor Forward(Tensor x, Tensor cos, Tensor sin, Tensor? mask, bool causal, KvCache? cache, int layer, long start)
    {
        using var scope = NewDisposeScope();
        long b = x.shape[0], t = x.shape[1];
        var qkv = Linear.ForwardMany(x, _qProj, _kProj, _vProj); // one fused job in a decode step
        var q = qkv[0].view(b, t, _heads, _headDim).transpose(1, 2);
        var k = qkv[1].view(b, t, _kvHeads, _headDim).transpose(1, 2);
        var v = qkv[2].view(b, t, _kvHeads, _headDim).transpose(1, 2);
        q = RotaryEmbedding.Apply(q, cos, sin);
        k = RotaryEmbedding.Apply(k, cos, sin);
        Tensor keys = k, values = v;
        if (cache is not null)
            (keys, values) = cache.Update(layer, start, k, v);
        long s = keys.shape[2];
        bool decodeKernel = t == 1 && cache is not null && DecodeAttention.Applies(q, cache.Buffers(layer).Keys, mask);
        if (!decodeKernel && keys.dtype != q.dtype)
            (keys, values) = (keys.to(q.dtype), values.to(q.dtype)); // a 16-bit cache, widened for this layer's attention
        int groups = _heads / _kvHeads;
        Tensor o;
        if (decodeKernel)
        {
            // A decode step: our kernel reads the cache in place (and keeps the step out of OpenMP, see DecodeAttention).
            var (kAll, vAll) = cache!.Buffers(layer);
            o = DecodeAttention.Run(q, kAll, vAll, s, mask?.reshape(b, s).contiguous());
        }
        else if (groups == 1)
        {
            o = Autocast.Attention(q, keys, values, mask, causal);
        }
        else if (causal)
        {
            // Prefill: give every query head its kv head (query head h uses kv head h / groups, as transformers'
            // repeat_kv) so the causal kernel runs; the copies are small next to a materialised score matrix.
            var ke = keys.repeat_interleave(groups, 1);
            var ve = values.repeat_interleave(groups, 1);
            o = Autocast.Attention(q, ke, ve, null, true);
        }
        else
        {
            // Grouped-query attention without copying k/v: fold each group's query heads into the sequence axis
            // (query head h uses kv head h / groups, as transformers' repeat_kv does).
            var qg = q.reshape(b, _kvHeads, groups * t, _headDim);
            Tensor? mg = mask is null ? null
                : mask.unsqueeze(2).expand(b, 1, groups, t, s).reshape(b, 1, groups * t, s);
            o = Autocast.Attention(qg, keys, values, mg).reshape(b, _heads, t, _headDim);
        }
        o = o.transpose(1, 2).reshape(b, t, (long)_heads * _headDim);
        return _oProj.forward(o).MoveToOuterDisposeScope();
    }

    /// <summary>Attention of rows in their own cache slots (see <see cref="LlamaModel.ForwardSlots"/>).</summary>
    public Tensor ForwardSlots(Tensor x, Tensor cos, Tensor sin, Tensor? mask, bool causal, KvCache cache, int layer, SlotRows rows)
    {
        using var scope = NewDisposeScope();
        long b = x.shape[0], t = x.shape[1];
        var qkv = Linear.ForwardMany(x, _qProj, _kProj, _vProj);
        var q = Rotate(qkv[0], b, t, _heads, cos, sin);
        var k = Rotate(qkv[1], b, t, _kvHeads, cos, sin);
        var v = qkv[2].view(b, t, _kvHeads, _headDim).transpose(1, 2);
        cache.WriteSlots(layer, rows, k, v);
        var (kAll, vAll) = cache.Buffers(layer);
        Tensor o;
        if (t == 1 && DecodeAttention.Applies(q, kAll, null))
        {
            var lengths = new long[b];
            for (int r = 0; r < b; r++) lengths[r] = rows.Starts[r] + 1;
            o = DecodeAttention.RunSlots(q, kAll, vAll, rows.Slots, lengths);
        }
        else
        {
            // A prompt's prefill and elsewhere (GPU, no AVX2): each row attends on its own over its slot's used
            // positions, no padding to mask. A fresh prompt's keys and values are this pass's own (the cache holds the
            // same, or their 16-bit rounding); a continued one reads the cached prefix back.
            var outs = new Tensor[b];
            for (int r = 0; r < b; r++)
            {
                var (keys, values) = b == 1 && rows.Starts[r] == 0 ? (k, v)
                    : cache.DType == ScalarType.BFloat16 && q.dtype == ScalarType.Float32 ? cache.SlotAsFloat32(layer, rows.Slots[r], rows.Starts[r] + t)
                    : cache.Slot(layer, rows.Slots[r], rows.Starts[r] + t);
                if (keys.dtype != q.dtype) (keys, values) = (keys.to(q.dtype), values.to(q.dtype)); // a 16-bit cache elsewhere
                outs[r] = Attend(q.narrow(0, r, 1), keys, values, mask, causal);
            }
            o = b == 1 ? outs[0] : torch.cat(outs, 0);
        }
        using (var heads = o) o = heads.transpose(1, 2).reshape(b, t, (long)_heads * _headDim);
        return _oProj.forward(o).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The projection [B, T, heads·D] as [B, heads, T, D], rotated; the unrotated projection is freed at once (over a
    /// long prompt each is tens of megabytes, and the scope would keep them to the layer's end).
    /// </summary>
    private Tensor Rotate(Tensor projected, long b, long t, int heads, Tensor cos, Tensor sin)
    {
        using var p = projected;
        using var view = p.view(b, t, heads, _headDim).transpose(1, 2);
        return RotaryEmbedding.Apply(view, cos, sin);
    }

    /// <summary>Scaled dot-product attention of q [B, H, T, D] over keys / values [B, kvH, S, D] with grouped-query heads.</summary>
    private Tensor Attend(Tensor q, Tensor keys, Tensor values, Tensor? mask, bool causal)
    {
        long b = q.shape[0], t = q.shape[2], s = keys.shape[2];
        int groups = _heads / _kvHeads;
        if (groups == 1) return Autocast.Attention(q, keys, values, mask, causal);
        if (causal)
            return Autocast.Attention(q, keys.repeat_interleave(groups, 1), values.repeat_interleave(groups, 1), null, true);
        var qg = q.reshape(b, _kvHeads, groups * t, _headDim);
        Tensor? mg = mask is null ? null : mask.unsqueeze(2).expand(b, 1, groups, t, s).reshape(b, 1, groups * t, s);
        return Autocast.Attention(qg, keys, values, mg).reshape(b, _heads, t, _headDim);
    }

    public override Tensor forward(Tensor x) => throw new NotSupportedException("Use Forward with rotary tables");
}

internal sealed class LlamaMlp : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "gate_proj")] private readonly Linear _gateProj;
    [ComponentName(Name = "up_proj")] private readonly Linear _upProj;
    [ComponentName(Name = "down_proj")] private readonly Linear _downProj;

    public LlamaMlp(string prefix, LlamaConfig c, WeightSource w) : base(nameof(LlamaMlp))
    {
        _gateProj = new Linear(prefix + ".gate_proj", c.HiddenSize, c.IntermediateSize, c.MlpBias, w);
        _upProj = new Linear(prefix + ".up_proj", c.HiddenSize, c.IntermediateSize, c.MlpBias, w);
        _downProj = new Linear(prefix + ".down_proj", c.IntermediateSize, c.HiddenSize, c.MlpBias, w);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        // A prompt over quantized weights: gate, SiLU and up one panel at a time, in the dtype the down GEMM reads.
        if (Linear.GatedProduct(x, _gateProj, _upProj) is { } product) return _downProj.forward(product).MoveToOuterDisposeScope();
        var gateUp = Linear.ForwardMany(x, _gateProj, _upProj); // one fused job in a decode step
        // In place, and up freed at once: over a long prompt each of these is [T, intermediate] float32, and the scope
        // would otherwise hold four of them through the down projection (the peak of a 7B prefill).
        var h = nn.functional.silu(gateUp[0], inplace: true).mul_(gateUp[1]);
        gateUp[1].Dispose();
        return _downProj.forward(h).MoveToOuterDisposeScope();
    }
}
