using ShareGPT4V.Checkpoints;
using ShareGPT4V.Configuration;
using ShareGPT4V.Generation;
using ShareGPT4V.Modeling;
using ShareGPT4V.Tests.Checkpoints.Gguf;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace ShareGPT4V.Tests.Checkpoints;

/// <summary>Quantizing at load and saving quantized safetensors, checked against llama.cpp's own Q4_0 file of the same weights.</summary>
public sealed class QuantizedCheckpointTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("sgpt4v-quant-").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static string Source => Fixtures.Path("oracle/hf_llama2vocab");

    private static Dictionary<string, Tensor> Params(LlavaModel m) => m.named_parameters().ToDictionary(x => x.name, x => (Tensor)x.parameter);

    private static unsafe byte[] RowLayout(QuantizedWeight w)
    {
        var bytes = new byte[w.Rows * w.RowBytes];
        fixed (byte* p = bytes) w.CopyRows(0, w.Rows, p);
        return bytes;
    }

    [Fact]
    public void QuantizingAtLoadGivesLlamaCppsBlocksWithItsPerTensorChoice()
    {
        using var q = ModelLoader.Load(Source, new LoadOptions { Quantization = QuantizationFormat.Q4_0, Prefault = false });
        using var gguf = ModelLoader.Load(ModelFolder.OpenGguf(GgufFixtures.File("llm-q4_0.gguf"), GgufFixtures.File("mmproj-f16.gguf")),
            new LoadOptions { DType = null, Prefault = false });
        var ours = Params(q);
        int compared = 0;
        foreach (var (name, theirs) in Params(gguf))
        {
            if (!name.StartsWith("language_model.", StringComparison.Ordinal)) continue;
            var mine = ours[name];
            Assert.Equal(WeightStorage.Of(theirs), WeightStorage.Of(mine)); // q4_0 layers and embeddings, q8_0 head, f32 norms
            if (theirs is QuantizedWeight t)
            {
                var m = (QuantizedWeight)mine;
                Assert.Equal(RowLayout(t), RowLayout(m));
                // Both loads give the decode kernels their interleaved layout, except the embedding table (read by rows).
                Assert.Equal(!name.EndsWith("embed_tokens.weight", StringComparison.Ordinal), m.Interleaved);
                Assert.Equal(m.Interleaved, t.Interleaved);
                compared++;
            }
        }
        Assert.Equal(9, compared);
        // A Q4_0 model keeps a bfloat16 KV cache (as llama.cpp keeps a 16-bit one); Q8_0 and float32 ones keep float32.
        using (var cache = q.CreateCache(1, 8)) Assert.Equal(ScalarType.BFloat16, cache.DType);
        using (var q8 = ModelLoader.Load(Source, new LoadOptions { Quantization = QuantizationFormat.Q8_0, Prefault = false }))
        using (var cache = q8.CreateCache(1, 8)) Assert.Equal(ScalarType.Float32, cache.DType);
        using (var f32 = ModelLoader.Load(Source, new LoadOptions { Prefault = false }))
        using (var cache = f32.CreateCache(1, 8)) Assert.Equal(ScalarType.Float32, cache.DType);
        // The tower's and projector's linear layers in Q8_0 (row layout: only GEMMs read them); its
        // position table in 16 bits: bfloat16 (for bfloat16 GEMMs) on a CPU with bf16 instructions, float16 elsewhere.
        foreach (var linear in new[] { "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight", "vision_tower.vision_model.encoder.layers.1.self_attn.k_proj.weight", "multi_modal_projector.linear_2.weight" })
            Assert.Equal((QuantizationFormat.Q8_0, false), (Assert.IsType<QuantizedWeight>(ours[linear]).Format, ((QuantizedWeight)ours[linear]).Interleaved));
        var half = QuantKernels.Bf16Gemm ? ScalarType.BFloat16 : ScalarType.Float16;
        Assert.Equal(half, ours["vision_tower.vision_model.embeddings.position_embedding.weight"].dtype);
        Assert.Contains("vision + projector: ", WeightStorage.Describe(q));
        Assert.Matches("vision \\+ projector: [^;]*q8_0", WeightStorage.Describe(q));
        Assert.Contains("embed_tokens q4_0, lm_head q8_0", WeightStorage.Describe(q));
    }

    [Fact]
    public void TheQuantizedLoadsQ8_0TowerStaysCloseToTheFloat32TowerWithAndWithoutBf16Gemms()
    {
        using var golden = SafeTensorsFile.Open(Fixtures.Path("oracle/hf_llama2vocab/pixel_values.safetensors"));
        using var pixels = golden.Load(golden.Names.First());
        using var one = pixels.dim() == 3 ? pixels.unsqueeze(0) : pixels.narrow(0, 0, 1);
        Tensor Embed(LoadOptions options, bool bf16)
        {
            bool saved = QuantKernels.Bf16Gemm;
            QuantKernels.Bf16Gemm = bf16; // read by the loader and by the layers, on this thread
            try
            {
                using var m = ModelLoader.Load(Source, options);
                Assert.False(m.named_modules().Any(x => x.module is ShareGPT4V.Modeling.Linear { GemmInBf16: true } l && l.Weight is QuantizedWeight),
                    "quantized layers choose their GEMM precision themselves");
                using var noGrad = torch.no_grad();
                return m.EncodeImages(one);
            }
            finally { QuantKernels.Bf16Gemm = saved; }
        }
        using var reference = Embed(new LoadOptions { Prefault = false }, bf16: false);
        var q8 = new LoadOptions { Quantization = QuantizationFormat.Q8_0, Prefault = false };
        using var wide = Embed(q8, bf16: false);
        using var narrow = Embed(q8, bf16: true);
        foreach (var (what, e) in new[] { ("float32 GEMMs", wide), ("bfloat16 GEMMs", narrow) })
        {
            double err = (e - reference).abs().max().item<float>() / reference.abs().max().item<float>();
            Assert.True(err > 0 && err < 3e-2, $"Q8_0 tower, {what}: largest difference {err:E2} of the largest |value|");
        }
    }

    [Fact]
    public async Task AQuantizedSafetensorsFolderLoadsAsBlocksAndAnswersAsLlamaCppsFileDoes()
    {
        var outDir = Path.Combine(_dir, "q4");
        ModelConverter.Convert(Source, outDir, new ModelConversionOptions { Quantization = QuantizationFormat.Q4_0, Layout = TargetLayout.LlavaHf });
        using (var st = SafeTensorsFile.Open(Path.Combine(outDir, "model.safetensors")))
        {
            Assert.Equal("q4_0", st.Metadata[SafeTensorsFile.QuantizationKeyPrefix + "language_model.model.layers.0.mlp.up_proj.weight"]);
            Assert.Equal("q8_0", st.Metadata[SafeTensorsFile.QuantizationKeyPrefix + "language_model.lm_head.weight"]);
            var info = st.GetInfo("language_model.model.layers.0.mlp.up_proj.weight");
            Assert.Equal((QuantizationFormat?)QuantizationFormat.Q4_0, info.Format);
            Assert.Equal(new long[] { 64, 32 }, info.Shape);
            using var dequantized = st.Load("language_model.model.layers.0.mlp.up_proj.weight", ScalarType.Float32);
            Assert.Equal(new long[] { 64, 32 }, dequantized.shape);
        }
        var greedy = new GenerationOptions { MaxNewTokens = 12, StopAtEndOfSequence = false };
        using var fromFolder = MultimodalPipeline.Load(new PipelineOptions { ModelPath = outDir, Template = "raw" });
        using var fromGguf = MultimodalPipeline.Load(new PipelineOptions
        {
            ModelPath = GgufFixtures.File("llm-q4_0.gguf"), MmprojPath = GgufFixtures.File("mmproj-f32.gguf"), Template = "raw",
        });
        Assert.IsType<QuantizedWeight>(Params(fromFolder.Model)["language_model.model.layers.0.self_attn.q_proj.weight"]);
        foreach (var (name, text, image, _, _) in GgufFixtures.Prompts().Where(p => p.Name is "main" or "text"))
        {
            var images = image is null ? null : new[] { ImageInput.FromFile(GgufFixtures.Image(image)) };
            var a = await fromFolder.GenerateAsync(text, images, greedy);
            var b = await fromGguf.GenerateAsync(text, images, greedy);
            Assert.True(a.TokenIds.SequenceEqual(b.TokenIds), name);
        }
    }

    [Fact]
    public void BadQuantizationMetadataIsRefusedNamingTheTensor()
    {
        void Write(string file, Dictionary<string, string> meta, Tensor t) =>
            SafeTensorsWriter.Write(Path.Combine(_dir, file), new Dictionary<string, Tensor> { ["w"] = t }, meta);
        using var bytes = torch.zeros(new long[] { 2, 34 }, ScalarType.Byte);
        using var floats = torch.zeros(2, 32);
        Write("a.safetensors", new() { [SafeTensorsFile.QuantizationKeyPrefix + "w"] = "q3_x" }, bytes);
        Write("b.safetensors", new() { [SafeTensorsFile.QuantizationKeyPrefix + "v"] = "q8_0" }, bytes);
        Write("c.safetensors", new() { [SafeTensorsFile.QuantizationKeyPrefix + "w"] = "q8_0" }, floats);
        Write("d.safetensors", new() { [SafeTensorsFile.QuantizationKeyPrefix + "w"] = "q4_0" }, bytes); // 34 is not a multiple of 18
        foreach (var (file, fragment) in new[] { ("a", "unknown format"), ("b", "does not have"), ("c", "must be U8"), ("d", "must be U8") })
        {
            var e = Assert.Throws<CheckpointFormatException>(() => SafeTensorsFile.Open(Path.Combine(_dir, file + ".safetensors")).Dispose());
            Assert.Contains(fragment, e.Message);
        }
    }
}
