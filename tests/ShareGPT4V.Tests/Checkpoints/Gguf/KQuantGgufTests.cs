using System.Buffers.Binary;
using System.Text;
using ShareGPT4V.Checkpoints;
using ShareGPT4V.Checkpoints.Gguf;
using ShareGPT4V.Configuration;
using ShareGPT4V.Generation;
using ShareGPT4V.Language;
using ShareGPT4V.Modeling;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace ShareGPT4V.Tests.Checkpoints.Gguf;

/// <summary>
/// llama.cpp K-quant GGUF files (Fixtures/gguf-kquant, written by llama.cpp's gguf-py; README there): Q4_K / Q6_K
/// blocks against gguf-py's dequantization, a Q4_K_M-mixed LLM against a float64 PyTorch forward of the same blocks,
/// and hostile or unsupported K-quant input.
/// </summary>
public sealed class KQuantGgufTests : IDisposable
{
    private static string File(string name) => Fixtures.Path(System.IO.Path.Combine("gguf-kquant", name));
    private static readonly string Llm = File("llm-q4_k_m.gguf");
    private static readonly string Mmproj = File("mmproj.gguf");

    private readonly string _dir = Directory.CreateTempSubdirectory("sgpt4v-kquant-").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static byte[] Bytes(GgufFile f, string name)
    {
        using var t = f.Bytes(f.GetTensor(name));
        return t.bytes.ToArray();
    }

    private static float[] Floats(GgufFile f, string name)
    {
        using var t = f.Plain(f.GetTensor(name));
        return t.data<float>().ToArray();
    }

    public static IEnumerable<object[]> Kinds() => new[] { new object[] { "q4_k" }, new object[] { "q6_k" }, new object[] { "q5_0" } };

    private static string Key(GgufBlockType k) => k.ToString().ToLowerInvariant();
    private static GgufBlockType Kind(string key) => Enum.Parse<GgufBlockType>(key, ignoreCase: true);

    [Theory, MemberData(nameof(Kinds))]
    public void BlocksDequantizeToGgufPyValuesBitForBit(string key)
    {
        var kind = Kind(key);
        using var f = GgufFile.Open(File("kquant-blocks.gguf"));
        var info = f.GetTensor(Key(kind));
        Assert.Equal(Enum.Parse<GgmlType>(kind.ToString()), info.Type);
        var blocks = Bytes(f, Key(kind));
        var expected = Floats(f, Key(kind) + ".f32");
        long rows = info.Ne[1], columns = info.Ne[0];
        long rowBytes = KQuants.RowBytes(kind, columns);
        Assert.Equal(rows * rowBytes, blocks.Length);
        var got = new float[rows * columns];
        for (long r = 0; r < rows; r++)
            KQuants.DequantizeRow(blocks.AsSpan((int)(r * rowBytes), (int)rowBytes), got.AsSpan((int)(r * columns), (int)columns), kind);
        for (int i = 0; i < got.Length; i++)
            Assert.True(BitConverter.SingleToInt32Bits(expected[i]) == BitConverter.SingleToInt32Bits(got[i]),
                $"{kind} value {i} (block {i / KQuants.BlockWeights(kind)}): expected {expected[i]:R}, got {got[i]:R}");
    }

    [Fact]
    public void Q5_0IsHeldAsQ8_0WithEveryValueKept()
    {
        // Q4_K_M's fallback for rows that are not whole super-blocks: same d, q − 16 as the int8, through the reader.
        using var reader = GgufTensorReader.ForLanguageModel(GgufFile.Open(File("kquant-blocks.gguf")), 4, 2);
        Assert.Equal(QuantizationFormat.Q8_0, reader.GetInfo("q5_0").Format);
        using var held = Assert.IsType<QuantizedWeight>(reader.Load("q5_0"));
        Assert.Equal(QuantizationFormat.Q8_0, held.Format);
        using var expected = reader.Load("q5_0.f32");
        using var values = held.Dequantize();
        Assert.True(TensorAssert.BitEqual(expected, values), "Q5_0 -> Q8_0 changed a value");
        using var exact = reader.Load("q5_0", ScalarType.Float32);
        Assert.True(TensorAssert.BitEqual(expected, exact));
    }

