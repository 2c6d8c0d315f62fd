using System.Diagnostics;
using ShareGPT4V.Configuration;
using ShareGPT4V.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.Checkpoints;

/// <summary>Progress of a model load.</summary>
public readonly record struct LoadProgress(int TensorsLoaded, int TensorsTotal, long BytesLoaded, long BytesTotal, string? CurrentTensor);

/// <summary>How to load a model.</summary>
internal sealed record LoadOptions
{
    /// <summary>
    /// Element type the large weights (linear layers, embedding tables) are kept in memory in; null keeps each as the
    /// checkpoint stores it (a bfloat16 checkpoint then stays memory-mapped, without a float32 copy). Float32 by
    /// default, which expands a half-precision checkpoint. Activations use <see cref="ComputePrecision.For"/> of it:
    /// float32 on CPU whatever the weights are, so half-precision weights save memory and decode bandwidth there
    /// without the slow half-precision CPU GEMMs.
    /// </summary>
    public ScalarType? DType { get; init; } = ScalarType.Float32;
    /// <summary>
    /// Block-quantize the language model's matrices at load (CPU): <c>Q8_0</c> or <c>Q4_0</c> for the layer matrices and
    /// the token embeddings, <c>Q8_0</c> for the LM head (llama.cpp's recipes keep the output projection at higher
    /// precision) and for the linear layers of the vision tower and projector, whose other tensors (patch convolution,
    /// class and position embeddings, norms) stay in 16 or 32 bits. Matrices whose rows are not whole 32-weight blocks
    /// keep <see cref="DType"/>. Tensors a GGUF file already stores as Q8_0 / Q4_0 are used as stored whatever this says.
    /// </summary>
    public QuantizationFormat? Quantization { get; init; }
    /// <summary>Device for the weights (CPU by default).</summary>
    public Device? Device { get; init; }
    /// <summary>Overrides the CLIP tower folder named by <c>mm_vision_tower</c> (original layout).</summary>
    public string? VisionTowerPath { get; init; }
    /// <summary>
    /// Read every weight page into memory during the load (true by default), so the load time includes reading the
    /// memory-mapped checkpoint and the first request does not pay for it in page faults.
    /// </summary>
    public bool Prefault { get; init; } = true;
}

/// <summary>
/// Loads a <see cref="LlavaModel"/> from a checkpoint folder of either layout. The checkpoint is checked against the
/// model's full list of parameter names and shapes before any weight is read, so a missing, unexpected or
/// mis-shaped tensor fails the load with one message naming every problem, and nothing half-loaded is returned.
/// </summary>
internal static class ModelLoader
{
    /// <summary>Opens the tensors of a folder. Replaceable so other checkpoint formats can plug in.</summary>
    internal static Func<string, ITensorReader> OpenFolder { get; set; } = CheckpointDiscovery.Open;

    public static LlavaModel Load(string modelPath, LoadOptions? options = null, IProgress<LoadProgress>? progress = null,
        CancellationToken cancellationToken = default)
    {
        options ??= new LoadOptions();
        var folder = ModelFolder.Open(modelPath, options.VisionTowerPath);
        return Load(folder, options, progress, cancellationToken);
    }

    public static LlavaModel Load(ModelFolder folder, LoadOptions options, IProgress<LoadProgress>? progress = null,
        CancellationToken cancellationToken = default)
    {
        var readers = OpenReaders(folder);
        try
        {
            return Load(folder.Config, readers, options, progress, cancellationToken);
        }
        finally
        {
            // Loaded tensors are views that keep their own reference to the mapped files.
            foreach (var (r, _) in readers) r.Dispose();
        }
    }

    /// <summary>Opens the checkpoint(s) of a model folder: one for llava-hf, the LLM's and the tower's for the original layout.</summary>
    internal static List<(ITensorReader Reader, CheckpointPart Part)> OpenReaders(ModelFolder folder)
    {
        var readers = new List<(ITensorReader Reader, CheckpointPart Part)>();
        try
        {
            if (folder.IsGguf)
            {
                // GGUF readers present our (llava-hf) names themselves.
                var text = folder.Config.Text;
                readers.Add((Gguf.GgufTensorReader.ForLanguageModel(Gguf.GgufFile.Open(folder.ModelPath), text.NumAttentionHeads, text.NumKeyValueHeads), CheckpointPart.LlavaHf));
                readers.Add((Gguf.GgufTensorReader.ForMmproj(Gguf.GgufFile.Open(folder.MmprojPath!), folder.Config.Vision.HiddenSize, folder.Config.Vision.NumHiddenLayers), CheckpointPart.LlavaHf));
            }
            else if (folder.Config.Layout == CheckpointLayout.LlavaHf)
                readers.Add((OpenFolder(folder.ModelPath), CheckpointPart.LlavaHf));
            else
            {
                readers.Add((OpenFolder(folder.ModelPath), CheckpointPart.OriginalLanguageModel));
                readers.Add((OpenFolder(folder.VisionTowerPath), CheckpointPart.VisionTower));
            }
            return readers;
        }
        catch
        {
            foreach (var (r, _) in readers) r.Dispose();
            throw;
        }
    }

