using ShareGPT4V.Preprocessing;
using Xunit;

namespace ShareGPT4V.Tests.Preprocessing;

public class PreprocessorConfigTests
{
    [Theory]
    [InlineData("anchors/openai__clip-vit-large-patch14-336/preprocessor_config.json")] // old CLIPFeatureExtractor form
    [InlineData("anchors/Lin-Chen__ShareGPT4V-7B_Pretrained_vit-large336-l12/preprocessor_config.json")]
    [InlineData("anchors/llava-hf__llava-1.5-7b-hf/preprocessor_config.json")]
    public void RealConfigsGiveTheSame336Processor(string file)
    {
        var c = PreprocessorConfig.Load(Fixtures.Path(file));
        Assert.True(c.DoResize);
        Assert.Equal(336, c.ShortestEdge);
        Assert.Null(c.ResizeHeight);
        Assert.Equal((336, 336), (c.CropHeight, c.CropWidth));
        Assert.Equal(ResampleFilter.Bicubic, c.Resample);
        Assert.True(c.DoCenterCrop && c.DoRescale && c.DoNormalize && c.DoConvertRgb);
        Assert.Equal(1.0 / 255, c.RescaleFactor, 15);
        Assert.Equal(PreprocessorConfig.OpenAIClipMean, c.ImageMean);
        Assert.Equal(PreprocessorConfig.OpenAIClipStd, c.ImageStd);
        Assert.Equal(((byte)122, (byte)116, (byte)104), c.PadBackground);
        Assert.EndsWith("preprocessor_config.json", c.SourcePath);
    }

    [Fact]
    public void OldFormDefaultsMissingRescaleKeys()
    {
        // The real openai config has no do_rescale, rescale_factor or do_convert_rgb.
        var text = File.ReadAllText(Fixtures.Path("anchors/openai__clip-vit-large-patch14-336/preprocessor_config.json"));
        Assert.DoesNotContain("rescale", text);
        var c = PreprocessorConfig.Parse(text);
        Assert.True(c.DoRescale);
        Assert.Equal(1.0 / 255, c.RescaleFactor);
        Assert.True(c.DoConvertRgb);
    }

    [Fact]
    public void EmptyObjectGivesClipImageProcessorDefaults()
    {
        var c = PreprocessorConfig.Parse("{}");
        Assert.Equal(224, c.ShortestEdge);
        Assert.Equal((224, 224), (c.CropHeight, c.CropWidth));
        Assert.Equal(ResampleFilter.Bicubic, c.Resample);
        Assert.True(c.DoResize && c.DoCenterCrop && c.DoRescale && c.DoNormalize && c.DoConvertRgb);
        Assert.Equal(new[] { 0.48145466, 0.4578275, 0.40821073 }, c.ImageMean);
        Assert.Equal(new[] { 0.26862954, 0.26130258, 0.27577711 }, c.ImageStd);
    }

    [Fact]
    public void OtherAcceptedShapes()
    {
        var exact = PreprocessorConfig.Parse("""{"size": {"height": 30, "width": 40}, "crop_size": [20, 10], "image_mean": 0.5, "image_std": [0.5, 0.5, 0.5], "do_normalize": null}""");
        Assert.Null(exact.ShortestEdge);
        Assert.Equal((30, 40), (exact.ResizeHeight, exact.ResizeWidth));
        Assert.Equal((20, 10), (exact.CropHeight, exact.CropWidth));
        Assert.Equal(new[] { 0.5, 0.5, 0.5 }, exact.ImageMean);
        Assert.True(exact.DoNormalize); // null means "use the default"
        var p = new ClipImageProcessor(exact);
        Assert.Equal((30L, 40L), p.ResizedSize(97, 61));

        var bilinear = PreprocessorConfig.Parse("""{"size": 224.0, "resample": 2}""");
        Assert.Equal(224, bilinear.ShortestEdge);
        Assert.Equal(ResampleFilter.Bilinear, bilinear.Resample);
    }

    [Theory]
    [InlineData(97, 61, 56, 56, 89)]   // int(56 * 97 / 61) = 89
    [InlineData(61, 97, 56, 89, 56)]
    [InlineData(64, 64, 336, 336, 336)]
    [InlineData(50000, 1, 224, 224, 11200000)]
    [InlineData(3, 2, 224, 224, 336)]
    public void ResizeTargetFollowsTransformers(int w, int h, int size, long expectedH, long expectedW)
    {
        var p = new ClipImageProcessor(new PreprocessorConfig { ShortestEdge = size });
        Assert.Equal((expectedH, expectedW), p.ResizedSize(w, h));
    }

    [Theory]
    [InlineData("""{"size": 0}""", "size", "positive")]
    [InlineData("""{"size": -3}""", "size", "positive")]
    [InlineData("""{"size": {"longest_edge": 3}}""", "size", "shortest_edge")]
    [InlineData("""{"size": "big"}""", "size", "must be a number")]
    [InlineData("""{"crop_size": 0}""", "crop_size", "positive")]
    [InlineData("""{"crop_size": {"height": 10}}""", "crop_size", "height and width")]
    [InlineData("""{"image_mean": [0.5, 0.5]}""", "image_mean", "3 values")]
    [InlineData("""{"image_std": [0.5, 0, 0.5]}""", "image_std", "non-zero")]
    [InlineData("""{"image_std": ["a", 1, 1]}""", "image_std", "must be a number")]
    [InlineData("""{"rescale_factor": 0}""", "rescale_factor", "positive")]
    [InlineData("""{"resample": 0}""", "resample", "Unsupported resample")]
    [InlineData("""{"do_resize": "yes"}""", "do_resize", "true or false")]
    [InlineData("""[1, 2]""", null, "JSON object")]
    [InlineData("""{"size": """, null, "not valid JSON")]
    public void InvalidValuesNameFileAndKey(string json, string? key, string messagePart)
    {
        var e = Assert.Throws<ModelConfigurationException>(() => PreprocessorConfig.Parse(json, "models/x/preprocessor_config.json"));
        Assert.Equal(key, e.Key);
        Assert.Equal("models/x/preprocessor_config.json", e.FilePath);
        Assert.Contains(messagePart, e.Message);
        Assert.Contains("preprocessor_config.json", e.Message);
    }

    [Fact]
    public void MissingFileIsAConfigError()
    {
        var path = Path.Combine(Path.GetTempPath(), Guid.NewGuid().ToString("N"), "preprocessor_config.json");
        var e = Assert.Throws<ModelConfigurationException>(() => PreprocessorConfig.Load(path));
        Assert.Equal(path, e.FilePath);
    }

    [Fact]
    public void ProcessorValidatesHandBuiltConfigs()
    {
        var e = Assert.Throws<ModelConfigurationException>(() => new ClipImageProcessor(new PreprocessorConfig { ImageStd = [1, 1] }));
        Assert.Equal("image_std", e.Key);
    }

    [Theory]
    [InlineData("pad", ImageAspectMode.Pad)]
    [InlineData("square", ImageAspectMode.Resize)]
    [InlineData(null, ImageAspectMode.Resize)]
    public void AspectModeFromLlavaConfig(string? value, ImageAspectMode expected) =>
        Assert.Equal(expected, ImageAspectModes.FromConfigValue(value));

    [Fact]
    public void AnyResIsRefused()
    {
        var e = Assert.Throws<ModelConfigurationException>(() => ImageAspectModes.FromConfigValue("anyres", "config.json"));
        Assert.Equal("image_aspect_ratio", e.Key);
    }
}
