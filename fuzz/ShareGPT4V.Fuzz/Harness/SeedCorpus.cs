using ShareGPT4V.Checkpoints;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.Formats;
using SixLabors.ImageSharp.Formats.Bmp;
using SixLabors.ImageSharp.Formats.Gif;
using SixLabors.ImageSharp.Formats.Jpeg;
using SixLabors.ImageSharp.Formats.Png;
using SixLabors.ImageSharp.Formats.Webp;
using SixLabors.ImageSharp.PixelFormats;

namespace ShareGPT4V.Fuzzing;

/// <summary>
/// The seed inputs of each fuzz target: the oracle fixtures (checkpoints, configs, tokenizer files, images) plus a few
/// small inputs made here (a two-shard checkpoint, images in every decoded format). Deterministic.
/// </summary>
public static class SeedCorpus
{
    /// <summary>Seeds of <paramref name="target"/> as (name, bytes). <paramref name="small"/> leaves out seeds over 100 KB (afl-fuzz works best with small files).</summary>
    public static List<(string Name, byte[] Data)> For(string target, string fixturesRoot, bool small = false)
    {
        var seeds = new List<(string, byte[])>();
        (string, byte[])? smallestLeftOut = null;
        void Add(string rel)
        {
            var path = Path.Combine(fixturesRoot, rel);
            var bytes = File.ReadAllBytes(path);
            var seed = (rel.Replace('/', '_'), bytes);
            if (!small || bytes.Length <= 100_000) seeds.Add(seed);
            else if (smallestLeftOut is null || bytes.Length < smallestLeftOut.Value.Item2.Length) smallestLeftOut = seed;
        }

        switch (target)
        {
            case "safetensors":
                Add("oracle/dtype_bin/dtype.safetensors");
                Add("oracle/hf_tiny/projector_out.safetensors");
                Add("oracle/hf_tiny/vision_hidden_minus2.safetensors");
                Add("oracle/llava_tiny336/clip-vit-tiny-336/model.safetensors");
                break;
            case "sharded":
                seeds.Add(("two_shards", TwoShards(Path.Combine(fixturesRoot, "oracle/dtype_bin/dtype.safetensors"))));
                Add("anchors/llava-hf__llava-1.5-7b-hf/model.safetensors.index.json");
                break;
            case "bin-zip":
                Add("oracle/dtype_bin/dtype_zip.bin");
                Add("oracle/dtype_bin/dtype_zip_torch2_records.bin");
                Add("oracle/bad_pickles/os_system_reduce.bin");
                Add("oracle/bad_pickles/builtins_eval.bin");
                Add("oracle/bad_pickles/truncated_zip.bin");
                Add("oracle/llava_tiny336_bin/clip-vit-tiny-336/pytorch_model.bin");
                break;
            case "gguf":
                Add("gguf/hf_llama2vocab/mmproj-f16.gguf");
                Add("gguf/hf_llama2vocab/mmproj-f32.gguf");
                Add("gguf/hf_llama2vocab/llm-q4_0.gguf");
                Add("gguf-kquant/llm-q4_k_m.gguf");
                break;
            case "bin-legacy":
                Add("oracle/dtype_bin/dtype_legacy.bin");
                break;
            case "config":
                Add("oracle/hf_tiny/config.json");
                Add("oracle/hf_llama2vocab/config.json");
                Add("oracle/llava_tiny336/model/config.json");
                Add("anchors/llava-hf__llava-1.5-7b-hf/config.json");
                Add("anchors/Lin-Chen__ShareGPT4V-7B/config.json");
                break;
            case "tokenizer-json":
                Add("oracle/hf_llama2vocab/tokenizer.json");
                break;
            case "tokenizer-model":
                Add("tokenizers/llama2/tokenizer.model");
                break;
            case "tokenizer-config":
                Add("oracle/hf_llama2vocab/tokenizer_config.json");
                Add("anchors/llava-hf__llava-1.5-7b-hf/tokenizer_config.json");
                Add("anchors/Lin-Chen__ShareGPT4V-7B/tokenizer_config.json");
                break;
            case "preprocessor":
                Add("oracle/hf_tiny/preprocessor_config.json");
                Add("anchors/openai__clip-vit-large-patch14-336/preprocessor_config.json");
                Add("anchors/llava-hf__llava-1.5-7b-hf/preprocessor_config.json");
                break;
            case "image":
                Add("oracle/hf_tiny/image1.png");
                Add("oracle/hf_tiny/image2.png");
                seeds.AddRange(MadeImages());
                break;
            default:
                throw new ArgumentException($"Unknown fuzz target '{target}'", nameof(target));
        }
        // A target whose only seeds are large (tokenizer.model, tokenizer.json) still needs one.
        if (seeds.Count == 0 && smallestLeftOut is { } fallback) seeds.Add(fallback);
        return seeds;
    }

