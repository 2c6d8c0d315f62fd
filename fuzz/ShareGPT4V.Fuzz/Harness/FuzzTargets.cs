using System.Text;
using ShareGPT4V.Checkpoints;
using ShareGPT4V.Checkpoints.Gguf;
using ShareGPT4V.Checkpoints.PyTorch;
using ShareGPT4V.Configuration;
using ShareGPT4V.Preprocessing;
using ShareGPT4V.Tokenization;
using TorchSharp;

namespace ShareGPT4V.Fuzzing;

/// <summary>What one fuzz input did: opened and fully used, or refused with a <see cref="ShareGPT4VException"/>.</summary>
public enum FuzzOutcome { Accepted, Refused }

/// <summary>
/// The fuzz targets, shared by the coverage-guided harness (<c>fuzz/</c>, run under afl-fuzz) and the bounded mutation
/// fuzz of the test suite. Each writes the input where the library expects a file, runs the public reader on it and then
/// uses everything the reader returned (every tensor is read and summed, every token encoded and decoded), so a view
/// that reaches past its data is actually touched. A <see cref="ShareGPT4VException"/> is the expected refusal; any other
/// exception escapes and is a finding, as is a loaded tensor whose shape differs from what the header promised.
/// </summary>
public sealed class FuzzTargets : IDisposable
{
    /// <summary>The four checkpoint readers (the coverage-guided targets), then the JSON, tokenizer and image targets.</summary>
    public static IReadOnlyList<string> Names { get; } =
        ["safetensors", "sharded", "bin-zip", "bin-legacy", "gguf", "config", "tokenizer-json", "tokenizer-model", "tokenizer-config", "preprocessor", "image"];

    /// <summary>Separates the index from the shards in an input of the <c>sharded</c> target.</summary>
    public static ReadOnlySpan<byte> ShardSeparator => "\n#SHARD#\n"u8;

    private static readonly string[] SampleTexts =
    [
        "USER: <image>\nDescribe this image in detail. ASSISTANT:",
        "Grüße, 世界! 🙂🏳️‍🌈 \u0000 \uFFFD </s><s> <unk>  tabs\tand\nnewlines",
        "\u2581\u2581 lone surrogate-free mix: ǅ ﬁ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ",
    ];

    private readonly string _fixtures;
    private readonly string _work;
    private readonly bool _ownsWork;

    /// <param name="fixturesRoot">The test fixtures folder (tests/ShareGPT4V.Tests/Fixtures): fixed files some targets need.</param>
    /// <param name="workDir">Scratch folder for the files written per input; a new temporary folder when null.</param>
    public FuzzTargets(string fixturesRoot, string? workDir = null)
    {
        _fixtures = Path.GetFullPath(fixturesRoot);
        _ownsWork = workDir is null;
        _work = workDir is null ? Directory.CreateTempSubdirectory("sgpt4v-fuzz-").FullName : Path.GetFullPath(workDir);
        Directory.CreateDirectory(_work);
        PrepareFixedFiles();
    }

