using System.Diagnostics;
using ShareGPT4V.Checkpoints;
using ShareGPT4V.Configuration;
using ShareGPT4V.Devices;
using ShareGPT4V.Language;
using ShareGPT4V.Modeling;
using ShareGPT4V.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.Bench;

/// <summary>Options of <c>sharegpt4v-bench quality</c>.</summary>
internal sealed record QualityOptions
{
    public required string Model { get; init; }
    /// <summary>q8_0, q4_0, bf16 or fp16: the storage compared with float32.</summary>
    public string DType { get; init; } = "q8_0";
    public int Tokens { get; init; } = 512;
    public int Threads { get; init; } = Environment.ProcessorCount;
    /// <summary>One token per forward through a KV cache (the decode kernels) instead of one pass over the whole text.</summary>
    public bool Decode { get; init; }

    public static VerbSpec Verb(Func<CommandLine, CancellationToken, Task<int>>? run = null) => new("quality", "top-1 agreement and mean KL against float32 on the same weights, teacher-forced")
    {
        Options =
        [
            new("model", "DIR", "model folder (required)"),
            new("dtype", "NAME", "q8_0 (default), q4_0, bf16 or fp16: the storage compared with float32", Choices: new[] { "q8_0", "q4_0", "bf16", "fp16" }),
            new("tokens", "N", "length of the teacher-forced text (default 512)"),
            new("threads", "N", "CPU threads (default: all cores)"),
            OptionSpec.Flag("decode", "teacher-force one token per step through the KV cache, as generation runs (the decode kernels)"),
        ],
        Run = run,
    };

    public static QualityOptions From(CommandLine a)
    {
        var o = new QualityOptions
        {
            Model = a.Required("model"),
            DType = a.Value("dtype", "q8_0"),
            Tokens = a.Int("tokens", 512, min: 2, max: 1 << 16),
            Threads = a.Int("threads", Environment.ProcessorCount, min: 1, max: 1024),
            Decode = a.Flag("decode"),
        };
        try { if (QuantizationFormats.TryParse(o.DType) is null) BenchOptions.ParseDType(o.DType, "--dtype"); }
        catch (ShareGPT4VException e) { throw new UsageException(e.Message); }
        return o;
    }
}

/// <summary>
/// How close a narrower storage stays to float32 on the same weights: one teacher-forced pass over a fixed
/// <see cref="QualityOptions.Tokens"/>-token text with each, then the share of positions whose top-1 token agrees and
/// the mean KL divergence KL(p_fp32 ‖ p_candidate) of the next-token distributions. The float32 model is released
/// before the candidate loads, so only one model is in memory at a time.
/// </summary>
internal static class QualityRunner
{
    private const string Text =
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, " +
        "and polite answers to the human's questions. USER: Describe this image in detail. ASSISTANT: The image shows a busy " +
        "street market at dusk, with stalls of fruit, spices and woven baskets under strings of warm lights. People walk " +
        "between the stalls carrying bags, a child points at a pile of oranges, and a vendor weighs tomatoes on an old scale. ";

    public sealed record Result(string Model, string DType, int Tokens, double Top1Agreement, double MeanKl, double MaxKl,
        double Fp32Seconds, double CandidateSeconds, string Storage);

    public static Result Run(QualityOptions o, TextWriter log)
    {
        torch.set_num_threads(o.Threads);
        var folder = ModelFolder.Open(o.Model);
        var ids = new List<long>();
        try
        {
            var tok = LlavaTokenizer.Load(folder.ModelPath);
            while (ids.Count < o.Tokens) ids.AddRange(tok.Encode(Text, addBos: ids.Count == 0).Select(x => (long)x));
        }
        catch (ModelConfigurationException)
        {
            // A folder without a tokenizer (the tiny oracle models): seeded ids over the whole vocabulary.
            var rng = new Random(20261207);
            while (ids.Count < o.Tokens) ids.Add(rng.Next(folder.Config.Text.VocabSize));
        }
        using var input = torch.tensor(ids.Take(o.Tokens).ToArray(), new long[] { 1, o.Tokens });

        var quant = QuantizationFormats.TryParse(o.DType);
        var sw = Stopwatch.StartNew();
        using var reference = LogProbs(folder, new LoadOptions { DType = ScalarType.Float32 }, input, o.Decode, out _);
        double fp32Seconds = sw.Elapsed.TotalSeconds;
        log.WriteLine($"float32 pass over {o.Tokens} tokens: {fp32Seconds:F1} s");
        sw.Restart();
        var options = quant is null ? new LoadOptions { DType = BenchOptions.ParseDType(o.DType, "--dtype") } : new LoadOptions { DType = ScalarType.Float32, Quantization = quant };
        using var candidate = LogProbs(folder, options, input, o.Decode, out var storage);
        double candidateSeconds = sw.Elapsed.TotalSeconds;
        log.WriteLine($"{o.DType} pass: {candidateSeconds:F1} s; storage: {storage}");
        var (top1, meanKl, maxKl) = Compare(reference, candidate);
        return new Result(folder.ModelPath, o.DType, o.Tokens, top1, meanKl, maxKl, fp32Seconds, candidateSeconds, storage);
    }

    /// <summary>Log-probabilities [T, V] of a teacher-forced pass (the model is loaded and released here).</summary>
    private static Tensor LogProbs(ModelFolder folder, LoadOptions options, Tensor ids, bool decode, out string storage)
    {
        using var model = ModelLoader.Load(folder, options);
        storage = WeightStorage.Describe(model);
        using var noGrad = torch.no_grad();
        using var scope = NewDisposeScope();
        if (!decode) return model.LanguageModel.forward(ids)[0].log_softmax(-1).MoveToOuterDisposeScope();
        // Step by step, as generation runs: one new token per forward, earlier ones read from the KV cache.
        long t = ids.shape[1];
        using var cache = model.CreateCache(1, (int)t);
        var rows = new List<Tensor>();
        for (long i = 0; i < t; i++)
        {
            using var step = NewDisposeScope();
            var emb = model.LanguageModel.Embed(ids.narrow(1, i, 1));
            var pos = torch.tensor(new[] { i }, new long[] { 1, 1 });
            var logits = model.LanguageModel.Forward(emb, pos, null, cache, i, LogitsMode.Last);
            rows.Add(logits[0, 0].log_softmax(-1).MoveToOuterDisposeScope());
        }
        return torch.stack(rows).MoveToOuterDisposeScope();
    }

    /// <summary>(top-1 agreement, mean KL, largest KL) of two [T, V] log-probability tensors, the first the reference.</summary>
    public static (double Top1, double MeanKl, double MaxKl) Compare(Tensor reference, Tensor candidate)
    {
        using var scope = NewDisposeScope();
        var agree = reference.argmax(-1).eq(candidate.argmax(-1)).to(ScalarType.Float64).mean().item<double>();
        var kl = (reference.exp() * (reference - candidate)).sum(-1).to(ScalarType.Float64);
        return (agree, kl.mean().item<double>(), kl.max().item<double>());
    }
}
