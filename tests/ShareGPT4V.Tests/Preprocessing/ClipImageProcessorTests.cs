using ShareGPT4V.Preprocessing;
using Xunit;

namespace ShareGPT4V.Tests.Preprocessing;

public class ClipImageProcessorTests
{
    private static RgbImage Random(int w, int h, int seed)
    {
        var rng = new Random(seed);
        var px = new byte[w * h * 3];
        rng.NextBytes(px);
        return new RgbImage(w, h, px);
    }

    private static byte[] Crop(byte[] hwc, int fullW, int x, int y, int w, int h)
    {
        var r = new byte[w * h * 3];
        for (int j = 0; j < h; j++) Array.Copy(hwc, ((y + j) * fullW + x) * 3, r, j * w * 3, w * 3);
        return r;
    }

    [Theory]
    [InlineData("Bicubic", 97, 61, 56, 89)]
    [InlineData("Bicubic", 40, 30, 100, 77)]
    [InlineData("Bilinear", 97, 61, 50, 31)]
    [InlineData("Lanczos", 33, 70, 60, 20)]
    [InlineData("Box", 64, 64, 21, 21)]
    [InlineData("Hamming", 64, 64, 64, 19)]
    public void WindowEqualsFullResizeThenCrop(string filterName, int w, int h, int outW, int outH)
    {
        var filter = Enum.Parse<ResampleFilter>(filterName);
        var src = SourceView.Plain(Random(w, h, 7));
        var full = PilResampler.ResizeWindow(src, outW, outH, filter, 0, 0, outW, outH);
        int cw = Math.Min(outW, 17), ch = Math.Min(outH, 13);
        int x = (outW - cw) / 2, y = (outH - ch) / 3;
        Assert.Equal(Crop(full, outW, x, y, cw, ch), PilResampler.ResizeWindow(src, outW, outH, filter, x, y, cw, ch));
    }

    [Fact]
    public void SameSizeIsIdentity()
    {
        var img = Random(20, 10, 3);
        Assert.Equal(img.Pixels, PilResampler.ResizeWindow(SourceView.Plain(img), 20, 10, ResampleFilter.Bicubic, 0, 0, 20, 10));
    }

    [Theory]
    [InlineData(300, 7)]
    [InlineData(7, 300)]
    [InlineData(97, 61)]
    public void PadEqualsResizeOfAMaterialisedSquare(int w, int h)
    {
        var img = Random(w, h, 11);
        int side = Math.Max(w, h), ox = (side - w) / 2, oy = (side - h) / 2;
        var square = new byte[side * side * 3];
        for (int i = 0; i < side * side; i++) { square[i * 3] = 122; square[i * 3 + 1] = 116; square[i * 3 + 2] = 104; }
        for (int y = 0; y < h; y++) Array.Copy(img.Pixels, y * w * 3, square, ((y + oy) * side + ox) * 3, w * 3);

        var config = new PreprocessorConfig { ShortestEdge = 56, CropHeight = 56, CropWidth = 56 };
        var padded = new ClipImageProcessor(config, ImageAspectMode.Pad).Preprocess(img);
        var reference = new ClipImageProcessor(config, ImageAspectMode.Resize).Preprocess(new RgbImage(side, side, square));
        Assert.Equal(reference.CroppedRgb, padded.CroppedRgb);
        Assert.Equal(reference.Data, padded.Data);
    }

    [Fact]
    public void OnePixelImage()
    {
        var processor = new ClipImageProcessor(PreprocessorConfig.Default);
        var r = processor.Preprocess(new RgbImage(1, 1, [12, 34, 56]));
        Assert.Equal((3, 224, 224), (r.Channels, r.Height, r.Width));
        for (int i = 0; i < r.CroppedRgb.Length; i += 3)
            Assert.Equal((12, 34, 56), (r.CroppedRgb[i], r.CroppedRgb[i + 1], r.CroppedRgb[i + 2]));
        // Through the decoder too.
        using var one = new SixLabors.ImageSharp.Image<SixLabors.ImageSharp.PixelFormats.Rgb24>(1, 1, new(12, 34, 56));
        using var ms = new MemoryStream();
        SixLabors.ImageSharp.ImageExtensions.SaveAsPng(one, ms);
        Assert.Equal(r.Data, processor.Preprocess(ms.ToArray(), "1x1.png").Data);
    }