    [Theory, MemberData(nameof(Kinds))]
    public void ConversionEqualsGgufPyQuantizersOverTheExactValuesAndRefusesOverflow(string key)
    {
        var kind = Kind(key);
        using var f = GgufFile.Open(File("kquant-blocks.gguf"));
        var info = f.GetTensor(Key(kind));
        var blocks = Bytes(f, Key(kind));
        long rows = info.Ne[1], columns = info.Ne[0];
        long rowBytes = KQuants.RowBytes(kind, columns);
        // Q5_0 -> Q8_0 is lossless rather than requantized (Q5_0IsHeldAsQ8_0WithEveryValueKept).
        foreach (var format in kind == GgufBlockType.Q5_0 ? new[] { QuantizationFormat.Q4_0 } : new[] { QuantizationFormat.Q8_0, QuantizationFormat.Q4_0 })
        {
            var expected = Bytes(f, $"{Key(kind)}.{QuantizationFormats.Name(format)}");
            int bb = QuantizationFormats.BlockBytes(format);
            long outRow = QuantizationFormats.RowBytes(format, columns);
            int converted = 0, refused = 0;
            for (long r = 0; r < rows; r++)
            {
                var want = expected[(int)(r * outRow)..(int)((r + 1) * outRow)];
                var dst = new byte[outRow];
                var problem = KQuants.ConvertRow(blocks.AsSpan((int)(r * rowBytes), (int)rowBytes), dst, kind, format);
                // gguf-py writes an infinite scale where the values overflow fp16; we refuse those rows.
                bool overflows = Enumerable.Range(0, (int)(outRow / bb)).Any(b => (BinaryPrimitives.ReadUInt16LittleEndian(want.AsSpan(b * bb)) & 0x7C00) == 0x7C00);
                Assert.Equal(overflows, problem is not null);
                if (problem is { } p)
                {
                    Assert.Contains("too large", p.Reason);
                    refused++;
                }
                else
                {
                    // One known difference from gguf-py, where we follow ggml's C: a Q4_0 block of zeros of either
                    // sign gets d = -0.0 there (its max starts at +0), gguf-py takes the first zero's sign. The sign
                    // of a zero scale changes no value.
                    if (format == QuantizationFormat.Q4_0)
                        for (int b = 0; b < outRow / bb; b++)
                            if ((BinaryPrimitives.ReadUInt16LittleEndian(want.AsSpan(b * bb)) & 0x7FFF) == 0)
                            {
                                Assert.Equal(0, BinaryPrimitives.ReadUInt16LittleEndian(dst.AsSpan(b * bb)) & 0x7FFF);
                                want[b * bb + 1] = dst[b * bb + 1];
                            }
                    Assert.True(want.SequenceEqual(dst), $"{kind} -> {format} row {r}");
                    converted++;
                }
            }
            Assert.True(converted >= 5 && (refused >= 1 || kind == GgufBlockType.Q5_0), $"{kind} -> {format}: {converted} rows compared, {refused} refused");
        }
    }

    private static MultimodalPipeline LoadPipeline(string dtype = "auto", string? llm = null) => MultimodalPipeline.Load(new PipelineOptions
    {
        ModelPath = llm ?? Llm, MmprojPath = Mmproj, Template = "raw", DType = dtype,
    });

    /// <summary>All-position logits of the reference token sequences.</summary>
    private static Tensor Logits(LlavaModel model, int[] ids)
    {
        using var noGrad = torch.no_grad();
        using var inputs = model.BuildInputs(new[] { ids.Select(i => (long)i).ToArray() }, null);
        return model.LanguageModel.Forward(inputs.Embeddings, inputs.PositionIds, null, null, 0, LogitsMode.All)[0];
    }

    private static (int[][] Ids, Tensor Exact, Tensor Q8) Reference()
    {
        using var f = GgufFile.Open(File("reference.gguf"));
        var idsInfo = f.GetTensor("ids");
        Assert.Equal(GgmlType.I32, idsInfo.Type);
        var flat = LittleEndianInts(Bytes(f, "ids"));
        int n = (int)idsInfo.Ne[0];
        var ids = Enumerable.Range(0, flat.Length / n).Select(i => flat[(i * n)..((i + 1) * n)]).ToArray();
        using var exact = f.Plain(f.GetTensor("logits.exact"));
        using var q8 = f.Plain(f.GetTensor("logits.q8_0"));
        return (ids, exact.clone(), q8.clone());
    }

