using System.Buffers.Binary;
using System.IO.Compression;
using ShareGPT4V.Preprocessing;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.Formats;
using SixLabors.ImageSharp.Formats.Gif;
using SixLabors.ImageSharp.Formats.Jpeg;
using SixLabors.ImageSharp.Formats.Png;
using SixLabors.ImageSharp.Formats.Webp;
using SixLabors.ImageSharp.PixelFormats;
using Xunit;

namespace ShareGPT4V.Tests.Safety;

/// <summary>
/// Hostile and unusual images (made here, not committed): decompression bombs refused from the header, truncated and
/// corrupt files of each format refused, extreme sizes and colour models processed. Every refusal is an
/// <see cref="ImageInputException"/> naming the image and, for limits, the option.
/// </summary>
public sealed class HostileImageTests
{
    private static readonly ClipImageProcessor Resize336 = new(new PreprocessorConfig { ShortestEdge = 336, CropHeight = 336, CropWidth = 336 }, ImageAspectMode.Resize);
    private static readonly ClipImageProcessor Pad336 = new(new PreprocessorConfig { ShortestEdge = 336, CropHeight = 336, CropWidth = 336 }, ImageAspectMode.Pad);

    private static byte[] Encode(Image image, IImageEncoder encoder)
    {
        using var ms = new MemoryStream();
        image.Save(ms, encoder);
        return ms.ToArray();
    }

    private static ImageInputException Refused(byte[] bytes, string name, ImageLoadOptions? options = null, params string[] fragments)
    {
        var e = Assert.Throws<ImageInputException>(() => ImageLoader.Load(bytes, name, options));
        Assert.Equal(name, e.ImageName);
        Assert.Contains(name, e.Message);
        foreach (var f in fragments) Assert.Contains(f, e.Message);
        return e;
    }

    // ------------------------------------------------------------------ bombs

    [Fact]
    public void JpegClaimingHugeDimensionsIsRefusedFromItsHeader()
    {
        using var image = new Image<Rgb24>(16, 16, new Rgb24(9, 99, 199));
        var jpeg = Encode(image, new JpegEncoder());
        // Rewrite the frame header (SOF0: FF C0, length, precision, height, width) to 65000 x 65000.
        int sof = jpeg.AsSpan().IndexOf(new byte[] { 0xFF, 0xC0 });
        BinaryPrimitives.WriteUInt16BigEndian(jpeg.AsSpan(sof + 5), 65000);
        BinaryPrimitives.WriteUInt16BigEndian(jpeg.AsSpan(sof + 7), 65000);
        Refused(jpeg, "bomb.jpg", null, "65000x65000", "MaxPixels");
    }

    [Fact]
    public void GifWithAHugeLogicalScreenIsRefusedFromItsHeader()
    {
        using var image = new Image<Rgba32>(2, 2, new Rgba32(1, 2, 3, 255));
        var gif = Encode(image, new GifEncoder());
        BinaryPrimitives.WriteUInt16LittleEndian(gif.AsSpan(6), 65535); // logical screen width
        BinaryPrimitives.WriteUInt16LittleEndian(gif.AsSpan(8), 65535); // and height
        Refused(gif, "screen.gif", null, "65535x65535", "MaxPixels");
    }

    [Fact]
    public void PngTextChunkBombIsRefused()
    {
        // 2x2 image plus a zTXt chunk that inflates to 8 MiB. ImageSharp inflates text chunks whole (a 500 KB file
        // took 53 s and 3.5 GB); PIL refuses text over 1 MB ("Decompressed Data Too Large"), and so do we.
        var zeros = new MemoryStream();
        using (var z = new ZLibStream(zeros, CompressionLevel.SmallestSize, leaveOpen: true))
            z.Write(new byte[8 << 20]);
        var payload = "Comment\0\0"u8.ToArray().Concat(zeros.ToArray()).ToArray();
        var png = PngWithChunk("zTXt", payload);
        Refused(png, "text-bomb.png", null, "text chunk", "1048576");

        // iTXt with its compression flag set is the same thing.
        var itxt = "Comment\0\u0001\0\0\0"u8.ToArray().Concat(zeros.ToArray()).ToArray();
        Refused(PngWithChunk("iTXt", itxt), "itxt-bomb.png", null, "text chunk");

        // A small compressed comment is fine.
        var small = new MemoryStream();
        using (var z = new ZLibStream(small, CompressionLevel.Optimal, leaveOpen: true)) z.Write("hello"u8);
        var ok = ImageLoader.Load(PngWithChunk("zTXt", "Comment\0\0"u8.ToArray().Concat(small.ToArray()).ToArray()), "comment.png");
        Assert.Equal((2, 2), (ok.Width, ok.Height));
    }

