using System.Text.Json;
using ShareGPT4V.Checkpoints;
using ShareGPT4V.Tokenization;
using ShareGPT4V.Training;
using TorchSharp;

namespace ShareGPT4V.Tests.Training;

/// <summary>The training goldens of one stage (the oracle's training set, copied under Fixtures/training).</summary>
internal sealed class TrainingGolden
{
    public string Stage { get; }
    public JsonElement Batch { get; }
    public JsonElement Golden { get; }
    public string TensorsPath { get; }
    public static string ModelDir => Fixtures.Path("oracle/hf_llama2vocab");

    public TrainingGolden(string stage)
    {
        Stage = stage;
        Batch = Read($"training/oracle/{stage}_batch.json");
        Golden = Read($"training/oracle/{stage}_golden.json");
        TensorsPath = Fixtures.Path($"training/oracle/{stage}_tensors.safetensors");
    }

    private static JsonElement Read(string rel) => JsonDocument.Parse(File.ReadAllBytes(Fixtures.Path(rel))).RootElement.Clone();

    public TrainingTemplate Template => Stage == "finetune" ? TrainingTemplate.VicunaV1 : TrainingTemplate.Plain;

    public IReadOnlyList<JsonElement> Examples => Batch.GetProperty("examples").EnumerateArray().ToList();

    public TrainingRecord Record(int i) => TrainingDataFile.Parse(Examples[i].GetProperty("data"), i);

    /// <summary>The examples' records as a LLaVA-format JSON array (what a user's data file holds).</summary>
    public string DataJson() => "[" + string.Join(",", Examples.Select(e => e.GetProperty("data").GetRawText())) + "]";

    public static long[] Longs(JsonElement e) => e.EnumerateArray().Select(x => x.GetInt64()).ToArray();

    public static LlavaTokenizer Tokenizer() => LlavaTokenizer.Load(ModelDir);

    public Dictionary<string, float[]> Tensors()
    {
        using var f = SafeTensorsFile.Open(TensorsPath);
        var d = new Dictionary<string, float[]>();
        foreach (var n in f.Names)
        {
            using var t = f.Load(n, torch.ScalarType.Float32);
            d[n] = t.data<float>().ToArray();
        }
        return d;
    }
}