    private static int[] LittleEndianInts(byte[] b) => Enumerable.Range(0, b.Length / 4).Select(i => BitConverter.ToInt32(b, i * 4)).ToArray();

    private static void AssertClose(Tensor expected, Tensor actual, double tol, string what)
    {
        double diff = (expected - actual).abs().max().item<float>();
        Assert.True(diff <= tol, $"{what}: max |diff| {diff:G3} > {tol:G3}");
    }

    [Fact]
    public async Task Q4_K_MFileLoadsThroughTheMmprojOptionAsQ8_0AndMatchesTheReferenceLogits()
    {
        using var p = LoadPipeline();
        var named = p.Model.named_parameters().ToDictionary(x => x.name, x => x.parameter);
        // Q4_K and Q6_K matrices alike are held as Q8_0 blocks; the norms stay float32.
        foreach (var m in new[] { "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.0.mlp.down_proj", "lm_head", "model.embed_tokens" })
            Assert.Equal(QuantizationFormat.Q8_0, Assert.IsType<QuantizedWeight>(named[$"language_model.{m}.weight"]).Format);
        Assert.Equal(ScalarType.Float32, named["language_model.model.norm.weight"].dtype);
        using (var f = GgufFile.Open(Llm)) Assert.Equal("Q4_K 6, Q6_K 3", GgufModel.ConvertedAtLoad(f)); // logged at load

        // The reference converts the gguf-py-dequantized weights with gguf-py's Q8_0 quantizer, then runs LLaMA in
        // float64 PyTorch on the GGUF layout (no un-permutation: adjacent rotary pairs).
        // Float32 GEMMs: the bfloat16 ones (the default on CPUs with bf16 instructions) round to about 1e-3.
        var (ids, exact, q8) = Reference();
        bool bf16 = QuantKernels.Bf16Gemm;
        QuantKernels.Bf16Gemm = false;
        try
        {
            using (exact)
            using (q8)
                for (int s = 0; s < ids.Length; s++)
                {
                    using var got = Logits(p.Model, ids[s]);
                    AssertClose(q8[s], got, 1e-4, $"sequence {s}, Q8_0-converted weights");
                }
        }
        finally { QuantKernels.Bf16Gemm = bf16; }

        // The image path runs on the same weights (the mmproj projects to the K-quant LLM's width).
        var image = ImageInput.FromFile(GgufFixtures.Image("image1.png"));
        var result = await p.GenerateAsync("USER: <image>\nWhat is this? ASSISTANT:", new[] { image },
            new GenerationOptions { MaxNewTokens = 4, StopAtEndOfSequence = false });
        Assert.Equal(4, result.TokenIds.Count);
    }

    /// <summary>Presents the GGUF tensors without their block format, so the loader asks for float32.</summary>
    private sealed class FloatOnly(ITensorReader inner) : ITensorReader
    {
        public string Source => inner.Source;
        public IReadOnlyList<string> Names => inner.Names;
        public bool Contains(string name) => inner.Contains(name);
        public TensorInfo GetInfo(string name) => inner.GetInfo(name) with { Format = null };
        public Tensor Load(string name, ScalarType? dtype = null, Device? device = null) => inner.Load(name, dtype ?? ScalarType.Float32, device);
        public void Dispose() => inner.Dispose();
    }

    [Fact]
    public void ExactDequantizationMatchesTheReferenceLogits()
    {
        var folder = ModelFolder.OpenGguf(Llm, Mmproj);
        var readers = ModelLoader.OpenReaders(folder).Select(r => ((ITensorReader)new FloatOnly(r.Reader), r.Part)).ToList();
        try
        {
            using var model = ModelLoader.Load(folder.Config, readers, new LoadOptions { DType = ScalarType.Float32, Prefault = false });
            Assert.IsNotType<QuantizedWeight>(model.named_parameters().First(x => x.name.EndsWith("q_proj.weight")).parameter);
            var (ids, exact, q8) = Reference();
            using (exact)
            using (q8)
                for (int s = 0; s < ids.Length; s++)
                {
                    using var got = Logits(model, ids[s]);
                    AssertClose(exact[s], got, 1e-4, $"sequence {s}, exact K-quant weights");
                }
        }
        finally
        {
            foreach (var (r, _) in readers) r.Dispose();
        }
    }