    [Fact]
    public void WebpCanvasOverTheLimitIsRefusedFromItsHeader()
    {
        // VP8X: flags, reserved, then canvas width-1 and height-1 as 24-bit values.
        var vp8x = new byte[10];
        WriteUInt24(vp8x.AsSpan(4), 20000 - 1);
        WriteUInt24(vp8x.AsSpan(7), 20000 - 1);
        using var small = new Image<Rgb24>(4, 4);
        var still = Encode(small, new WebpEncoder { FileFormat = WebpFileFormatType.Lossless });
        var webp = Riff(("VP8X", vp8x), ("VP8L", ChunkPayload(still, "VP8L")));
        Refused(webp, "canvas.webp", null, "MaxPixels");
    }

    // ------------------------------------------------------------------ animation limits

    [Fact]
    public void AnimatedGifWithMoreFramesThanTheLimitIsRefused()
    {
        var gif = AnimatedGif(5);
        Assert.Equal(4, ImageLoader.Load(gif, "five.gif", new ImageLoadOptions { MaxFrames = 5 }).Width);
        Refused(gif, "five.gif", new ImageLoadOptions { MaxFrames = 4 }, "5 frames", "MaxFrames");
    }

    [Fact]
    public void AnimatedWebpWithMoreFramesThanTheLimitIsRefused()
    {
        var webp = Riff(("VP8X", new byte[10]), ("ANIM", new byte[6]), ("ANMF", new byte[16]), ("ANMF", new byte[16]), ("ANMF", new byte[16]));
        Refused(webp, "anim.webp", new ImageLoadOptions { MaxFrames = 2 }, "3 frames", "MaxFrames");
    }

    [Fact]
    public void AnimatedWebpWhoseFramesTogetherExceedMaxPixelsIsRefused()
    {
        // The WebP decoder decodes every frame at canvas size: 300 frames of 1000 x 1000 would be 300 megapixels.
        var vp8x = new byte[10];
        vp8x[0] = 0x02; // animation flag
        WriteUInt24(vp8x.AsSpan(4), 1000 - 1);
        WriteUInt24(vp8x.AsSpan(7), 1000 - 1);
        var chunks = new List<(string, byte[])> { ("VP8X", vp8x), ("ANIM", new byte[6]) };
        for (int i = 0; i < 300; i++) chunks.Add(("ANMF", new byte[16]));
        Refused(Riff(chunks.ToArray()), "frames.webp", null, "300 frames", "MaxPixels");
    }

    // ------------------------------------------------------------------ truncated and corrupt

    [Theory]
    [InlineData("png")]
    [InlineData("jpg")]
    [InlineData("webp-lossy")]
    [InlineData("webp-lossless")]
    [InlineData("gif")]
    [InlineData("bmp")]
    public void TruncatedFilesAreRefused(string kind)
    {
        var whole = Sample(kind);
        Assert.Equal(37, ImageLoader.Load(whole, "whole." + kind).Width);
        foreach (var fraction in new[] { 0.25, 0.5, 0.9 })
        {
            var cut = whole[..(int)(whole.Length * fraction)];
            Refused(cut, $"cut-{fraction}.{kind}");
        }
    }

    [Theory]
    [InlineData("png")]
    [InlineData("jpg")]
    [InlineData("webp-lossy")]
    [InlineData("webp-lossless")]
    [InlineData("gif")]
    public void CorruptFilesAreRefusedOrDecodedButNeverThrowAnythingElse(string kind)
    {
        var whole = Sample(kind);
        var rng = new Random(kind.Length * 7919);
        for (int i = 0; i < 150; i++)
        {
            var copy = (byte[])whole.Clone();
            for (int k = 0; k < 1 + rng.Next(4); k++) copy[rng.Next(copy.Length)] = (byte)rng.Next(256);
            try
            {
                var rgb = ImageLoader.Load(copy, $"corrupt{i}.{kind}");
                Assert.Equal((long)rgb.Width * rgb.Height * 3, rgb.Pixels.LongLength);
                _ = Resize336.Preprocess(rgb);
            }
            catch (ImageInputException e)
            {
                Assert.Contains($"corrupt{i}.{kind}", e.Message);
            }
        }
    }

    // ------------------------------------------------------------------ sizes and colour models that must work

    [Theory]
    [InlineData(1, 1)]
    [InlineData(50000, 1)]
    [InlineData(1, 50000)]
    [InlineData(3, 40000)]
    public void ExtremeSizesAreProcessed(int width, int height)
    {
        // A uniform image stays uniform through resize, crop and padding (the pad colour is chosen equal to it),
        // whatever the aspect ratio.
        using var image = new Image<Rgb24>(width, height, new Rgb24(122, 116, 104)); // expand2square's CLIP mean colour
        var png = Encode(image, new PngEncoder());
        var rgb = ImageLoader.Load(png, $"{width}x{height}.png");
        Assert.Equal((width, height), (rgb.Width, rgb.Height));
        foreach (var processor in new[] { Resize336, Pad336 })
        {
            var p = processor.Preprocess(rgb);
            Assert.Equal((336, 336), (p.Width, p.Height));
            Assert.All(Pixels(p.CroppedRgb), px => Assert.Equal((122, 116, 104), px));
        }
    }

