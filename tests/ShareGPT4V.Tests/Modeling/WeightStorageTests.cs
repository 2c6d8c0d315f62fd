using ShareGPT4V.Checkpoints;
using ShareGPT4V.Generation;
using ShareGPT4V.Language;
using ShareGPT4V.Tests.Oracle;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace ShareGPT4V.Tests.Modeling;

/// <summary>
/// Half-precision weight storage with float32 compute on CPU: the large matrices stay bfloat16 / float16 in memory,
/// everything else and every activation is float32, and the model computes exactly what a float32 model whose large
/// matrices were rounded to that dtype computes.
/// </summary>
public sealed class WeightStorageTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "sharegpt4v-storage-test-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_dir)) Directory.Delete(_dir, recursive: true);
    }

    /// <summary>max |a - b| ≤ tol (not recorded with the float32 oracle differences).</summary>
    private static void Near(Tensor expected, Tensor actual, double tol, string what)
    {
        Assert.Equal(expected.shape, actual.shape);
        using var diff = (expected.to(ScalarType.Float64) - actual.to(ScalarType.Float64)).abs().max();
        double d = diff.item<double>();
        Assert.True(d <= tol, $"{what}: max abs diff {d:E3} exceeds {tol:E1}");
    }

    private static bool IsLargeMatrix(string name) => name.EndsWith("_proj.weight") || name.EndsWith("fc1.weight")
        || name.EndsWith("fc2.weight") || name.EndsWith("lm_head.weight") || name.Contains("linear_") && name.EndsWith(".weight")
        || name.EndsWith("embed_tokens.weight") || name.EndsWith("position_embedding.weight");

    [Theory]
    [InlineData(ScalarType.BFloat16)]
    [InlineData(ScalarType.Float16)]
    public void HalfPrecisionStorageComputesInFloat32(ScalarType storage)
    {
        var c = GoldenCase.Get("hf_llama2vocab");
        using var half = ModelLoader.Load(c.ModelPath, new LoadOptions { DType = storage });
        using var rounded = ModelLoader.Load(c.ModelPath);
        Assert.Equal(ScalarType.Float32, half.LanguageModel.DType);
        using (torch.no_grad())
        {
            var halfParams = half.named_parameters().ToDictionary(p => p.name, p => p.parameter);
            foreach (var (name, p) in rounded.named_parameters())
            {
                var expected = IsLargeMatrix(name) ? storage : ScalarType.Float32;
                Assert.True(halfParams[name].dtype == expected, $"{name} is {halfParams[name].dtype}, expected {expected}");
                if (expected != ScalarType.Float32) p.copy_(p.to(storage).to(ScalarType.Float32));
            }
        }

        // Vision, prefill and greedy decoding (the decode kernel widens the weights itself) agree with the rounded float32 model.
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        var prompt = c.Prompt("main");
        var ids = GoldenCase.Ids(prompt.GetProperty("input_ids"));
        var pixels = c.Pixels(prompt.GetProperty("image").GetString()!, prompt.GetProperty("pixel_variant").GetString()!);
        var imagesHalf = half.EncodeImages(pixels);
        var imagesRounded = rounded.EncodeImages(pixels);
        Assert.Equal(ScalarType.Float32, imagesHalf.dtype);
        Near(imagesRounded, imagesHalf, 1e-5, "image embeddings");
        IReadOnlyList<int> Generate(LlavaModel m)
        {
            using var engine = OracleModelTests.EngineFor(c, m, maxBatch: 1);
            Assert.Equal(ScalarType.Float32, engine.Cache.DType);
            return engine.Run(OracleModelTests.EngineRequests(m, new[] { ids }, new[] { pixels }, 12))[0].TokenIds;
        }
        Assert.Equal(Generate(rounded), Generate(half));

        // And the answer stays near the float32 goldens (bfloat16 keeps 8 mantissa bits, float16 11).
        using var inputs = half.BuildInputs(new[] { ids }, imagesHalf);
        var logits = half.LanguageModel.Forward(inputs.Embeddings, inputs.PositionIds, null, null, 0, LogitsMode.All);
        var positions = GoldenCase.Ids(prompt.GetProperty("logits_positions"));
        var goldenRows = c.Tensor("logits.safetensors", "main_rows");
        double tol = storage == ScalarType.BFloat16 ? 5e-2 : 1e-2;
        for (int i = 0; i < positions.Length; i++)
            Near(goldenRows[i], logits[0, positions[i]], tol, $"logits row {positions[i]}");
    }

    [Fact]
    public void NullDTypeKeepsTheCheckpointsStorage()
    {
        var c = GoldenCase.Get("hf_llama2vocab");
        Directory.CreateDirectory(_dir);
        foreach (var f in Directory.GetFiles(c.ModelPath, "*.json").Concat(Directory.GetFiles(c.ModelPath, "tokenizer*")).Distinct())
            File.Copy(f, Path.Combine(_dir, Path.GetFileName(f)));
        using (var source = SafeTensorsFile.Open(Path.Combine(c.ModelPath, "model.safetensors")))
        {
            var tensors = source.Names.Select(n => new KeyValuePair<string, Tensor>(n, source.Load(n, ScalarType.BFloat16))).ToList();
            SafeTensorsWriter.Write(Path.Combine(_dir, "model.safetensors"), tensors);
            foreach (var (_, t) in tensors) t.Dispose();
        }

        using var model = ModelLoader.Load(_dir, new LoadOptions { DType = null });
        foreach (var (name, p) in model.named_parameters())
            Assert.True(p.dtype == (IsLargeMatrix(name) ? ScalarType.BFloat16 : ScalarType.Float32), $"{name} is {p.dtype}");
        Assert.Equal(ScalarType.Float32, model.LanguageModel.DType);

        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        var text = GoldenCase.Ids(c.Prompt("text").GetProperty("input_ids"));
        using var inputs = model.BuildInputs(new[] { text }, null);
        var logits = model.LanguageModel.Forward(inputs.Embeddings, inputs.PositionIds, null, null, 0, LogitsMode.Last);
        Near(c.Tensor("logits.safetensors", "text_last"), logits[0, 0], 5e-2, "text logits from a bfloat16 checkpoint");
    }
}
