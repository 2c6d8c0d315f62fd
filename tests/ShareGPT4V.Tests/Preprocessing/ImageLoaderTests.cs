using System.Buffers.Binary;
using ShareGPT4V.Preprocessing;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.Formats.Gif;
using SixLabors.ImageSharp.Formats.Jpeg;
using SixLabors.ImageSharp.Formats.Png;
using SixLabors.ImageSharp.PixelFormats;
using Xunit;

namespace ShareGPT4V.Tests.Preprocessing;

public sealed class ImageLoaderTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "sgpt4v-img-" + Guid.NewGuid().ToString("N"));
    private static string Image1 => Fixtures.Path("oracle/hf_tiny/image1.png");

    public ImageLoaderTests() => Directory.CreateDirectory(_dir);
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Write(string name, byte[] bytes)
    {
        var p = Path.Combine(_dir, name);
        File.WriteAllBytes(p, bytes);
        return p;
    }

    private static byte[] Encode<TPixel>(Image<TPixel> image, SixLabors.ImageSharp.Formats.IImageEncoder encoder) where TPixel : unmanaged, IPixel<TPixel>
    {
        using var ms = new MemoryStream();
        image.Save(ms, encoder);
        return ms.ToArray();
    }

    // ---- refusals ----

    [Fact]
    public void MissingFile()
    {
        var path = Path.Combine(_dir, "nope.png");
        var e = Assert.Throws<ImageInputException>(() => ImageLoader.Load(path));
        Assert.Contains("not found", e.Message);
        Assert.Equal(path, e.ImageName);
    }

    [Fact]
    public void DirectoryInsteadOfFile()
    {
        var e = Assert.Throws<ImageInputException>(() => ImageLoader.Load(_dir));
        Assert.Contains("directory", e.Message);
    }

    [Fact]
    public void TextIsNotAnImage()
    {
        var path = Write("notes.png", "this is not an image, just text\n"u8.ToArray());
        var e = Assert.Throws<ImageInputException>(() => ImageLoader.Load(path));
        Assert.Contains("not an image", e.Message);
        Assert.Contains("notes.png", e.Message);
    }

    [Fact]
    public void EmptyFile()
    {
        var e = Assert.Throws<ImageInputException>(() => ImageLoader.Load(Write("empty.png", [])));
        Assert.Contains("empty", e.Message);
    }

    [Fact]
    public void TruncatedPng()
    {
        var bytes = File.ReadAllBytes(Image1);
        var path = Write("half.png", bytes[..(bytes.Length / 2)]);
        var e = Assert.Throws<ImageInputException>(() => ImageLoader.Load(path));
        Assert.Contains("truncated", e.Message);
        Assert.Contains("half.png", e.Message);
    }

    [Fact]
    public void PngCutRightAfterTheHeader()
    {
        var bytes = File.ReadAllBytes(Image1);
        var e = Assert.Throws<ImageInputException>(() => ImageLoader.Load(bytes[..40], "header-only.png"));
        Assert.Contains("truncated", e.Message);
    }

    [Fact]
    public void CorruptPngData()
    {
        var bytes = File.ReadAllBytes(Image1);
        int idat = IndexOf(bytes, "IDAT"u8) + 4;
        for (int i = idat + 10; i < idat + 60; i++) bytes[i] ^= 0x5A; // the chunk CRC no longer matches
        var e = Assert.Throws<ImageInputException>(() => ImageLoader.Load(bytes, "scrambled.png"));
        Assert.Contains("corrupt", e.Message);
        Assert.Contains("scrambled.png", e.Message);
    }

    private static int IndexOf(byte[] haystack, ReadOnlySpan<byte> needle) => haystack.AsSpan().IndexOf(needle);

    [Fact]
    public void TruncatedJpeg()
    {
        using var image = new Image<Rgb24>(64, 48, new Rgb24(200, 30, 60));
        var jpeg = Encode(image, new JpegEncoder { Quality = 90 });
        Assert.Equal(64, ImageLoader.Load(jpeg).Width); // the whole file decodes
        var e = Assert.Throws<ImageInputException>(() => ImageLoader.Load(jpeg[..(jpeg.Length - 40)], "cut.jpg"));
        Assert.Contains("truncated", e.Message);
    }

    [Fact]
    public void OverMaxPixelsWithASmallLimit()
    {
        var e = Assert.Throws<ImageInputException>(() => ImageLoader.Load(Image1, new ImageLoadOptions { MaxPixels = 5000 }));
        Assert.Contains("97x61", e.Message);
        Assert.Contains("MaxPixels", e.Message);
    }

    [Fact]
    public void HugeDimensionsAreRefusedFromTheHeaderAlone()
    {
        // A valid PNG header claiming 100000 x 100000 pixels with almost no data: it must be refused before
        // any pixel buffer (40 GB) is allocated.
        var e = Assert.Throws<ImageInputException>(() => ImageLoader.Load(HeaderOnlyPng(100_000, 100_000), "bomb.png"));
        Assert.Contains("100000x100000", e.Message);
        Assert.Contains("MaxPixels", e.Message);
    }

    [Fact]
    public void OverMaxFileBytesFromPathStreamAndBytes()
    {
        var limit = new ImageLoadOptions { MaxFileBytes = 100 };
        var bytes = File.ReadAllBytes(Image1);
        Assert.Contains("MaxFileBytes", Assert.Throws<ImageInputException>(() => ImageLoader.Load(Image1, limit)).Message);
        Assert.Contains("MaxFileBytes", Assert.Throws<ImageInputException>(() => ImageLoader.Load(bytes, "b.png", limit)).Message);
        Assert.Contains("MaxFileBytes", Assert.Throws<ImageInputException>(() => ImageLoader.Load(new MemoryStream(bytes), "s.png", limit)).Message);
        // A stream that cannot tell its length is cut off while reading.
        Assert.Contains("MaxFileBytes", Assert.Throws<ImageInputException>(() => ImageLoader.Load(new NonSeekableStream(bytes), "pipe", limit)).Message);
    }

    [Fact]
    public void PathStreamAndBytesDecodeTheSame()
    {
        var a = ImageLoader.Load(Image1);
        var bytes = File.ReadAllBytes(Image1);
        Assert.Equal((97, 61), (a.Width, a.Height));
        Assert.Equal(a.Pixels, ImageLoader.Load(bytes).Pixels);
        Assert.Equal(a.Pixels, ImageLoader.Load(new NonSeekableStream(bytes)).Pixels);
    }

    // ---- conversions to RGB, as PIL's convert("RGB") ----

    [Fact]
    public void GreyIsReplicated()
    {
        using var image = new Image<L8>(3, 2);
        image[0, 0] = new L8(0); image[1, 0] = new L8(77); image[2, 1] = new L8(255);
        var rgb = ImageLoader.Load(Encode(image, new PngEncoder { ColorType = PngColorType.Grayscale, BitDepth = PngBitDepth.Bit8 }));
        Assert.Equal(new byte[] { 0, 0, 0, 77, 77, 77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255 }, rgb.Pixels);
    }

    [Fact]
    public void PaletteUsesPaletteColours()
    {
        using var image = new Image<Rgb24>(4, 1);
        image[0, 0] = new Rgb24(255, 0, 0); image[1, 0] = new Rgb24(0, 128, 255);
        image[2, 0] = new Rgb24(10, 20, 30); image[3, 0] = new Rgb24(255, 0, 0);
        var png = Encode(image, new PngEncoder { ColorType = PngColorType.Palette, BitDepth = PngBitDepth.Bit8 });
        Assert.Equal(PngColorType.Palette, SixLabors.ImageSharp.Image.Identify(png).Metadata.GetPngMetadata().ColorType);
        var rgb = ImageLoader.Load(png);
        Assert.Equal(new byte[] { 255, 0, 0, 0, 128, 255, 10, 20, 30, 255, 0, 0 }, rgb.Pixels);
    }

    [Fact]
    public void AlphaIsDroppedNotComposited()
    {
        using var image = new Image<Rgba32>(2, 1);
        image[0, 0] = new Rgba32(10, 20, 30, 128);
        image[1, 0] = new Rgba32(200, 100, 50, 0);
        var rgb = ImageLoader.Load(Encode(image, new PngEncoder { ColorType = PngColorType.RgbWithAlpha, TransparentColorMode = PngTransparentColorMode.Preserve }));
        Assert.Equal(new byte[] { 10, 20, 30, 200, 100, 50 }, rgb.Pixels);
    }

    [Fact]
    public void GreyWithAlphaDropsAlpha()
    {
        using var image = new Image<La16>(1, 1);
        image[0, 0] = new La16(90, 7);
        var rgb = ImageLoader.Load(Encode(image, new PngEncoder { ColorType = PngColorType.GrayscaleWithAlpha, BitDepth = PngBitDepth.Bit8, TransparentColorMode = PngTransparentColorMode.Preserve }));
        Assert.Equal(new byte[] { 90, 90, 90 }, rgb.Pixels);
    }

    [Fact]
    public void SixteenBitGreyClipsLikePil()
    {
        // PIL opens 16-bit grey as I;16 / I and converts to 8 bits by clipping at 255, not by scaling.
        using var image = new Image<L16>(3, 1);
        image[0, 0] = new L16(100); image[1, 0] = new L16(300); image[2, 0] = new L16(65535);
        var png = Encode(image, new PngEncoder { ColorType = PngColorType.Grayscale, BitDepth = PngBitDepth.Bit16 });
        var rgb = ImageLoader.Load(png);
        Assert.Equal(new byte[] { 100, 100, 100, 255, 255, 255, 255, 255, 255 }, rgb.Pixels);
    }

    [Fact]
    public void SixteenBitColourKeepsTheHighByte()
    {
        using var image = new Image<Rgba64>(2, 1);
        image[0, 0] = new Rgba64(0x1234, 0xABCD, 0x00FF, 0xFFFF);
        image[1, 0] = new Rgba64(0xFFFF, 0x8000, 0x7FFF, 0x0100);
        var rgb = ImageLoader.Load(Encode(image, new PngEncoder { ColorType = PngColorType.RgbWithAlpha, BitDepth = PngBitDepth.Bit16, TransparentColorMode = PngTransparentColorMode.Preserve }));
        Assert.Equal(new byte[] { 0x12, 0xAB, 0x00, 0xFF, 0x80, 0x7F }, rgb.Pixels);
    }

    [Fact]
    public void AnimatedGifUsesTheFirstFrame()
    {
        using var image = new Image<Rgba32>(4, 4, new Rgba32(255, 0, 0));
        using (var second = new Image<Rgba32>(4, 4, new Rgba32(0, 0, 255)))
            image.Frames.AddFrame(second.Frames.RootFrame);
        var gif = Encode(image, new GifEncoder());
        var rgb = ImageLoader.Load(gif, "anim.gif");
        Assert.Equal((4, 4), (rgb.Width, rgb.Height));
        Assert.Equal(new byte[] { 255, 0, 0 }, rgb.Pixels[..3]);
        Assert.Equal(new byte[] { 255, 0, 0 }, rgb.Pixels[^3..]);
    }

    [Fact]
    public void WebpFrameCounting()
    {
        Assert.Equal(1, ImageLoader.CountWebpFrames(RiffWebp()));
        Assert.Equal(3, ImageLoader.CountWebpFrames(RiffWebp(("VP8X", 10), ("ANIM", 6), ("ANMF", 17), ("ANMF", 16), ("ANMF", 16))));
    }

    // ---- helpers ----

    private static byte[] RiffWebp(params (string Type, int Size)[] chunks)
    {
        using var ms = new MemoryStream();
        ms.Write("RIFF\0\0\0\0WEBP"u8);
        Span<byte> len = stackalloc byte[4];
        foreach (var (type, size) in chunks)
        {
            ms.Write(System.Text.Encoding.ASCII.GetBytes(type));
            BinaryPrimitives.WriteUInt32LittleEndian(len, (uint)size);
            ms.Write(len);
            ms.Write(new byte[size + (size & 1)]);
        }
        return ms.ToArray();
    }

    /// <summary>PNG signature + a valid IHDR claiming the given size, then IEND.</summary>
    internal static byte[] HeaderOnlyPng(int width, int height)
    {
        using var ms = new MemoryStream();
        ms.Write([0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A]);
        var ihdr = new byte[13];
        BinaryPrimitives.WriteInt32BigEndian(ihdr.AsSpan(0), width);
        BinaryPrimitives.WriteInt32BigEndian(ihdr.AsSpan(4), height);
        ihdr[8] = 8; ihdr[9] = 2; // 8-bit RGB
        WriteChunk(ms, "IHDR", ihdr);
        WriteChunk(ms, "IEND", []);
        return ms.ToArray();
    }

    private static void WriteChunk(Stream s, string type, byte[] data) => PngChunks.Write(s, type, data);

    private sealed class NonSeekableStream(byte[] data) : MemoryStream(data)
    {
        public override bool CanSeek => false;
        public override long Length => throw new NotSupportedException();
    }
}

public class ExifOrientationTests
{
    [Fact]
    public void OrientationIsIgnoredByDefaultAndAppliedOnRequest()
    {
        using var image = new Image<Rgb24>(2, 1);
        image[0, 0] = new Rgb24(255, 0, 0);
        image[1, 0] = new Rgb24(0, 0, 255);
        image.Metadata.ExifProfile = new SixLabors.ImageSharp.Metadata.Profiles.Exif.ExifProfile();
        image.Metadata.ExifProfile.SetValue(SixLabors.ImageSharp.Metadata.Profiles.Exif.ExifTag.Orientation, (ushort)6); // rotate 90° clockwise
        using var ms = new MemoryStream();
        image.SaveAsPng(ms);
        var bytes = ms.ToArray();

        var asStored = ImageLoader.Load(bytes);
        Assert.Equal((2, 1), (asStored.Width, asStored.Height));
        var oriented = ImageLoader.Load(bytes, null, new ImageLoadOptions { ApplyExifOrientation = true });
        Assert.Equal((1, 2), (oriented.Width, oriented.Height));
        Assert.Equal(new byte[] { 255, 0, 0, 0, 0, 255 }, oriented.Pixels); // red on top after a clockwise turn
    }
}