    [Fact]
    public void ThinImagesWithoutACenterCropAreRefusedNamingTheLimit()
    {
        var noCrop = new ClipImageProcessor(new PreprocessorConfig { ShortestEdge = 336, DoCenterCrop = false });
        var rgb = new RgbImage(50000, 1, new byte[50000 * 3]);
        var e = Assert.Throws<ImageInputException>(() => noCrop.Preprocess(rgb));
        Assert.Contains("16800000x336", e.Message);
        Assert.Contains(PreprocessorConfig.MaxSide.ToString(), e.Message);
    }

    [Fact]
    public void CmykJpegIsConvertedToRgb()
    {
        using var image = new Image<Rgb24>(24, 16);
        for (int x = 0; x < 24; x++)
            for (int y = 0; y < 16; y++)
                image[x, y] = x < 12 ? new Rgb24(220, 30, 40) : new Rgb24(20, 60, 210);
        var jpeg = Encode(image, new JpegEncoder { ColorType = JpegColorType.Cmyk, Quality = 100 });
        var rgb = ImageLoader.Load(jpeg, "cmyk.jpg");
        Assert.Equal((24, 16), (rgb.Width, rgb.Height));
        // JPEG is lossy: the colours come back close, not exact.
        AssertClose((220, 30, 40), Pixel(rgb, 3, 8), 12);
        AssertClose((20, 60, 210), Pixel(rgb, 20, 8), 12);
    }

    [Fact]
    public void PaletteWithTransparencyAndSixteenBitGreyAlphaAreConverted()
    {
        using var image = new Image<Rgba32>(3, 1);
        image[0, 0] = new Rgba32(200, 10, 10, 255);
        image[1, 0] = new Rgba32(10, 200, 10, 0);   // fully transparent: PIL's convert("RGB") keeps the colour
        image[2, 0] = new Rgba32(10, 10, 200, 128);
        var palette = ImageLoader.Load(Encode(image, new PngEncoder { ColorType = PngColorType.Palette, TransparentColorMode = PngTransparentColorMode.Preserve }), "palette.png");
        Assert.Equal(new byte[] { 200, 10, 10, 10, 200, 10, 10, 10, 200 }, palette.Pixels);

        using var grey = new Image<La32>(2, 1);
        grey[0, 0] = new La32(0x0080, 0xFFFF); // 16-bit grey 128 clips like PIL: under 255 stays
        grey[1, 0] = new La32(0xFF00, 0x0000);
        var ga = ImageLoader.Load(Encode(grey, new PngEncoder { ColorType = PngColorType.GrayscaleWithAlpha, BitDepth = PngBitDepth.Bit16, TransparentColorMode = PngTransparentColorMode.Preserve }), "grey-alpha.png");
        Assert.Equal(6, ga.Pixels.Length);
        Assert.Equal(ga.Pixels[0], ga.Pixels[1]);
        Assert.Equal(ga.Pixels[3], ga.Pixels[4]);
    }

    // ------------------------------------------------------------------ helpers

    private static byte[] Sample(string kind)
    {
        using var image = new Image<Rgba32>(37, 23);
        for (int y = 0; y < 23; y++)
            for (int x = 0; x < 37; x++)
                image[x, y] = new Rgba32((byte)(x * 7), (byte)(y * 11), (byte)(x ^ y), 255);
        return kind switch
        {
            "png" => Encode(image, new PngEncoder()),
            "jpg" => Encode(image, new JpegEncoder { Quality = 85 }),
            "webp-lossy" => Encode(image, new WebpEncoder { FileFormat = WebpFileFormatType.Lossy }),
            "webp-lossless" => Encode(image, new WebpEncoder { FileFormat = WebpFileFormatType.Lossless }),
            "gif" => Encode(image, new GifEncoder()),
            "bmp" => Encode(image, new SixLabors.ImageSharp.Formats.Bmp.BmpEncoder()),
            _ => throw new ArgumentException(kind),
        };
    }

    private static byte[] AnimatedGif(int frames)
    {
        using var image = new Image<Rgba32>(4, 3, new Rgba32(250, 0, 0, 255));
        for (int i = 1; i < frames; i++)
        {
            using var next = new Image<Rgba32>(4, 3, new Rgba32(0, (byte)(40 * i), 250, 255));
            image.Frames.AddFrame(next.Frames.RootFrame);
        }
        return Encode(image, new GifEncoder());
    }