    /// <summary>Builds the model from already-open readers (each tagged with how its keys map).</summary>
    public static LlavaModel Load(LlavaConfig config, IReadOnlyList<(ITensorReader Reader, CheckpointPart Part)> readers,
        LoadOptions options, IProgress<LoadProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        // The meta build only lists names and shapes; its dtype does not matter.
        var (sources, meta) = MatchCheckpoint(config, readers, options.DType ?? ScalarType.Float32);
        // 3. Materialise: every parameter straight from its checkpoint tensor.
        long totalBytes = meta.Requested.Sum(r =>
        {
            var info = sources[r.Name].Reader.GetInfo(sources[r.Name].Key);
            if (info.Format is { } f && r.Shape.Length == 2) return r.Shape[0] * QuantizationFormats.RowBytes(f, r.Shape[1]); // stored blocks
            return r.Shape.Aggregate(1L, (a, b) => a * b) * ElementSize(options.DType ?? info.DType);
        });
        var source = new CheckpointWeightSource(sources, options, meta.Requested.Count, totalBytes, progress, cancellationToken);
        LlavaModel model;
        try
        {
            using var noGrad = torch.no_grad();
            model = new LlavaModel(config, source);
        }
        catch
        {
            source.DisposeCreated();
            throw;
        }
        // A quantized load stored the rest of the tower in bfloat16 for bfloat16 GEMMs (see LoadQuantized).
        if (options.Quantization is not null)
            foreach (var (name, module) in model.named_modules())
                if (module is Linear l && !name.StartsWith("language_model.", StringComparison.Ordinal) && l.Weight.dtype == ScalarType.BFloat16)
                    l.GemmInBf16 = true;
        // A Q4_0 language model (the memory-first choice) on the CPU keeps its KV cache in bfloat16: half the memory per
        // position; the decode attention widens it in registers. Q8_0 keeps float32: with a bfloat16 cache the shipped
        // model's decode agreement with float32 fell from 99.0 to 98.6 % (docs/quantization.md). SHAREGPT4V_KV_CACHE=f32
        // or bf16 overrides the choice.
        var kvChoice = Environment.GetEnvironmentVariable("SHAREGPT4V_KV_CACHE");
        if ((options.Device is null || options.Device.type == DeviceType.CPU) && model.LanguageModel.DType == ScalarType.Float32
            && kvChoice != "f32"
            && (kvChoice == "bf16" || model.named_parameters().Any(p => p.parameter is QuantizedWeight { Format: QuantizationFormat.Q4_0 }
                    && p.name.StartsWith("language_model.", StringComparison.Ordinal))))
            model.KvCacheDType = ScalarType.BFloat16;
        if (options.Prefault)
        {
            try { WeightResidency.Touch(model.parameters(), cancellationToken); }
            catch { model.Dispose(); throw; }
        }
        return model;
    }

