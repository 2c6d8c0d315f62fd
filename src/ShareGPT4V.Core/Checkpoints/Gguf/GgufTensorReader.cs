using System.Text.RegularExpressions;
using ShareGPT4V.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.Checkpoints.Gguf;

/// <summary>
/// The tensors of an LLM GGUF or an mmproj GGUF under our (llava-hf) parameter names. llama.cpp's names map back
/// (<c>blk.N.attn_q.weight</c> → <c>language_model.model.layers.N.self_attn.q_proj.weight</c>, the legacy mmproj's
/// swapped <c>ffn_up</c>/<c>ffn_down</c> decided by shape), the rows of q/k are put back in transformers' order (the
/// converter interleaves the two rotary halves within each head), and a tower without <c>post_layernorm</c> (the
/// converter drops it; LLaVA never uses it) gets an identity one. F32/F16/BF16 tensors view the mapped file; Q8_0
/// and Q4_0 matrices stay as stored (<see cref="QuantizedWeight"/>) unless a float dtype is asked for. Q4_K and Q6_K
/// matrices (llama.cpp's K-quants, 256-weight super-blocks), and the Q5_0 that Q4_K_M files hold where rows are not whole
/// super-blocks, are converted at load into Q8_0 blocks (Q5_0 losslessly), the nearest format
/// our kernels run (docs/quantization.md measures what that costs), or dequantized exactly when a dtype is asked for.
/// Any other type is refused when the reader is built, naming the tensor and its type.
/// </summary>
internal sealed partial class GgufTensorReader : ITensorReader
{
    private enum Rows { AsStored, UnpermuteHeads }

    private sealed record Entry(GgufTensorInfo? Source, long[] Shape, Rows Order, int Heads, float Fill);

    private readonly GgufFile _file;
    private readonly Dictionary<string, Entry> _entries = new(StringComparer.Ordinal);
    private readonly List<string> _names = new();

    public string Source => _file.FilePath;
    public IReadOnlyList<string> Names => _names;

    private GgufTensorReader(GgufFile file) => _file = file;

    [GeneratedRegex(@"^blk\.(\d+)\.(.+)$")]
    private static partial Regex LlmBlock();

    [GeneratedRegex(@"^v\.blk\.(\d+)\.(.+)$")]
    private static partial Regex VisionBlock();

    /// <summary>The LLM file's tensors; q/k rows are un-permuted with the head counts of <paramref name="heads"/>/<paramref name="kvHeads"/>.</summary>
    public static GgufTensorReader ForLanguageModel(GgufFile file, int heads, int kvHeads) => OwnOnFailure(file, () => BuildLanguageModel(file, heads, kvHeads));

    /// <summary>The mmproj file's CLIP tower and projector tensors.</summary>
    public static GgufTensorReader ForMmproj(GgufFile file, int hidden, int layers) => OwnOnFailure(file, () => BuildMmproj(file, hidden, layers));

    // The reader owns the file; a refused file (an unsupported tensor type ...) is closed here.
    private static GgufTensorReader OwnOnFailure(GgufFile file, Func<GgufTensorReader> build)
    {
        try { return build(); }
        catch { file.Dispose(); throw; }
    }

    private static GgufTensorReader BuildLanguageModel(GgufFile file, int heads, int kvHeads)
    {
        var r = new GgufTensorReader(file);
        const string p = "language_model.";
        foreach (var t in file.Tensors)
        {
            string? name = t.Name switch
            {
                "token_embd.weight" => p + "model.embed_tokens.weight",
                "output.weight" => p + "lm_head.weight",
                "output_norm.weight" => p + "model.norm.weight",
                _ => null,
            };
            int permuteHeads = 0;
            if (name is null && LlmBlock().Match(t.Name) is { Success: true } m)
            {
                string layer = $"{p}model.layers.{m.Groups[1].Value}.";
                var (part, ext) = SplitSuffix(m.Groups[2].Value);
                name = part switch
                {
                    "attn_norm" => layer + "input_layernorm",
                    "ffn_norm" => layer + "post_attention_layernorm",
                    "attn_q" => layer + "self_attn.q_proj",
                    "attn_k" => layer + "self_attn.k_proj",
                    "attn_v" => layer + "self_attn.v_proj",
                    "attn_output" => layer + "self_attn.o_proj",
                    "ffn_gate" => layer + "mlp.gate_proj",
                    "ffn_up" => layer + "mlp.up_proj",
                    "ffn_down" => layer + "mlp.down_proj",
                    _ => null,
                };
                if (name is not null) name += "." + ext;
                if (part == "attn_q") permuteHeads = heads;
                if (part == "attn_k") permuteHeads = kvHeads;
            }
            // Unknown names are offered as they are, so the load lists them as unexpected.
            r.Add(name ?? t.Name, t, permuteHeads);
        }
        return r;
    }