    [Theory]
    [InlineData(ImageAspectMode.Resize)]
    [InlineData(ImageAspectMode.Pad)]
    public void ExtremeAspectRatioIsProcessedWithoutHugeBuffers(ImageAspectMode mode)
    {
        // 50000x1: resize makes it 11,200,000 x 224 and pad makes a 50000x50000 canvas; only the crop is computed.
        var img = Random(50000, 1, 5);
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var r = new ClipImageProcessor(PreprocessorConfig.Default, mode).Preprocess(img);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(10), $"took {sw.Elapsed}");
        Assert.Equal((224, 224), (r.Height, r.Width));
        Assert.All(r.Data, v => Assert.True(float.IsFinite(v)));
        if (mode == ImageAspectMode.Resize)
        {
            // A single source row upsampled vertically: every output row is the same.
            for (int y = 1; y < 224; y++) Assert.Equal(r.CroppedRgb[..(224 * 3)], r.CroppedRgb[(y * 224 * 3)..((y + 1) * 224 * 3)]);
        }
        else
        {
            Assert.Equal(new byte[] { 122, 116, 104 }, r.CroppedRgb[..3]);      // background at the top
            Assert.Equal(new byte[] { 122, 116, 104 }, r.CroppedRgb[^3..]);     // and at the bottom
        }
        using var t = r.ToTensor();
        Assert.Equal(new long[] { 3, 224, 224 }, t.shape);
    }

    [Fact]
    public void ViaDecoderFor50000x1Png()
    {
        using var img = new SixLabors.ImageSharp.Image<SixLabors.ImageSharp.PixelFormats.Rgb24>(50000, 1, new(1, 2, 3));
        using var ms = new MemoryStream();
        SixLabors.ImageSharp.ImageExtensions.SaveAsPng(img, ms);
        var r = new ClipImageProcessor(PreprocessorConfig.Default, ImageAspectMode.Resize).Preprocess(ms.ToArray(), "wide.png");
        Assert.Equal(new byte[] { 1, 2, 3 }, r.CroppedRgb[..3]);
    }

    [Fact]
    public void CropLargerThanImagePadsWithZerosLikeTransformers()
    {
        // Resize to 20 then crop 24: transformers pads with 0 before rescale/normalize, image at offset ceil(4/2) = 2.
        var config = new PreprocessorConfig { ShortestEdge = 20, CropHeight = 24, CropWidth = 24 };
        var r = new ClipImageProcessor(config).Preprocess(new RgbImage(1, 1, [200, 200, 200]));
        Assert.Equal((24, 24), (r.Height, r.Width));
        int At(int x, int y) => r.CroppedRgb[(y * 24 + x) * 3];
        Assert.Equal(0, At(0, 0));
        Assert.Equal(0, At(1, 1));
        Assert.Equal(200, At(2, 2));
        Assert.Equal(200, At(21, 21));
        Assert.Equal(0, At(22, 22));
        Assert.Equal((0f - 0.48145466f) / 0.26862954f, r.Data[0]);
    }

    [Fact]
    public void RescaleAndNormalizeFollowNumpyFloat32()
    {
        var r = new ClipImageProcessor(PreprocessorConfig.Default).Preprocess(new RgbImage(1, 1, [255, 128, 0]));
        float x = (float)(128 * (1.0 / 255));
        Assert.Equal((x - 0.4578275f) / 0.26130258f, r.Data[224 * 224]);
        var raw = new ClipImageProcessor(PreprocessorConfig.Default with { DoRescale = false, DoNormalize = false }).Preprocess(new RgbImage(1, 1, [255, 128, 0]));
        Assert.Equal(new[] { 255f, 128f, 0f }, new[] { raw.Data[0], raw.Data[224 * 224], raw.Data[2 * 224 * 224] });
    }

    [Fact]
    public void NoResizeNoCropKeepsTheImage()
    {
        var img = Random(9, 5, 1);
        var r = new ClipImageProcessor(PreprocessorConfig.Default with { DoResize = false, DoCenterCrop = false }).Preprocess(img);
        Assert.Equal((5, 9), (r.Height, r.Width));
        Assert.Equal(img.Pixels, r.CroppedRgb);
    }

    [Fact]
    public void StackRejectsMixedSizes()
    {
        var a = new ClipImageProcessor(new PreprocessorConfig { ShortestEdge = 8, CropHeight = 8, CropWidth = 8 }).Preprocess(Random(9, 9, 1));
        var b = new ClipImageProcessor(new PreprocessorConfig { ShortestEdge = 9, CropHeight = 9, CropWidth = 9 }).Preprocess(Random(9, 9, 1));
        Assert.Throws<ArgumentException>(() => PreprocessedImage.Stack([a, b]));
        using var ok = PreprocessedImage.Stack([a, a]);
        Assert.Equal(new long[] { 2, 3, 8, 8 }, ok.shape);
    }
}