    /// <summary>
    /// Pairs every parameter of the model <paramref name="config"/> describes with its checkpoint tensor (our name →
    /// reader and key), checking names, shapes and dtypes without reading any weight. Throws one
    /// <see cref="CheckpointFormatException"/> listing every missing, unexpected or mis-shaped tensor.
    /// </summary>
    internal static (Dictionary<string, (ITensorReader Reader, string Key)> Sources, MetaWeightSource Meta) MatchCheckpoint(
        LlavaConfig config, IReadOnlyList<(ITensorReader Reader, CheckpointPart Part)> readers, ScalarType dtype)
    {
        // 1. Our name -> (reader, key) for every tensor the checkpoint offers.
        var sources = new Dictionary<string, (ITensorReader Reader, string Key)>(StringComparer.Ordinal);
        foreach (var (reader, part) in readers)
            foreach (var key in reader.Names)
            {
                var name = CheckpointKeyMap.Map(key, part, config);
                if (name is null) continue;
                if (config.Text.TieWordEmbeddings && name == "language_model.lm_head.weight") continue;
                if (!sources.TryAdd(name, (reader, key)))
                    throw new CheckpointFormatException($"Two checkpoint tensors map to parameter '{name}' ('{sources[name].Key}' in {sources[name].Reader.Source} and '{key}')", reader.Source, key);
            }

        // 2. The model's expected names and shapes, from a build on the meta device (no memory).
        var meta = new MetaWeightSource(dtype);
        using (var _ = new LlavaModel(config, meta)) { }
        var problems = new List<string>();
        var expected = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (name, shape) in meta.Requested)
        {
            expected.Add(name);
            if (!sources.TryGetValue(name, out var src))
            {
                problems.Add($"missing tensor '{name}' (expected shape [{string.Join(", ", shape)}])");
                continue;
            }
            var info = src.Reader.GetInfo(src.Key);
            if (!info.Shape.SequenceEqual(shape))
                problems.Add($"tensor '{src.Key}' in {info.FilePath} has shape [{string.Join(", ", info.Shape)}], expected [{string.Join(", ", shape)}]");
            else if (!IsFloating(info.DType) && info.Format is null)
                problems.Add($"tensor '{src.Key}' in {info.FilePath} has dtype {info.DType}, expected a floating-point type");
        }
        foreach (var (name, src) in sources)
            if (!expected.Contains(name))
                problems.Add($"unexpected tensor '{src.Key}' in {src.Reader.Source}");
        if (problems.Count > 0)
        {
            const int shown = 20;
            var text = string.Join("; ", problems.Take(shown)) + (problems.Count > shown ? $"; and {problems.Count - shown} more" : "");
            throw new CheckpointFormatException($"The checkpoint does not match the model ({problems.Count} problem(s)): {text}",
                string.Join(", ", readers.Select(r => r.Reader.Source)));
        }
        return (sources, meta);
    }

    private static bool IsFloating(ScalarType t) =>
        t is ScalarType.Float32 or ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Float64;

    internal static int ElementSize(ScalarType t) => t switch
    {
        ScalarType.Float64 or ScalarType.Int64 => 8,
        ScalarType.Float32 or ScalarType.Int32 => 4,
        ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Int16 => 2,
        _ => 1,
    };

    private sealed class CheckpointWeightSource : WeightSource
    {
        private readonly Dictionary<string, (ITensorReader Reader, string Key)> _sources;
        private readonly LoadOptions _options;
        private readonly int _total;
        private readonly long _totalBytes;
        private readonly IProgress<LoadProgress>? _progress;
        private readonly CancellationToken _ct;
        private readonly List<Tensor> _created = new();
        private long _bytes;
        private readonly Stopwatch _sinceReport = Stopwatch.StartNew();

        public CheckpointWeightSource(Dictionary<string, (ITensorReader, string)> sources, LoadOptions options, int total,
            long totalBytes, IProgress<LoadProgress>? progress, CancellationToken ct)
        {
            _sources = sources;
            _options = options;
            _total = total;
            _totalBytes = totalBytes;
            _progress = progress;
            _ct = ct;
            ComputeType = ComputePrecision.For(options.DType, options.Device);
        }

        public override Tensor Take(string name, long[] shape, bool largeMatrix)
        {
            _ct.ThrowIfCancellationRequested();
            var (reader, key) = _sources[name];
            // Large matrices keep the requested storage dtype (or the checkpoint's); small parameters are computed with.
            var dtype = largeMatrix ? _options.DType : ComputeType;
            Tensor t;
            var info = reader.GetInfo(key);
            if (largeMatrix && info.Format is not null && _options.Quantization is null && (_options.Device is null || _options.Device.type == DeviceType.CPU))
                t = ToDecodeLayout(name, reader.Load(key, null, _options.Device)); // stored blocks
            else if (largeMatrix && _options.Quantization is { } q && shape.Length == 2)
                t = LoadQuantized(reader, key, name, shape, q, info);
            else
                t = reader.Load(key, dtype, _options.Device);
            _created.Add(t);
            _bytes += t.NumberOfElements * t.ElementSize; // quantized: the blocks' bytes
            if (_progress is not null && (_sinceReport.ElapsedMilliseconds >= 100 || _created.Count == _total))
            {
                _progress.Report(new LoadProgress(_created.Count, _total, _bytes, _totalBytes, name));
                _sinceReport.Restart();
            }
            return t;
        }

        /// <summary>The per-tensor choice when quantizing at load (see <see cref="LoadOptions.Quantization"/>).</summary>
        private Tensor LoadQuantized(ITensorReader reader, string key, string name, long[] shape, QuantizationFormat requested, TensorInfo info)
        {
            bool language = name.StartsWith("language_model.", StringComparison.Ordinal);
            bool visionLinear = !language && IsVisionLinear(name);
            if (!(language || visionLinear) || !QuantizedWeight.Fits(shape[1]))
                // The rest of the vision tower in 16 bits: bfloat16 where the CPU multiplies it natively (its GEMMs then
                // run in bfloat16, QuantKernels.Bf16Gemm), float16 (more mantissa, widened for float32 GEMMs) elsewhere.
                return reader.Load(key, language ? _options.DType : QuantKernels.Bf16Gemm ? ScalarType.BFloat16 : ScalarType.Float16, _options.Device);
            // The LM head and the vision linears in Q8_0: the head as llama.cpp's recipes keep it; the tower's GEMMs
            // dequantize each panel (to bfloat16 where the CPU has it) as the language model's prefill does.
            var format = visionLinear || name.EndsWith("lm_head.weight", StringComparison.Ordinal) ? QuantizationFormat.Q8_0 : requested;
            // Blocks of another format (or a GGUF K-quant, held as Q8_0) are requantized from their exact values, so
            // a K-quant is rounded once, not twice.
            var stored = reader.Load(key, info.Format is { } held && held != format ? ScalarType.Float32 : null, _options.Device);
            if (stored is QuantizedWeight sq && sq.Format == format) return ToDecodeLayout(name, sq);
            bool interleave = ForDecodeKernels(name, shape[0]);
            using (stored)
            {
                if (stored is QuantizedWeight other)
                {
                    using var f = other.Dequantize();
                    return QuantizedWeight.Quantize(f, format, interleave);
                }
                var quantized = QuantizedWeight.Quantize(stored, format, interleave);
                // The source was only read: drop its mapped pages from this process (they stay in the page cache), so
                // a quantizing load does not hold the float checkpoint resident next to the blocks.
                if (stored.device_type == DeviceType.CPU && stored.is_contiguous()) MappedMemory.Release(stored);
                // The float32 panels Quantize widened are freed between long-lived block allocations; without a trim
                // glibc keeps those holes resident (1.4 GiB by the end of a 7B load).
                ShareGPT4V.Modeling.CHeap.Trim();
                return quantized;
            }
        }

        /// <summary>The weights of the vision tower's attention and MLP layers and of the projector's linear layers.</summary>
        private static bool IsVisionLinear(string name) =>
            name.EndsWith(".weight", StringComparison.Ordinal)
            && (name.StartsWith("vision_tower.", StringComparison.Ordinal) && name.Contains(".encoder.layers.", StringComparison.Ordinal)
                    && (name.Contains(".self_attn.", StringComparison.Ordinal) || name.Contains(".mlp.", StringComparison.Ordinal))
                || name.StartsWith("multi_modal_projector.linear_", StringComparison.Ordinal));

        /// <summary>
        /// The language model's linear weights take the decode kernels' interleaved layout (<see cref="InterleavedBlocks"/>);
        /// the embedding table stays in rows, which a lookup reads one by one.
        /// </summary>
        private bool ForDecodeKernels(string name, long rows) =>
            name.StartsWith("language_model.", StringComparison.Ordinal) && !name.EndsWith("embed_tokens.weight", StringComparison.Ordinal)
            && QuantizedWeight.CanInterleave(rows) && MatVec.IsSupported && InterleavedBlocks.Enabled;

        /// <summary>Stored blocks (a memory-mapped file's) copied into the interleaved layout when they serve the decode kernels.</summary>
        private Tensor ToDecodeLayout(string name, Tensor t)
        {
            if (t is not QuantizedWeight q || q.Interleaved || !ForDecodeKernels(name, q.Rows)) return t;
            var interleaved = q.ToInterleaved();
            // The mapped blocks were only read: drop their pages from this process, as a quantizing load does.
            MappedMemory.Release(q);
            q.Dispose();
            return interleaved;
        }

        public void DisposeCreated()
        {
            foreach (var t in _created) t.Dispose();
            _created.Clear();
        }
    }
}
