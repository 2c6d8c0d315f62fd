using System.Text.Json;
using ShareGPT4V.Checkpoints;
using ShareGPT4V.Generation;
using ShareGPT4V.Generation.Processing;
using TorchSharp;

namespace ShareGPT4V.Tests.Decoding;

/// <summary>
/// The transformers 4.45.2 logits-processor goldens (Fixtures/generation): rows, histories, cases, with the sparse
/// rows of the fixture's safetensors rebuilt dense (see that folder's README).
/// </summary>
internal sealed class ProcessorGoldens
{
    private static readonly Lazy<ProcessorGoldens> Shared = new(() => new ProcessorGoldens());
    public static ProcessorGoldens Instance => Shared.Value;

    private readonly Dictionary<string, float[]> _tensors = new();
    public JsonElement Index { get; }

    private ProcessorGoldens()
    {
        Index = JsonDocument.Parse(File.ReadAllBytes(Fixtures.Path("generation/logits_processors.json"))).RootElement.Clone();
        using var f = SafeTensorsFile.Open(Fixtures.Path("generation/logits_processors.safetensors"));
        foreach (var name in f.Names)
        {
            using var t = f.Load(name);
            if (t.dtype == torch.ScalarType.Float32) _tensors[name] = t.data<float>().ToArray();
        }
        foreach (var name in f.Names.Where(n => n.EndsWith(".ids", StringComparison.Ordinal)).ToList())
        {
            var stem = name[..^".ids".Length];          // K.over_<base>
            int at = stem.LastIndexOf(".over_", StringComparison.Ordinal);
            string key = stem[..at], @base = stem[(at + ".over_".Length)..];
            using var idsT = f.Load(name);
            var ids = idsT.data<long>().ToArray();
            var values = _tensors[stem + ".values"];
            var c = Cases.First(x => x.GetProperty("outputs").EnumerateObject().Any(o => o.Value.GetString() == key));
            var input = Row(c.GetProperty("row").GetString()!);
            float[] dense = @base switch
            {
                "input" => (float[])input.Clone(),
                "neginf" => Enumerable.Repeat(float.NegativeInfinity, input.Length).ToArray(),
                "zero" => new float[input.Length],
                _ => throw new InvalidDataException($"unknown base {@base} in {name}"),
            };
            for (int i = 0; i < ids.Length; i++) dense[ids[i]] = values[i];
            _tensors[key] = dense;
        }
    }

    public IEnumerable<JsonElement> Cases => Index.GetProperty("cases").EnumerateArray();
    public JsonElement Case(string id) => Cases.First(c => c.GetProperty("id").GetString() == id);
    public float[] Tensor(string key) => _tensors.TryGetValue(key, out var t) ? t : throw new KeyNotFoundException(key);
    public float[] Row(string row) => Tensor(Index.GetProperty("rows").GetProperty(row).GetProperty("key").GetString()!);
    public int[] History(string key) => Index.GetProperty("histories").GetProperty(key).GetProperty("ids").EnumerateArray().Select(x => x.GetInt32()).ToArray();

    /// <summary>The processors a golden lists (class and arguments), built as our types.</summary>
    public static LogitsProcessor Build(JsonElement p)
    {
        var a = p.GetProperty("args");
        int Keep() => a.TryGetProperty("min_tokens_to_keep", out var m) ? m.GetInt32() : 1;
        return p.GetProperty("class").GetString() switch
        {
            "RepetitionPenaltyLogitsProcessor" => new RepetitionPenalty(a.GetProperty("penalty").GetDouble()),
            "NoRepeatNGramLogitsProcessor" => new NoRepeatNGram(a.GetProperty("ngram_size").GetInt32()),
            "TemperatureLogitsWarper" => new Temperature(a.GetProperty("temperature").GetDouble()),
            "TopKLogitsWarper" => new TopK(a.GetProperty("top_k").GetInt32(), Keep()),
            "TopPLogitsWarper" => new TopP(a.GetProperty("top_p").GetDouble(), Keep()),
            "MinPLogitsWarper" => new MinP(a.GetProperty("min_p").GetDouble(), Keep()),
            var other => throw new NotSupportedException(other),
        };
    }

    /// <summary>
    /// Our options for a <c>generate()</c> call's keyword arguments, with transformers' defaults made explicit where
    /// ours differ (top_k: 50 there, off here; temperature: 1 when sampling).
    /// </summary>
    public static GenerationOptions OptionsFor(JsonElement kwargs)
    {
        double? D(string k) => kwargs.TryGetProperty(k, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetDouble() : null;
        bool Given(string k) => kwargs.TryGetProperty(k, out _);
        bool sample = kwargs.GetProperty("do_sample").GetBoolean();
        return new GenerationOptions
        {
            Temperature = sample ? D("temperature") ?? 1.0 : 0,
            TopK = Given("top_k") ? (int)(D("top_k") ?? 0) : 50,
            TopP = D("top_p") ?? 1.0,
            MinP = D("min_p"),
            RepetitionPenalty = D("repetition_penalty") ?? 1.0,
            NoRepeatNGramSize = (int)(D("no_repeat_ngram_size") ?? 0),
            NumBeams = (int)(D("num_beams") ?? 1),
            LengthPenalty = D("length_penalty") ?? 1.0,
            EarlyStopping = kwargs.TryGetProperty("early_stopping", out var e) && e.ValueKind == JsonValueKind.True,
        };
    }
}