    [Fact]
    public void Q4_0AtLoadRoundsTheExactValuesOnce()
    {
        using var p = LoadPipeline("q4_0");
        var up = Assert.IsType<QuantizedWeight>(p.Model.named_parameters().First(x => x.name == "language_model.model.layers.0.mlp.up_proj.weight").parameter);
        Assert.Equal(QuantizationFormat.Q4_0, up.Format);
        using var reader = GgufTensorReader.ForLanguageModel(GgufFile.Open(Llm), 4, 2);
        using var exact = reader.Load("language_model.model.layers.0.mlp.up_proj.weight", ScalarType.Float32);
        using var once = QuantizedWeight.Quantize(exact, QuantizationFormat.Q4_0, interleaved: up.Interleaved); // in the layout the load chose
        Assert.True(TensorAssert.BitEqual(once, up), "Q4_K -> Q4_0 must quantize the exact values, not the Q8_0 conversion");
    }

    // ------------------------------------------------------------------------------------------------ hostile input

    private string Patched(Action<byte[], GgufFile> patch)
    {
        var bytes = System.IO.File.ReadAllBytes(Llm);
        using (var f = GgufFile.Open(Llm)) patch(bytes, f);
        var path = System.IO.Path.Combine(_dir, $"p{Guid.NewGuid():N}.gguf");
        System.IO.File.WriteAllBytes(path, bytes);
        return path;
    }

    private static CheckpointFormatException RefusedAtLoad(string path, string tensor, string fragment)
    {
        var e = Assert.Throws<CheckpointFormatException>(() => LoadPipeline(llm: path).Dispose());
        Assert.Equal(tensor, e.TensorName);
        Assert.Contains(fragment, e.Message, StringComparison.OrdinalIgnoreCase);
        return e;
    }