    private static GgufTensorReader BuildMmproj(GgufFile file, int hidden, int layers)
    {
        var r = new GgufTensorReader(file);
        const string v = "vision_tower.vision_model.";
        foreach (var t in file.Tensors)
        {
            string? name = t.Name switch
            {
                "v.patch_embd.weight" => v + "embeddings.patch_embedding.weight",
                "v.class_embd" => v + "embeddings.class_embedding",
                "v.position_embd.weight" => v + "embeddings.position_embedding.weight",
                "v.pre_ln.weight" => v + "pre_layrnorm.weight",
                "v.pre_ln.bias" => v + "pre_layrnorm.bias",
                "v.post_ln.weight" => v + "post_layernorm.weight",
                "v.post_ln.bias" => v + "post_layernorm.bias",
                "mm.0.weight" => "multi_modal_projector.linear_1.weight",
                "mm.0.bias" => "multi_modal_projector.linear_1.bias",
                "mm.2.weight" => "multi_modal_projector.linear_2.weight",
                "mm.2.bias" => "multi_modal_projector.linear_2.bias",
                _ => null,
            };
            if (name is null && VisionBlock().Match(t.Name) is { Success: true } m)
            {
                string layer = $"{v}encoder.layers.{m.Groups[1].Value}.";
                var (part, ext) = SplitSuffix(m.Groups[2].Value);
                name = part switch
                {
                    "attn_q" => layer + "self_attn.q_proj",
                    "attn_k" => layer + "self_attn.k_proj",
                    "attn_v" => layer + "self_attn.v_proj",
                    "attn_out" => layer + "self_attn.out_proj",
                    "ln1" => layer + "layer_norm1",
                    "ln2" => layer + "layer_norm2",
                    // The legacy converter swaps the names of the MLP's two layers; the one reading the hidden width
                    // (ne[0] = hidden for the weight) is fc1. A bias follows its weight.
                    "ffn_down" or "ffn_up" => layer + (ReadsHidden(file, m.Groups[1].Value, part, hidden) ? "mlp.fc1" : "mlp.fc2"),
                    _ => null,
                };
                if (name is not null) name += "." + ext;
            }
            r.Add(name ?? t.Name, t, 0);
        }
        if (!r._entries.ContainsKey(v + "post_layernorm.weight"))
        {
            r.AddFill(v + "post_layernorm.weight", hidden, 1f);
            r.AddFill(v + "post_layernorm.bias", hidden, 0f);
        }
        return r;
    }

    private static bool ReadsHidden(GgufFile file, string layer, string part, int hidden)
    {
        var w = file.TryGetTensor($"v.blk.{layer}.{part}.weight", out var t) ? t : null;
        if (w is null) return part == "ffn_down"; // no weight to decide by: the legacy meaning (the load reports the gap)
        if (w.Ne.Length == 2 && w.Ne[0] == hidden && w.Ne[1] != hidden) return true;
        if (w.Ne.Length == 2 && w.Ne[1] == hidden && w.Ne[0] != hidden) return false;
        return part == "ffn_down";
    }

    private static (string Part, string Ext) SplitSuffix(string rest)
    {
        int dot = rest.LastIndexOf('.');
        return dot < 0 ? (rest, "") : (rest[..dot], rest[(dot + 1)..]);
    }

    /// <summary>The tensor types this reader loads, as messages list them.</summary>
    internal const string SupportedTypes = "F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K, Q5_0";

    private static bool Supported(GgmlType t) => t is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 or GgmlType.Q8_0 or GgmlType.Q4_0
        or GgmlType.Q4_K or GgmlType.Q6_K or GgmlType.Q5_0;

    private void Add(string name, GgufTensorInfo t, int permuteHeads)
    {
        if (!Supported(t.Type))
            throw new CheckpointFormatException($"Tensor type {t.Type} is not supported (supported: {SupportedTypes}; a K-quant file " +
                "mixing other types, e.g. Q4_K_S or Q5_K_M with Q5_K, or an IQ file, can be re-quantized with llama.cpp's llama-quantize to Q4_K_M, Q8_0 or Q4_0)",
                _file.FilePath, t.Name);
        if (_entries.ContainsKey(name))
            throw new CheckpointFormatException($"Two tensors map to parameter '{name}'", _file.FilePath, t.Name);
        var shape = t.Shape;
        if (permuteHeads > 0)
        {
            long rows = shape.Length == 2 ? shape[0] : 0;
            if (shape.Length != 2 || rows % permuteHeads != 0 || rows / permuteHeads % 2 != 0)
                throw new CheckpointFormatException($"Cannot un-permute [{string.Join(", ", shape)}] over {permuteHeads} heads of even size", _file.FilePath, t.Name);
        }
        _entries[name] = new Entry(t, shape, permuteHeads > 0 ? Rows.UnpermuteHeads : Rows.AsStored, permuteHeads, 0);
        _names.Add(name);
    }