    private static byte[] PngWithChunk(string type, byte[] data)
    {
        using var image = new Image<Rgb24>(2, 2, new Rgb24(5, 6, 7));
        var png = Encode(image, new PngEncoder());
        int iend = png.Length - 12;
        using var ms = new MemoryStream();
        ms.Write(png.AsSpan(0, iend));
        ShareGPT4V.Tests.Preprocessing.PngChunks.Write(ms, type, data);
        ms.Write(png.AsSpan(iend));
        return ms.ToArray();
    }

    private static byte[] Riff(params (string Type, byte[] Data)[] chunks)
    {
        using var ms = new MemoryStream();
        ms.Write("RIFF\0\0\0\0WEBP"u8);
        Span<byte> len = stackalloc byte[4];
        foreach (var (type, data) in chunks)
        {
            ms.Write(System.Text.Encoding.ASCII.GetBytes(type));
            BinaryPrimitives.WriteUInt32LittleEndian(len, (uint)data.Length);
            ms.Write(len);
            ms.Write(data);
            if ((data.Length & 1) == 1) ms.WriteByte(0);
        }
        var bytes = ms.ToArray();
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(4), (uint)(bytes.Length - 8));
        return bytes;
    }

    /// <summary>The payload of the first chunk of <paramref name="type"/> in a RIFF/WebP file.</summary>
    private static byte[] ChunkPayload(byte[] webp, string type)
    {
        int pos = 12;
        while (pos + 8 <= webp.Length)
        {
            int size = (int)BinaryPrimitives.ReadUInt32LittleEndian(webp.AsSpan(pos + 4));
            if (System.Text.Encoding.ASCII.GetString(webp, pos, 4) == type) return webp.AsSpan(pos + 8, size).ToArray();
            pos += 8 + size + (size & 1);
        }
        throw new ArgumentException($"no {type} chunk");
    }

    private static void WriteUInt24(Span<byte> b, int v) { b[0] = (byte)v; b[1] = (byte)(v >> 8); b[2] = (byte)(v >> 16); }

    private static IEnumerable<(int, int, int)> Pixels(byte[] hwc)
    {
        for (int i = 0; i < hwc.Length; i += 3) yield return (hwc[i], hwc[i + 1], hwc[i + 2]);
    }

    private static (int, int, int) Pixel(RgbImage image, int x, int y)
    {
        int o = (y * image.Width + x) * 3;
        return (image.Pixels[o], image.Pixels[o + 1], image.Pixels[o + 2]);
    }

    private static void AssertClose((int R, int G, int B) expected, (int R, int G, int B) actual, int tolerance) =>
        Assert.True(Math.Abs(expected.R - actual.R) <= tolerance && Math.Abs(expected.G - actual.G) <= tolerance && Math.Abs(expected.B - actual.B) <= tolerance,
            $"expected about {expected}, got {actual}");
}

/// <summary>The padded canvas is never materialised; its shortcuts must give exactly the pixels of a materialised one.</summary>
public sealed class PaddedCanvasTests
{
    [Theory]
    [InlineData(7, 300)]
    [InlineData(300, 7)]
    [InlineData(1, 999)]
    [InlineData(40, 41)]
    public void VirtualPaddingEqualsAMaterialisedSquare(int width, int height)
    {
        var rng = new Random(width * 1000 + height);
        var pixels = new byte[width * height * 3];
        rng.NextBytes(pixels);
        var image = new RgbImage(width, height, pixels);
        foreach (var filter in new[] { ResampleFilter.Bicubic, ResampleFilter.Bilinear, ResampleFilter.Lanczos })
        {
            var config = new PreprocessorConfig { ShortestEdge = 64, CropHeight = 64, CropWidth = 64, Resample = filter };
            var padded = new ClipImageProcessor(config, ImageAspectMode.Pad).Preprocess(image);

            // expand2square by hand: background canvas, image pasted at ((side - w) // 2, (side - h) // 2).
            int side = Math.Max(width, height);
            var (r, g, b) = config.PadBackground;
            var square = new byte[side * side * 3];
            for (int i = 0; i < side * side; i++) { square[i * 3] = r; square[i * 3 + 1] = g; square[i * 3 + 2] = b; }
            int ox = (side - width) / 2, oy = (side - height) / 2;
            for (int y = 0; y < height; y++)
                pixels.AsSpan(y * width * 3, width * 3).CopyTo(square.AsSpan(((oy + y) * side + ox) * 3));
            var reference = new ClipImageProcessor(config, ImageAspectMode.Resize).Preprocess(new RgbImage(side, side, square));

            Assert.Equal(reference.CroppedRgb, padded.CroppedRgb);
            Assert.Equal(reference.Data, padded.Data);
        }
    }
}