    /// <summary>The tensors of one safetensors file split over two shards, with their index, as one <c>sharded</c> input.</summary>
    private static byte[] TwoShards(string source)
    {
        var dir = Directory.CreateTempSubdirectory("sgpt4v-seed-").FullName;
        try
        {
            using var reader = SafeTensorsFile.Open(source);
            long dataBytes = reader.Names.Sum(n => reader.GetByteRange(n).Length);
            var result = SafeTensorsWriter.WriteSharded(dir, reader, maxShardBytes: Math.Max(1, dataBytes / 2));
            if (result.IndexFile is null) throw new InvalidOperationException("The seed checkpoint did not split into shards");
            return FuzzTargets.JoinShards(File.ReadAllBytes(result.IndexFile), result.Files.Select(File.ReadAllBytes));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>Small images in each format the loader decodes, with alpha, palette, grey and animation.</summary>
    private static IEnumerable<(string, byte[])> MadeImages()
    {
        using var rgba = new Image<Rgba32>(13, 9);
        for (int y = 0; y < rgba.Height; y++)
            for (int x = 0; x < rgba.Width; x++)
                rgba[x, y] = new Rgba32((byte)(x * 19), (byte)(y * 27), (byte)(x * y * 3), (byte)(255 - x * 7));
        byte[] Encode(Image image, IImageEncoder encoder)
        {
            using var ms = new MemoryStream();
            image.Save(ms, encoder);
            return ms.ToArray();
        }
        yield return ("made_rgba.png", Encode(rgba, new PngEncoder()));
        yield return ("made_palette.png", Encode(rgba, new PngEncoder { ColorType = PngColorType.Palette }));
        yield return ("made_grey16.png", Encode(rgba, new PngEncoder { ColorType = PngColorType.Grayscale, BitDepth = PngBitDepth.Bit16 }));
        yield return ("made.jpg", Encode(rgba, new JpegEncoder { Quality = 80 }));
        yield return ("made.bmp", Encode(rgba, new BmpEncoder()));
        yield return ("made_lossy.webp", Encode(rgba, new WebpEncoder { FileFormat = WebpFileFormatType.Lossy }));
        yield return ("made_lossless.webp", Encode(rgba, new WebpEncoder { FileFormat = WebpFileFormatType.Lossless }));
        using var anim = rgba.CloneAs<Rgba32>();
        using (var second = new Image<Rgba32>(13, 9, new Rgba32(10, 200, 30, 255)))
            anim.Frames.AddFrame(second.Frames.RootFrame);
        yield return ("made_anim.gif", Encode(anim, new GifEncoder()));
    }

    /// <summary>Writes each target's seeds into <c>outDir/&lt;target&gt;/</c> (for afl-fuzz's <c>-i</c>).</summary>
    public static void WriteAll(string fixturesRoot, string outDir, IEnumerable<string> targets, bool small)
    {
        foreach (var t in targets)
        {
            var dir = Path.Combine(outDir, t);
            Directory.CreateDirectory(dir);
            foreach (var (name, data) in For(t, fixturesRoot, small))
                File.WriteAllBytes(Path.Combine(dir, name), data);
        }
    }
}