    public void Dispose()
    {
        if (_ownsWork)
            try { Directory.Delete(_work, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    /// <summary>Runs one input against one target. Exceptions other than <see cref="ShareGPT4VException"/> escape.</summary>
    public FuzzOutcome Run(string target, byte[] data)
    {
        using var scope = torch.NewDisposeScope();
        try
        {
            switch (target)
            {
                case "safetensors": SafeTensors(data); break;
                case "sharded": Sharded(data); break;
                case "bin-zip" or "bin-legacy": Bin(data); break;
                case "gguf": Gguf(data); break;
                case "config": return Config(data);
                case "tokenizer-json": TokenizerJson(data); break;
                case "tokenizer-model": TokenizerModel(data); break;
                case "tokenizer-config": TokenizerConfig(data); break;
                case "preprocessor": Preprocessor(data); break;
                case "image": Image(data); break;
                default: throw new ArgumentException($"Unknown fuzz target '{target}' (known: {string.Join(", ", Names)})", nameof(target));
            }
            return FuzzOutcome.Accepted;
        }
        catch (ShareGPT4VException)
        {
            return FuzzOutcome.Refused;
        }
    }

    // ------------------------------------------------------------------ checkpoints

    private void SafeTensors(byte[] data)
    {
        var path = Fresh("st", "model.safetensors", data);
        using var r = SafeTensorsFile.Open(path);
        Touch(r);
    }

    private void Sharded(byte[] data)
    {
        var dir = FreshDir("sharded");
        var parts = Split(data, ShardSeparator);
        File.WriteAllBytes(Path.Combine(dir, "model.safetensors.index.json"), parts[0]);
        for (int i = 1; i < parts.Count; i++)
            File.WriteAllBytes(Path.Combine(dir, $"model-{i:D5}-of-{parts.Count - 1:D5}.safetensors"), parts[i]);
        using (var r = CheckpointDiscovery.Open(dir, out var picked))
        {
            Touch(r);
            // The file list is read from the index a second time; it must agree with what was opened.
            foreach (var f in picked.Files)
                if (!File.Exists(f) || Path.GetDirectoryName(f) != dir)
                    throw new InvalidOperationException($"DiscoveredCheckpoint.Files lists '{f}', which is not a shard in {dir}");
        }
    }

    private void Bin(byte[] data)
    {
        var path = Fresh("bin", "pytorch_model.bin", data);
        using var r = PyTorchCheckpointReader.Open(path);
        Touch(r);
    }

    /// <summary>
    /// A GGUF file as the LLM or the mmproj of a model (by its architecture), paired with the other file from the
    /// fixtures: config from the metadata, the whole model loaded with tensors as stored (quantized blocks included),
    /// every weight read, and for an LLM file its tokenizer used.
    /// </summary>
    private void Gguf(byte[] data)
    {
        var path = Fresh("gguf", "input.gguf", data);
        string arch;
        int? hidden;
        using (var f = GgufFile.Open(path))
        {
            arch = f.String("general.architecture") ?? "";
            hidden = arch == "clip" ? null : f.Int("llama.embedding_length");
        }
        bool mmproj = arch == "clip";
        // The K-quant LLM (hidden 256) pairs with the mmproj that projects to its width.
        var partner = hidden == 256 ? "gguf-kquant/mmproj.gguf" : "gguf/hf_llama2vocab/mmproj-f16.gguf";
        var folder = mmproj
            ? ModelFolder.OpenGguf(Path.Combine(_fixtures, "gguf/hf_llama2vocab/llm-q4_0.gguf"), path)
            : ModelFolder.OpenGguf(path, Path.Combine(_fixtures, partner));
        using (var model = ModelLoader.Load(folder, new LoadOptions { DType = null }))
            foreach (var (name, p) in model.named_parameters())
            {
                using var scope = torch.NewDisposeScope();
                var values = p is Modeling.QuantizedWeight q ? q.Dequantize() : p;
                _ = values.to_type(torch.ScalarType.Float64).sum().item<double>();
            }
        if (!mmproj) UseTokenizer(LlavaTokenizer.LoadGguf(path));
    }

    /// <summary>Reads every tensor, checks its shape against the header, and reads every element (sum in float64).</summary>
    private static void Touch(ITensorReader r)
    {
        foreach (var name in r.Names)
        {
            var info = r.GetInfo(name);
            using var scope = torch.NewDisposeScope();
            var t = r.Load(name);
            if (t is Modeling.QuantizedWeight q)
            {
                if (q.Rows != info.Shape[0] || q.Columns != info.Shape[1] || q.Format != info.Format)
                    throw new InvalidOperationException($"Quantized tensor '{name}' loaded as {q.Format} {q.Rows} x {q.Columns} but the header says {info}");
                t = q.Dequantize();
            }
            else if (!t.shape.SequenceEqual(info.Shape) || t.dtype != info.DType)
                throw new InvalidOperationException($"Tensor '{name}' loaded as {t.dtype} [{string.Join(", ", t.shape)}] but the header says {info}");
            if (t.numel() is > 0 and <= 1 << 22)
                _ = t.to_type(torch.ScalarType.Float64).sum().item<double>();
            if (info.DType is torch.ScalarType.Float16 or torch.ScalarType.BFloat16 && t.numel() is > 0 and <= 1 << 20)
                _ = r.Load(name, torch.ScalarType.Float32).sum().item<float>();
        }
    }

    // ------------------------------------------------------------------ configs

    /// <summary>
    /// config.json of a llava-hf folder and of an original-layout folder (both with real tiny weights next to them):
    /// a config that opens is built and loaded against those weights, so absurd sizes must be refused before allocating.
    /// </summary>
    private FuzzOutcome Config(byte[] data)
    {
        var outcome = FuzzOutcome.Refused;
        foreach (var modelDir in new[] { Path.Combine(_work, "cfg-hf"), Path.Combine(_work, "cfg-orig", "model") })
        {
            File.WriteAllBytes(Path.Combine(modelDir, "config.json"), data);
            try
            {
                var folder = ModelFolder.Open(modelDir);
                using var model = ModelLoader.Load(folder, new LoadOptions());
                outcome = FuzzOutcome.Accepted;
            }
            catch (ShareGPT4VException) { }
        }
        return outcome;
    }

    // ------------------------------------------------------------------ tokenizers

    private void TokenizerJson(byte[] data)
    {
        var dir = Path.Combine(_work, "tok-json");
        File.WriteAllBytes(Path.Combine(dir, "tokenizer.json"), data);
        UseTokenizer(LlavaTokenizer.Load(dir, TokenizerFileKind.TokenizerJson));
    }

    private void TokenizerModel(byte[] data)
    {
        var dir = Path.Combine(_work, "tok-model");
        File.WriteAllBytes(Path.Combine(dir, "tokenizer.model"), data);
        UseTokenizer(LlavaTokenizer.Load(dir, TokenizerFileKind.SentencePieceModel));
    }

    private void TokenizerConfig(byte[] data)
    {
        var dir = Path.Combine(_work, "tok-config");
        File.WriteAllBytes(Path.Combine(dir, "tokenizer_config.json"), data);
        UseTokenizer(LlavaTokenizer.Load(dir, TokenizerFileKind.SentencePieceModel));
    }

    private static void UseTokenizer(LlavaTokenizer tok)
    {
        foreach (var text in SampleTexts)
        {
            var ids = tok.EncodePrompt(text, LlavaTokenizer.LlavaImageTokenIndex);
            foreach (var id in ids)
                if (id != LlavaTokenizer.LlavaImageTokenIndex && (id < 0 || id >= tok.VocabularySize))
                    throw new InvalidOperationException($"Encode produced id {id}, outside the tokenizer's {tok.VocabularySize} ids");
            _ = tok.Decode(ids);
            _ = tok.Decode(ids, skipSpecialTokens: false);
            var stream = tok.CreateStreamingDetokenizer();
            foreach (var id in ids) _ = stream.Append(id);
            _ = stream.Flush();
        }
        // Ids the model may sample that the tokenizer does not know must decode to something, not throw.
        _ = tok.Decode([-5, int.MaxValue, tok.VocabularySize, 0, 1, 2]);
    }

    // ------------------------------------------------------------------ images

    private void Preprocessor(byte[] data)
    {
        var path = Fresh("pre", "preprocessor_config.json", data);
        foreach (var mode in new[] { ImageAspectMode.Resize, ImageAspectMode.Pad })
        {
            var processor = ClipImageProcessor.FromFile(path, mode);
            var image = new RgbImage(7, 5, Enumerable.Range(0, 7 * 5 * 3).Select(i => (byte)(i * 37)).ToArray());
            var p = processor.Preprocess(image);
            if (p.Height <= 0 || p.Width <= 0) throw new InvalidOperationException($"Preprocess gave a {p.Width}x{p.Height} image");
        }
    }

    private static readonly ClipImageProcessor[] ImageProcessors =
    [
        new(new PreprocessorConfig { ShortestEdge = 336, CropHeight = 336, CropWidth = 336 }, ImageAspectMode.Pad),
        new(new PreprocessorConfig { ShortestEdge = 56, CropHeight = 56, CropWidth = 56 }, ImageAspectMode.Resize),
    ];

    private static void Image(byte[] data)
    {
        var rgb = ImageLoader.Load(data, "fuzz-image", new ImageLoadOptions { MaxPixels = 4_000_000, MaxFrames = 64 });
        if (rgb.Pixels.Length != (long)rgb.Width * rgb.Height * 3) throw new InvalidOperationException("Decoded image has the wrong byte count");
        foreach (var p in ImageProcessors) _ = p.Preprocess(rgb);
    }

    // ------------------------------------------------------------------ files

    private void PrepareFixedFiles()
    {
        string Fixture(string rel) => Path.Combine(_fixtures, rel);
        void Link(string target, string link)
        {
            Directory.CreateDirectory(Path.GetDirectoryName(link)!);
            if (File.Exists(link) || Directory.Exists(link)) File.Delete(link);
            File.CreateSymbolicLink(link, target);
        }

        Link(Fixture("oracle/hf_tiny/model.safetensors"), Path.Combine(_work, "cfg-hf", "model.safetensors"));
        Link(Fixture("oracle/llava_tiny336/model/model.safetensors"), Path.Combine(_work, "cfg-orig", "model", "model.safetensors"));
        foreach (var f in new[] { "config.json", "model.safetensors", "preprocessor_config.json" })
            Link(Fixture("oracle/llava_tiny336/clip-vit-tiny-336/" + f), Path.Combine(_work, "cfg-orig", "clip-vit-tiny-336", f));

        foreach (var f in new[] { "tokenizer_config.json", "special_tokens_map.json" })
            Link(Fixture("oracle/hf_llama2vocab/" + f), Path.Combine(_work, "tok-json", f));
        Directory.CreateDirectory(Path.Combine(_work, "tok-model"));
        Link(Fixture("tokenizers/llama2/tokenizer.model"), Path.Combine(_work, "tok-config", "tokenizer.model"));
    }

    private string FreshDir(string name)
    {
        var dir = Path.Combine(_work, name);
        if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        Directory.CreateDirectory(dir);
        return dir;
    }

    private string Fresh(string dirName, string fileName, byte[] data)
    {
        var path = Path.Combine(FreshDir(dirName), fileName);
        File.WriteAllBytes(path, data);
        return path;
    }

    /// <summary>Splits on every occurrence of <paramref name="separator"/>.</summary>
    public static List<byte[]> Split(byte[] data, ReadOnlySpan<byte> separator)
    {
        var parts = new List<byte[]>();
        int start = 0;
        while (true)
        {
            int at = data.AsSpan(start).IndexOf(separator);
            if (at < 0) { parts.Add(data[start..]); return parts; }
            parts.Add(data[start..(start + at)]);
            start += at + separator.Length;
        }
    }

    /// <summary>Joins an index and shard files into one input of the <c>sharded</c> target.</summary>
    public static byte[] JoinShards(byte[] index, IEnumerable<byte[]> shards)
    {
        var ms = new MemoryStream();
        ms.Write(index);
        foreach (var s in shards) { ms.Write(ShardSeparator); ms.Write(s); }
        return ms.ToArray();
    }

    /// <summary>A short description of an input, for failure messages.</summary>
    public static string Describe(byte[] data) =>
        $"{data.Length} bytes, starting {Convert.ToHexString(data.AsSpan(0, Math.Min(16, data.Length)))} " +
        $"\"{Encoding.ASCII.GetString(data.AsSpan(0, Math.Min(40, data.Length))).ReplaceLineEndings(" ")}\"";
}
