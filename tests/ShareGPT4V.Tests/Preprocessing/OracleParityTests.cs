using ShareGPT4V.Checkpoints;
using ShareGPT4V.Preprocessing;
using TorchSharp;
using Xunit;
using Xunit.Abstractions;

namespace ShareGPT4V.Tests.Preprocessing;

/// <summary>Bit-exact parity with transformers' CLIPImageProcessor (PIL) on the oracle goldens.</summary>
public class OracleParityTests(ITestOutputHelper output)
{
    public static TheoryData<string, string, string, string> Cases()
    {
        var data = new TheoryData<string, string, string, string>();
        foreach (var (c, config) in new[]
                 {
                     ("hf_tiny", "hf_tiny/preprocessor_config.json"),
                     ("hf_llama2vocab", "hf_llama2vocab/preprocessor_config.json"),
                     ("llava_tiny336", "llava_tiny336/clip-vit-tiny-336/preprocessor_config.json"),
                 })
            foreach (var image in new[] { "image1", "image2" })
                foreach (var variant in new[] { "hf", "pad" })
                    data.Add(c, config, image, variant);
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void MatchesGoldenPixels(string caseName, string configPath, string image, string variant)
    {
        using var golden = SafeTensorsFile.Open(Fixtures.Path($"oracle/{caseName}/pixel_values.safetensors"));
        var key = $"{image}_{variant}";
        if (!golden.Contains(key))
        {
            // llava_tiny336 omits image2_hf: image2 is square, so it equals image2_pad.
            Assert.Equal(("llava_tiny336", "image2_hf"), (caseName, key));
            key = $"{image}_pad";
        }

        var config = PreprocessorConfig.Load(Fixtures.Path($"oracle/{configPath}"));
        var mode = variant == "pad" ? ImageAspectMode.Pad : ImageAspectMode.Resize;
        var processor = new ClipImageProcessor(config, mode);
        var result = processor.Preprocess(Fixtures.Path($"oracle/{caseName}/{image}.png"));

        using var expectedU8 = golden.Load(key + "_uint8");
        Assert.Equal(new long[] { result.Height, result.Width, 3 }, expectedU8.shape);
        var u8 = expectedU8.data<byte>().ToArray();
        int maxU8 = 0;
        for (int i = 0; i < u8.Length; i++) maxU8 = Math.Max(maxU8, Math.Abs(u8[i] - result.CroppedRgb[i]));

        using var expected = golden.Load(key);
        using var actual = result.ToTensor();
        Assert.Equal(expected.shape, actual.shape);
        var f = expected.data<float>().ToArray();
        double maxF = 0;
        for (int i = 0; i < f.Length; i++) maxF = Math.Max(maxF, Math.Abs(f[i] - result.Data[i]));
        output.WriteLine($"{caseName} {key}: max |uint8 diff| = {maxU8}, max |float diff| = {maxF:E3}");

        Assert.Equal(0, maxU8);
        Assert.True(maxF <= 1e-6, $"float max abs diff {maxF}");
        using var close = torch.max(torch.abs(actual - expected));
        Assert.True(close.ToSingle() <= 1e-6f);
    }

    [Fact]
    public void BatchStacksImagesInOrder()
    {
        var config = PreprocessorConfig.Load(Fixtures.Path("oracle/hf_tiny/preprocessor_config.json"));
        var processor = new ClipImageProcessor(config, ImageAspectMode.Resize);
        using var golden = SafeTensorsFile.Open(Fixtures.Path("oracle/hf_tiny/pixel_values.safetensors"));
        using var batch = processor.PreprocessBatch(new[] { Fixtures.Path("oracle/hf_tiny/image1.png"), Fixtures.Path("oracle/hf_tiny/image2.png") });
        Assert.Equal(new long[] { 2, 3, 56, 56 }, batch.shape);
        using var e1 = golden.Load("image1_hf");
        using var e2 = golden.Load("image2_hf");
        using var b0 = batch[0];
        using var b1 = batch[1];
        Assert.True(b0.allclose(e1, rtol: 0, atol: 1e-6));
        Assert.True(b1.allclose(e2, rtol: 0, atol: 1e-6));
    }

    [Fact]
    public void IsThreadSafe()
    {
        var config = PreprocessorConfig.Load(Fixtures.Path("oracle/llava_tiny336/clip-vit-tiny-336/preprocessor_config.json"));
        var processor = new ClipImageProcessor(config, ImageAspectMode.Pad);
        var image = ImageLoader.Load(Fixtures.Path("oracle/llava_tiny336/image1.png"));
        var reference = processor.Preprocess(image).Data;
        Parallel.For(0, 8, _ => Assert.Equal(reference, processor.Preprocess(image).Data));
    }
}