    private void AddFill(string name, long length, float value)
    {
        _entries[name] = new Entry(null, new[] { length }, Rows.AsStored, 0, value);
        _names.Add(name);
    }

    public bool Contains(string name) => _entries.ContainsKey(name);

    private Entry Get(string name) =>
        _entries.TryGetValue(name, out var e) ? e : throw new CheckpointFormatException("Tensor not found", _file.FilePath, name);

    public TensorInfo GetInfo(string name)
    {
        var e = Get(name);
        var type = e.Source?.Type ?? GgmlType.F32;
        return new TensorInfo(e.Source?.Name ?? name, StorageDType(type), e.Shape, _file.FilePath) { Format = FormatOf(type) };
    }

    private static ScalarType StorageDType(GgmlType t) => t switch
    {
        GgmlType.F16 => ScalarType.Float16,
        GgmlType.BF16 => ScalarType.BFloat16,
        GgmlType.F32 => ScalarType.Float32,
        _ => ScalarType.Float32, // block formats: float32 is what they dequantize to
    };

    /// <summary>The block format a tensor is held in: as stored, or Q8_0 for a K-quant (see <see cref="LoadKQuant"/>).</summary>
    private static QuantizationFormat? FormatOf(GgmlType t) => t switch
    {
        GgmlType.Q8_0 => QuantizationFormat.Q8_0,
        GgmlType.Q4_0 => QuantizationFormat.Q4_0,
        GgmlType.Q4_K or GgmlType.Q6_K or GgmlType.Q5_0 => QuantizationFormat.Q8_0,
        _ => null,
    };

    private static GgufBlockType? KQuantOf(GgmlType t) => t switch
    {
        GgmlType.Q4_K => GgufBlockType.Q4_K,
        GgmlType.Q6_K => GgufBlockType.Q6_K,
        GgmlType.Q5_0 => GgufBlockType.Q5_0,
        _ => null,
    };