    [Theory]
    [InlineData("blk.0.ffn_gate.weight", 0, 0, (ushort)0x7C00)] // Q4_K d = +inf (rows of 256: one super-block)
    [InlineData("blk.0.ffn_gate.weight", 0, 2, (ushort)0x7E00)] // Q4_K dmin = NaN
    [InlineData("blk.0.ffn_down.weight", 1, 208, (ushort)0xFC00)] // Q6_K d = -inf (rows of 512)
    public void NonFiniteScalesAreRefusedNamingTheTensorRowAndBlock(string tensor, int block, int offset, ushort half)
    {
        var path = Patched((b, f) =>
        {
            var t = f.GetTensor(tensor);
            int bb = t.Type == GgmlType.Q4_K ? 144 : 210;
            long row = 3, rowBytes = t.Ne[0] / 256 * bb;
            BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan((int)(t.Offset + row * rowBytes + block * bb + offset)), half);
        });
        var e = RefusedAtLoad(path, tensor, $"super-block {block} of row 3");
        Assert.Contains("NaN or infinite", e.Message);
        // The exact float path checks the same.
        using var reader = GgufTensorReader.ForLanguageModel(GgufFile.Open(path), 4, 2);
        var name = reader.Names.First(n => reader.GetInfo(n).Name == tensor);
        Assert.Throws<CheckpointFormatException>(() => reader.Load(name, ScalarType.Float32).Dispose());
    }

    [Fact]
    public void ValuesBeyondQ8_0sScaleAreRefused()
    {
        var path = Patched((b, f) =>
        {
            var t = f.GetTensor("blk.0.ffn_up.weight");
            int at = (int)t.Offset; // row 0, super-block 0: d = 65504, every scale code 63
            BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(at), 0x7BFF);
            b.AsSpan(at + 4, 12).Fill(0xFF);
            b.AsSpan(at + 16, 128).Fill(0xFF);
        });
        RefusedAtLoad(path, "blk.0.ffn_up.weight", "too large for q8_0");
    }

    [Fact]
    public void TruncatedAndMisSizedK_QuantTensorsAreRefusedByName()
    {
        var bytes = System.IO.File.ReadAllBytes(Llm);
        string last;
        using (var f = GgufFile.Open(Llm)) last = f.Tensors.OrderBy(t => t.Offset).Last().Name;
        foreach (int cut in new[] { 1, 100, 5000 })
        {
            var path = System.IO.Path.Combine(_dir, $"cut{cut}.gguf");
            System.IO.File.WriteAllBytes(path, bytes[..^cut]);
            var e = Assert.Throws<CheckpointFormatException>(() => GgufFile.Open(path).Dispose());
            Assert.Equal(last, e.TensorName);
            Assert.Contains("past the end", e.Message);
        }
        // Rows that are not whole super-blocks, and data a block short.
        var rows = new GgufBytes().Header(3, 1, 0).Tensor("blk.0.ffn_up.weight", GgmlType.Q4_K, 0, 128, 2).Data(288).ToArray();
        var p1 = System.IO.Path.Combine(_dir, "rows.gguf");
        System.IO.File.WriteAllBytes(p1, rows);
        var e1 = Assert.Throws<CheckpointFormatException>(() => GgufFile.Open(p1).Dispose());
        Assert.Equal("blk.0.ffn_up.weight", e1.TensorName);
        Assert.Contains("not a multiple of Q4_K's block of 256", e1.Message);
        var shortData = new GgufBytes().Header(3, 1, 0).Tensor("blk.0.ffn_down.weight", GgmlType.Q6_K, 0, 512, 2).Data(4 * 210 - 210).ToArray();
        var p2 = System.IO.Path.Combine(_dir, "short.gguf");
        System.IO.File.WriteAllBytes(p2, shortData);
        var e2 = Assert.Throws<CheckpointFormatException>(() => GgufFile.Open(p2).Dispose());
        Assert.Equal("blk.0.ffn_down.weight", e2.TensorName);
    }

    public static IEnumerable<object[]> Unsupported() => new[]
    {
        GgmlType.Q2_K, GgmlType.Q3_K, GgmlType.Q5_K, GgmlType.Q8_K, GgmlType.Q4_1, GgmlType.Q5_1,
        GgmlType.IQ2_XXS, GgmlType.IQ2_XS, GgmlType.IQ3_XXS, GgmlType.IQ1_S, GgmlType.IQ4_NL, GgmlType.IQ3_S, GgmlType.IQ2_S,
        GgmlType.IQ4_XS, GgmlType.IQ1_M, GgmlType.TQ1_0, GgmlType.TQ2_0, GgmlType.MXFP4,
    }.Select(t => new object[] { (uint)t });

    [Theory, MemberData(nameof(Unsupported))]
    public void OtherBlockTypesAreRefusedNamingTheTensorTheTypeAndWhatIsSupported(uint code)
    {
        var type = (GgmlType)code;
        var (block, bytes) = GgufFile.BlockLayout(type)!.Value;
        var file = new GgufBytes().Header(3, 1, 1).KeyStr("general.architecture", "llama")
            .Tensor("blk.0.ffn_up.weight", type, 0, 256, 2).Data(2 * 256 / block * bytes).ToArray();
        var path = System.IO.Path.Combine(_dir, $"{type}.gguf");
        System.IO.File.WriteAllBytes(path, file);
        using var f = GgufFile.Open(path); // the layout itself is valid
        var e = Assert.Throws<CheckpointFormatException>(() => GgufTensorReader.ForLanguageModel(f, 4, 2));
        Assert.Equal("blk.0.ffn_up.weight", e.TensorName);
        Assert.Contains($"Tensor type {type} is not supported", e.Message);
        Assert.Contains("Q4_K, Q6_K", e.Message);
    }

    [Fact]
    public void AnUnsupportedTypeInARealFileFailsTheLoadBeforeAnyWeightIsRead()
    {
        // The Q4_K ffn_gate retyped in the header as IQ4_XS (136-byte blocks: its data still fits where it was).
        var path = Patched((b, f) =>
        {
            var name = Encoding.UTF8.GetBytes("blk.0.ffn_gate.weight");
            int at = b.AsSpan().IndexOf(name) + name.Length; // then dims (4), ne (2 × 8), type (4)
            Assert.Equal((uint)GgmlType.Q4_K, BitConverter.ToUInt32(b, at + 4 + 16));
            BitConverter.GetBytes((uint)GgmlType.IQ4_XS).CopyTo(b, at + 4 + 16);
        });
        RefusedAtLoad(path, "blk.0.ffn_gate.weight", "IQ4_XS is not supported");
    }
}