    /// <summary>
    /// Loads a tensor. A Q8_0 / Q4_0 matrix with no dtype asked for comes back as a <see cref="QuantizedWeight"/> over
    /// the mapped blocks (q/k: a row-reordered copy of the blocks); with a dtype it is dequantized.
    /// </summary>
    public Tensor Load(string name, ScalarType? dtype = null, Device? device = null)
    {
        var e = Get(name);
        using var scope = NewDisposeScope();
        Tensor result;
        if (e.Source is null)
        {
            result = torch.full(e.Shape, e.Fill, dtype ?? ScalarType.Float32);
        }
        else if (KQuantOf(e.Source.Type) is { } kind)
        {
            var q = LoadKQuant(e, kind, dtype is null && (device is null || device.type == DeviceType.CPU) ? QuantizationFormat.Q8_0 : null);
            if (q is QuantizedWeight) return q; // a parameter in its own right; not in this scope
            result = dtype is { } d && d != ScalarType.Float32 ? q.to(d) : q;
        }
        else if (FormatOf(e.Source.Type) is { } format)
        {
            var t = e.Source;
            if (t.Ne.Length != 2)
                throw new CheckpointFormatException($"A {t.Type} tensor must be a matrix (it has {t.Ne.Length} dimensions)", _file.FilePath, t.Name);
            long rows = t.Ne[1], columns = t.Ne[0];
            var blocks = _file.Bytes(t).view(rows, QuantizationFormats.RowBytes(format, columns));
            if (e.Order == Rows.UnpermuteHeads) blocks = UnpermuteRows(blocks, e.Heads);
            var q = new QuantizedWeight(blocks.DetachFromDisposeScope(), format, rows, columns);
            if (dtype is null && (device is null || device.type == DeviceType.CPU))
                return q; // a parameter in its own right; not in this scope
            using (q) result = q.Dequantize().to(dtype ?? ScalarType.Float32);
        }
        else if (e.Source.Type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16)
        {
            result = _file.Plain(e.Source);
            if (e.Order == Rows.UnpermuteHeads) result = UnpermuteRows(result, e.Heads);
            if (dtype is { } d && d != result.dtype) result = result.to(d);
        }
        else
            throw new CheckpointFormatException($"Tensor type {e.Source.Type} is not supported (supported: {SupportedTypes})", _file.FilePath, e.Source.Name);
        if (device is not null && device.type != DeviceType.CPU) result = result.to(device);
        return result.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// A Q4_K / Q6_K / Q5_0 matrix: converted row by row into <paramref name="target"/> blocks (a <see cref="QuantizedWeight"/>
    /// owning its memory), or with no target dequantized exactly to float32. Every super-block is checked: a NaN or
    /// infinite scale (llama.cpp's own validation refuses those) or values beyond the target's fp16 scale fail the load
    /// naming the tensor, row and block. Rows are independent, so they run on libtorch's thread count.
    /// </summary>
    private unsafe Tensor LoadKQuant(Entry e, GgufBlockType kind, QuantizationFormat? target)
    {
        var t = e.Source!;
        if (t.Ne.Length != 2)
            throw new CheckpointFormatException($"A {t.Type} tensor must be a matrix (it has {t.Ne.Length} dimensions)", _file.FilePath, t.Name);
        long rows = t.Ne[1], columns = t.Ne[0];
        long srcRowBytes = KQuants.RowBytes(kind, columns);
        using var scope = NewDisposeScope();
        var mapped = _file.Bytes(t);
        var blocks = mapped.view(rows, srcRowBytes);
        if (e.Order == Rows.UnpermuteHeads) blocks = UnpermuteRows(blocks, e.Heads);
        long dstRowBytes = target is { } f ? QuantizationFormats.RowBytes(f, columns) : columns * sizeof(float);
        var dst = target is null ? torch.empty(new[] { rows, columns }, ScalarType.Float32) : torch.empty(new[] { rows, dstRowBytes }, ScalarType.Byte);
        nint src = (nint)System.Runtime.CompilerServices.Unsafe.AsPointer(ref System.Runtime.InteropServices.MemoryMarshal.GetReference(blocks.bytes));
        nint dstp = (nint)System.Runtime.CompilerServices.Unsafe.AsPointer(ref System.Runtime.InteropServices.MemoryMarshal.GetReference(dst.bytes));
        // The first problem by row, so the message does not depend on thread timing.
        long badRow = long.MaxValue;
        KQuants.RowProblem badProblem = default;
        var gate = new object();
        Parallel.For(0, rows, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, torch.get_num_threads()) }, r =>
        {
            var row = new ReadOnlySpan<byte>((byte*)src + r * srcRowBytes, (int)srcRowBytes);
            KQuants.RowProblem? problem = null;
            if (target is { } format)
                problem = KQuants.ConvertRow(row, new Span<byte>((byte*)dstp + r * dstRowBytes, (int)dstRowBytes), kind, format);
            else
            {
                var values = new Span<float>((float*)dstp + r * columns, (int)columns);
                for (int b = 0; b < columns / KQuants.BlockWeights(kind); b++)
                {
                    int bb = KQuants.BlockBytes(kind);
                    if (!KQuants.ScalesFinite(row.Slice(b * bb, bb), kind)) { problem = new(b, "a NaN or infinite fp16 scale"); break; }
                }
                if (problem is null) KQuants.DequantizeRow(row, values, kind);
            }
            if (problem is { } p)
                lock (gate)
                    if (r < badRow) { badRow = r; badProblem = p; }
        });
        if (badRow != long.MaxValue)
        {
            // Rows are stored in file order; name the stored row (before any q/k un-permutation).
            string where = e.Order == Rows.UnpermuteHeads ? "(un-permuted) row" : "row";
            throw new CheckpointFormatException($"{t.Type} {(kind == GgufBlockType.Q5_0 ? "block" : "super-block")} {badProblem.Block} of {where} {badRow} has {badProblem.Reason}", _file.FilePath, t.Name);
        }
        // The source pages were only read: drop them from this process (they stay in the page cache).
        MappedMemory.Release(mapped);
        if (target is { } tf)
            return new QuantizedWeight(dst.DetachFromDisposeScope(), tf, rows, columns);
        return dst.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Rows of each head back in transformers' order: the GGUF row 2j + i of a head is transformers' row i·d/2 + j
    /// (i = 0, 1; d = head size). Works on any [rows, …] tensor, so quantized rows move as whole rows of blocks.
    /// </summary>
    internal static Tensor UnpermuteRows(Tensor w, int heads)
    {
        long rows = w.shape[0], d = rows / heads;
        var rest = w.shape[1..];
        var shape = new long[] { heads, d / 2, 2 }.Concat(rest).ToArray();
        var back = new long[] { rows }.Concat(rest).ToArray();
        return w.reshape(shape).transpose(1, 2).contiguous().reshape(back);
    }

    public void Dispose() => _file.Dispose();
}
