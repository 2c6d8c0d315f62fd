using System.Buffers.Binary;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.Formats;
using SixLabors.ImageSharp.Formats.Bmp;
using SixLabors.ImageSharp.Formats.Gif;
using SixLabors.ImageSharp.Formats.Jpeg;
using SixLabors.ImageSharp.Formats.Png;
using SixLabors.ImageSharp.Formats.Tiff;
using SixLabors.ImageSharp.Formats.Webp;
using SixLabors.ImageSharp.Metadata;
using SixLabors.ImageSharp.PixelFormats;
using SixLabors.ImageSharp.Processing;

namespace ShareGPT4V.Preprocessing;

/// <summary>
/// Decodes images (PNG, JPEG, GIF, BMP, TIFF, WebP, TGA, PBM) into 8-bit RGB the way PIL's <c>Image.convert("RGB")</c> does:
/// grey is replicated, palettes are looked up, alpha is dropped (not composited), 16-bit colour keeps the high byte and
/// 16-bit grey is clipped to 255 (PIL's I;16 to L conversion). Only the first frame of an animation is used.
/// Every failure is an <see cref="ImageInputException"/> naming the image.
/// </summary>
internal static class ImageLoader
{
    // Shared, never mutated after construction: safe to use from many threads.
    private static readonly SixLabors.ImageSharp.Configuration DecoderConfiguration = CreateConfiguration();

    private static SixLabors.ImageSharp.Configuration CreateConfiguration()
    {
        var c = SixLabors.ImageSharp.Configuration.Default.Clone();
        // Decode only the first frame of multi-frame formats that allow it; we never use the others.
        c.ImageFormatsManager.SetDecoder(GifFormat.Instance, new GifDecoder { DecodingMode = FrameDecodingMode.First });
        c.ImageFormatsManager.SetDecoder(TiffFormat.Instance, new TiffDecoder { DecodingMode = FrameDecodingMode.First });
        return c;
    }

    /// <summary>Reads and decodes an image file.</summary>
    /// <exception cref="ImageInputException">Missing, unreadable, not an image, corrupt, or over a limit.</exception>
    public static RgbImage Load(string path, ImageLoadOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        options ??= ImageLoadOptions.Default;
        options.Validate();
        byte[] bytes;
        try
        {
            var info = new FileInfo(path);
            if (!info.Exists)
                throw new ImageInputException(Directory.Exists(path) ? "The image path is a directory, not a file" : "Image file not found", path);
            if (info.Length > options.MaxFileBytes)
                throw OverFileLimit(info.Length, options, path);
            bytes = File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or System.Security.SecurityException)
        {
            throw new ImageInputException($"Cannot read the image file: {e.Message}", path, e);
        }
        return Decode(bytes, path, options);
    }

    /// <summary>Reads a stream to its end (at most <see cref="ImageLoadOptions.MaxFileBytes"/>) and decodes it. The stream is not disposed.</summary>
    /// <param name="stream">The encoded image.</param>
    /// <param name="name">A name for error messages (a file name or URL); "stream" when null.</param>
    /// <param name="options">Limits; <see cref="ImageLoadOptions.Default"/> when null.</param>
    /// <exception cref="ImageInputException">Unreadable, not an image, corrupt, or over a limit.</exception>
    public static RgbImage Load(Stream stream, string? name = null, ImageLoadOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(stream);
        options ??= ImageLoadOptions.Default;
        options.Validate();
        name ??= "stream";
        byte[] bytes;
        try
        {
            if (stream.CanSeek && stream.Length - stream.Position > options.MaxFileBytes)
                throw OverFileLimit(stream.Length - stream.Position, options, name);
            using var buffer = new MemoryStream();
            var chunk = new byte[81920];
            int n;
            while ((n = stream.Read(chunk, 0, chunk.Length)) > 0)
            {
                if (buffer.Length + n > options.MaxFileBytes)
                    throw new ImageInputException($"The image is larger than the limit of {options.MaxFileBytes} bytes (ImageLoadOptions.MaxFileBytes)", name);
                buffer.Write(chunk, 0, n);
            }
            bytes = buffer.ToArray();
        }
        catch (Exception e) when (e is IOException or NotSupportedException or ObjectDisposedException)
        {
            throw new ImageInputException($"Cannot read the image stream: {e.Message}", name, e);
        }
        return Decode(bytes, name, options);
    }

    /// <summary>Decodes an encoded image held in memory.</summary>
    /// <exception cref="ImageInputException">Not an image, corrupt, or over a limit.</exception>
    public static RgbImage Load(byte[] encoded, string? name = null, ImageLoadOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(encoded);
        options ??= ImageLoadOptions.Default;
        options.Validate();
        name ??= "bytes";
        if (encoded.LongLength > options.MaxFileBytes) throw OverFileLimit(encoded.LongLength, options, name);
        return Decode(encoded, name, options);
    }

    private static ImageInputException OverFileLimit(long length, ImageLoadOptions o, string name) =>
        new($"The image is {length} bytes, over the limit of {o.MaxFileBytes} bytes (ImageLoadOptions.MaxFileBytes)", name);

    private static RgbImage Decode(byte[] bytes, string name, ImageLoadOptions options)
    {
        if (bytes.Length == 0) throw new ImageInputException("The image is empty (0 bytes)", name);

        // ImageSharp inflates PNG text chunks whole, even to identify the image (a 500 KB file inflating to 512 MB
        // took 53 s and 3.5 GB). PIL refuses text chunks over 1 MB; check before ImageSharp sees the file.
        if (bytes.AsSpan().StartsWith(PngSignature) && FindPngTextBomb(bytes) is { } textProblem)
            throw new ImageInputException($"The PNG file {textProblem} (a decompression bomb; PIL refuses it too)", name);
        // WebP: the container says how many frames the decoder would decode and at what canvas size.
        if (IsRiffWebp(bytes)) CheckWebpContainer(bytes, name, options);

        // 1. Header only: format, size, bit depth. Refuse oversized images before allocating pixels.
        IImageInfo? info;
        IImageFormat? format;
        try
        {
            using var ms = new MemoryStream(bytes, writable: false);
            info = Image.Identify(DecoderConfiguration, ms, out format);
        }
        catch (UnknownImageFormatException e) { throw NotAnImage(name, e); }
        catch (Exception e) when (IsDecoderFailure(e))
        {
            throw new ImageInputException($"The image header is corrupt or truncated: {e.Message}", name, e);
        }
        if (info is null || format is null) throw NotAnImage(name, null);
        if (info.Width <= 0 || info.Height <= 0)
            throw new ImageInputException($"The image has an invalid size {info.Width}x{info.Height}", name);
        long pixels = (long)info.Width * info.Height;
        if (pixels > options.MaxPixels)
            throw new ImageInputException(
                $"The image is {info.Width}x{info.Height} = {pixels} pixels, over the limit of {options.MaxPixels} pixels (ImageLoadOptions.MaxPixels)", name);

        // ImageSharp is lenient with truncated files (missing rows come out blank); PIL refuses them. Do as PIL does.
        if (format is PngFormat && FindPngTruncation(bytes) is { } pngProblem)
            throw new ImageInputException($"The PNG file is corrupt or truncated: {pngProblem}", name);
        if (format is JpegFormat && !JpegHasEndAfterLastScan(bytes))
            throw new ImageInputException("The JPEG file is truncated (no end-of-image marker after the image data)", name);
        if (format is BmpFormat && FindBmpTruncation(bytes) is { } bmpProblem)
            throw new ImageInputException($"The BMP file is truncated: {bmpProblem}", name);
        if (format is GifFormat)
        {
            // Only the first frame is decoded, but the frame count is still bounded (ImageSharp walks every frame).
            var (gifFrames, firstComplete) = WalkGif(bytes);
            if (!firstComplete)
                throw new ImageInputException("The GIF file is truncated (the first frame's image data is incomplete)", name);
            if (gifFrames > options.MaxFrames)
                throw new ImageInputException($"The animated image has {gifFrames} frames, over the limit of {options.MaxFrames} (ImageLoadOptions.MaxFrames)", name);
        }

        // 2. Pixels, converted the way PIL converts to RGB.
        try
        {
            using var ms = new MemoryStream(bytes, writable: false);
            return ChooseConversion(info, format) switch
            {
                Conversion.Grey16Clip => FromGrey16Clipped(Orient(Image.Load<L16>(DecoderConfiguration, ms), options)),
                Conversion.HighByte16 => FromRgba64HighByte(Orient(Image.Load<Rgba64>(DecoderConfiguration, ms), options)),
                _ => FromRgb24(Orient(Image.Load<Rgb24>(DecoderConfiguration, ms), options)),
            };
        }
        catch (ImageInputException) { throw; }
        catch (UnknownImageFormatException e) { throw NotAnImage(name, e); }
        catch (Exception e) when (IsDecoderFailure(e))
        {
            throw new ImageInputException($"The image data is corrupt or truncated: {e.Message}", name, e);
        }
    }

    private static ImageInputException NotAnImage(string name, Exception? inner) =>
        new("The data is not an image in a supported format (PNG, JPEG, GIF, BMP, TIFF, WebP, TGA, PBM)", name, inner);

    // ImageSharp reports malformed input with a range of exception types, and some corrupt files make its decoders
    // fail with NullReferenceException (a JPEG without a frame header, a WebP without an image chunk). Whatever a
    // decoder throws on untrusted bytes is a bad image, except running out of memory or being cancelled.
    private static bool IsDecoderFailure(Exception e) =>
        e is not (OutOfMemoryException or OperationCanceledException or ImageInputException);

    private enum Conversion { Rgb8, Grey16Clip, HighByte16 }

    private static Conversion ChooseConversion(IImageInfo info, IImageFormat format)
    {
        if (format is PngFormat)
        {
            var png = info.Metadata.GetPngMetadata();
            if (png.BitDepth == PngBitDepth.Bit16)
                // PIL opens 16-bit grey PNGs as mode I;16 (or I), whose conversion to RGB clips at 255;
                // 16-bit RGB, RGBA and grey+alpha are opened by keeping the most significant byte.
                return png.ColorType == PngColorType.Grayscale ? Conversion.Grey16Clip : Conversion.HighByte16;
            return Conversion.Rgb8;
        }
        // Other formats with more than 8 bits per channel (TIFF, PGM): keep the high byte.
        return info.PixelType?.BitsPerPixel > 32 ? Conversion.HighByte16 : Conversion.Rgb8;
    }

    // Rotations and flips move whole pixels, so this is exact (PIL's ImageOps.exif_transpose gives the same pixels).
    private static Image<TPixel> Orient<TPixel>(Image<TPixel> image, ImageLoadOptions options) where TPixel : unmanaged, IPixel<TPixel>
    {
        if (options.ApplyExifOrientation) image.Mutate(x => x.AutoOrient());
        return image;
    }

    private static RgbImage FromRgb24(Image<Rgb24> image)
    {
        using (image)
        {
            int w = image.Width, h = image.Height;
            var pixels = new byte[checked(w * h * 3)];
            image.ProcessPixelRows(a =>
            {
                for (int y = 0; y < h; y++)
                {
                    var row = a.GetRowSpan(y);
                    System.Runtime.InteropServices.MemoryMarshal.AsBytes(row).CopyTo(pixels.AsSpan(y * w * 3, w * 3));
                }
            });
            return new RgbImage(w, h, pixels);
        }
    }

    private static RgbImage FromGrey16Clipped(Image<L16> image)
    {
        using (image)
        {
            int w = image.Width, h = image.Height;
            var pixels = new byte[checked(w * h * 3)];
            image.ProcessPixelRows(a =>
            {
                for (int y = 0; y < h; y++)
                {
                    var row = a.GetRowSpan(y);
                    int o = y * w * 3;
                    for (int x = 0; x < w; x++, o += 3)
                    {
                        byte v = (byte)Math.Min(row[x].PackedValue, (ushort)255);
                        pixels[o] = pixels[o + 1] = pixels[o + 2] = v;
                    }
                }
            });
            return new RgbImage(w, h, pixels);
        }
    }

    private static RgbImage FromRgba64HighByte(Image<Rgba64> image)
    {
        using (image)
        {
            int w = image.Width, h = image.Height;
            var pixels = new byte[checked(w * h * 3)];
            image.ProcessPixelRows(a =>
            {
                for (int y = 0; y < h; y++)
                {
                    var row = a.GetRowSpan(y);
                    int o = y * w * 3;
                    for (int x = 0; x < w; x++, o += 3)
                    {
                        pixels[o] = (byte)(row[x].R >> 8);
                        pixels[o + 1] = (byte)(row[x].G >> 8);
                        pixels[o + 2] = (byte)(row[x].B >> 8);
                    }
                }
            });
            return new RgbImage(w, h, pixels);
        }
    }

    /// <summary>Walks the PNG chunk list; returns why it is broken, or null when every chunk up to IEND is complete.</summary>
    internal static string? FindPngTruncation(ReadOnlySpan<byte> b)
    {
        long pos = 8; // signature
        bool sawData = false;
        while (true)
        {
            if (pos + 8 > b.Length) return "the file ends before the IEND chunk";
            uint length = BinaryPrimitives.ReadUInt32BigEndian(b.Slice((int)pos, 4));
            var type = b.Slice((int)pos + 4, 4);
            long end = pos + 12 + (long)length;
            if (length > int.MaxValue || end > b.Length)
                return $"chunk '{System.Text.Encoding.ASCII.GetString(type)}' at offset {pos} runs past the end of the file";
            if (type.SequenceEqual("IDAT"u8)) sawData = true;
            if (type.SequenceEqual("IEND"u8)) return sawData ? null : "there is no image data (IDAT)";
            pos = end;
        }
    }

    /// <summary>True when an end-of-image marker follows the start of the last scan (entropy-coded data cannot contain either marker).</summary>
    internal static bool JpegHasEndAfterLastScan(ReadOnlySpan<byte> b)
    {
        int lastScan = -1;
        for (int i = b.Length - 2; i >= 0; i--)
            if (b[i] == 0xFF && b[i + 1] == 0xDA) { lastScan = i; break; }
        if (lastScan < 0) return false;
        for (int i = lastScan + 2; i + 1 < b.Length; i++)
            if (b[i] == 0xFF && b[i + 1] == 0xD9) return true;
        return false;
    }

    private static ReadOnlySpan<byte> PngSignature => [0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A];

    /// <summary>Largest inflated text chunk accepted (PIL's <c>MAX_TEXT_CHUNK</c>).</summary>
    internal const int MaxPngTextChunkBytes = 1 << 20;
    /// <summary>Largest total of text chunks accepted (PIL's <c>MAX_TEXT_MEMORY</c>).</summary>
    internal const long MaxPngTextTotalBytes = 64L << 20;

    /// <summary>
    /// Inflates the compressed text chunks (zTXt, iTXt with its compression flag) of a PNG, each at most one byte past
    /// the limit, and returns what is wrong when one inflates beyond <see cref="MaxPngTextChunkBytes"/> or all text
    /// together beyond <see cref="MaxPngTextTotalBytes"/>; null otherwise. Structural damage is left to the decoder.
    /// </summary>
    internal static string? FindPngTextBomb(byte[] b)
    {
        long pos = 8, total = 0;
        while (pos + 8 <= b.Length)
        {
            uint length = BinaryPrimitives.ReadUInt32BigEndian(b.AsSpan((int)pos, 4));
            long end = pos + 12 + (long)length;
            if (length > int.MaxValue || end > b.Length) return null;
            var type = System.Text.Encoding.ASCII.GetString(b, (int)pos + 4, 4);
            var data = new ReadOnlySpan<byte>(b, (int)pos + 8, (int)length);
            long text = type switch
            {
                "tEXt" => data.Length,
                "zTXt" => data.IndexOf((byte)0) is var k && k >= 0 && k + 2 <= data.Length ? InflatedLength(b, (int)pos + 8 + k + 2, data.Length - k - 2) : 0,
                "iTXt" => ITxtTextLength(b, (int)pos + 8, data),
                _ => 0,
            };
            if (text > MaxPngTextChunkBytes)
                return $"has a {type} text chunk at offset {pos} that inflates to more than the {MaxPngTextChunkBytes} bytes accepted";
            total += text;
            if (total > MaxPngTextTotalBytes)
                return $"has text chunks that together exceed the {MaxPngTextTotalBytes} bytes accepted";
            if (type == "IEND") return null;
            pos = end;
        }
        return null;
    }

    // iTXt: keyword \0, compression flag, method, language \0, translated keyword \0, text.
    private static long ITxtTextLength(byte[] b, int start, ReadOnlySpan<byte> data)
    {
        int k = data.IndexOf((byte)0);
        if (k < 0 || k + 3 > data.Length) return 0;
        bool compressed = data[k + 1] == 1;
        int lang = data[(k + 3)..].IndexOf((byte)0);
        if (lang < 0) return 0;
        int tk = k + 3 + lang + 1;
        int translated = data[tk..].IndexOf((byte)0);
        if (translated < 0) return 0;
        int textStart = tk + translated + 1;
        return compressed ? InflatedLength(b, start + textStart, data.Length - textStart) : data.Length - textStart;
    }

    /// <summary>Bytes a zlib stream inflates to, counting no further than one past the per-chunk limit; 0 when it is not valid zlib.</summary>
    private static long InflatedLength(byte[] b, int offset, int count)
    {
        try
        {
            using var z = new System.IO.Compression.ZLibStream(new MemoryStream(b, offset, count, writable: false), System.IO.Compression.CompressionMode.Decompress);
            var buffer = new byte[81920];
            long n = 0;
            int read;
            while (n <= MaxPngTextChunkBytes && (read = z.Read(buffer, 0, buffer.Length)) > 0) n += read;
            return n;
        }
        catch (InvalidDataException) { return 0; }
    }

    /// <summary>
    /// Walks a GIF's blocks: the number of image descriptors (frames) and whether the first frame's data is complete.
    /// A malformed block stops the walk (the decoder then judges the file).
    /// </summary>
    internal static (int Frames, bool FirstFrameComplete) WalkGif(ReadOnlySpan<byte> b)
    {
        int frames = 0;
        bool firstComplete = true;
        long pos = 13; // "GIF8?a" + logical screen descriptor
        if (b.Length < 13) return (0, false);
        if ((b[10] & 0x80) != 0) pos += 3L << ((b[10] & 7) + 1);
        // Skips data sub-blocks from pos; false when they run past the end.
        bool SkipSubBlocks(ReadOnlySpan<byte> s, ref long p)
        {
            while (true)
            {
                if (p >= s.Length) return false;
                int n = s[(int)p];
                p += 1 + n;
                if (n == 0) return p <= s.Length;
            }
        }
        while (pos < b.Length)
        {
            byte block = b[(int)pos];
            if (block == 0x3B) break; // trailer
            if (block == 0x21) // extension: label, then sub-blocks
            {
                pos += 2;
                if (!SkipSubBlocks(b, ref pos)) break;
                continue;
            }
            if (block != 0x2C) break; // not a GIF block: leave it to the decoder
            frames++;
            if (pos + 10 > b.Length) { if (frames == 1) firstComplete = false; break; }
            byte packed = b[(int)pos + 9];
            pos += 10;
            if ((packed & 0x80) != 0) pos += 3L << ((packed & 7) + 1);
            pos += 1; // LZW minimum code size
            if (!SkipSubBlocks(b, ref pos)) { if (frames == 1) firstComplete = false; break; }
        }
        return (frames, frames > 0 && firstComplete);
    }

    private static bool IsRiffWebp(ReadOnlySpan<byte> b) => b.Length >= 12 && b.StartsWith("RIFF"u8) && b[8..12].SequenceEqual("WEBP"u8);

    /// <summary>
    /// Refuses a WebP whose container is truncated, has more frames than allowed, or whose canvas (times the frame
    /// count, since the decoder decodes every frame at canvas size) exceeds the pixel limit, all before decoding.
    /// </summary>
    private static void CheckWebpContainer(byte[] b, string name, ImageLoadOptions options)
    {
        long declared = BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(4));
        if (declared + 8 > b.Length)
            throw new ImageInputException($"The WebP file is truncated: its RIFF header declares {declared + 8} bytes but the file has {b.Length}", name);
        long pos = 12;
        long canvasW = 0, canvasH = 0;
        while (pos + 8 <= b.Length)
        {
            uint size = BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan((int)pos + 4, 4));
            if (pos + 8 + size > b.Length)
                throw new ImageInputException(
                    $"The WebP file is truncated: chunk '{System.Text.Encoding.ASCII.GetString(b, (int)pos, 4)}' at offset {pos} runs past the end", name);
            if (b.AsSpan((int)pos, 4).SequenceEqual("VP8X"u8) && size >= 10)
            {
                var c = b.AsSpan((int)pos + 8 + 4, 6);
                canvasW = 1 + (c[0] | c[1] << 8 | c[2] << 16);
                canvasH = 1 + (c[3] | c[4] << 8 | c[5] << 16);
            }
            pos += 8 + (long)size + (size & 1);
        }
        int frames = CountWebpFrames(b);
        if (frames > options.MaxFrames)
            throw new ImageInputException($"The animated image has {frames} frames, over the limit of {options.MaxFrames} (ImageLoadOptions.MaxFrames)", name);
        long total = frames * canvasW * canvasH;
        if (total > options.MaxPixels)
            throw new ImageInputException(frames == 1
                ? $"The image canvas is {canvasW}x{canvasH} = {total} pixels, over the limit of {options.MaxPixels} pixels (ImageLoadOptions.MaxPixels)"
                : $"The animated image has {frames} frames of {canvasW}x{canvasH}, {total} pixels to decode, over the limit of {options.MaxPixels} pixels (ImageLoadOptions.MaxPixels)", name);
    }

    /// <summary>
    /// For uncompressed BMPs (BI_RGB, BI_BITFIELDS), whether the pixel rows the header promises are all in the file;
    /// ImageSharp fills missing rows with black where PIL refuses the file. Null when complete or not checkable.
    /// </summary>
    internal static string? FindBmpTruncation(ReadOnlySpan<byte> b)
    {
        if (b.Length < 30) return $"{b.Length} bytes is shorter than the BMP headers";
        long offset = BinaryPrimitives.ReadUInt32LittleEndian(b[10..]);
        uint dibSize = BinaryPrimitives.ReadUInt32LittleEndian(b[14..]);
        if (dibSize < 40 || b.Length < 14 + 40) return null; // OS/2 headers: let the decoder judge
        long width = BinaryPrimitives.ReadInt32LittleEndian(b[18..]);
        long height = Math.Abs((long)BinaryPrimitives.ReadInt32LittleEndian(b[22..]));
        int bpp = BinaryPrimitives.ReadUInt16LittleEndian(b[28..]);
        uint compression = BinaryPrimitives.ReadUInt32LittleEndian(b[30..]);
        if (compression is not (0 or 3) || width <= 0 || bpp is 0 or > 32) return null;
        long stride = (width * bpp + 31) / 32 * 4;
        long needed = offset + stride * height;
        return needed > b.Length ? $"the pixel rows need {needed} bytes but the file has {b.Length}" : null;
    }

    /// <summary>Counts ANMF chunks in a RIFF/WebP container (1 for a still image).</summary>
    internal static int CountWebpFrames(ReadOnlySpan<byte> b)
    {
        int frames = 0;
        long pos = 12; // "RIFF" size "WEBP"
        while (pos + 8 <= b.Length)
        {
            var type = b.Slice((int)pos, 4);
            uint size = BinaryPrimitives.ReadUInt32LittleEndian(b.Slice((int)pos + 4, 4));
            if (type.SequenceEqual("ANMF"u8)) frames++;
            pos += 8 + (long)size + (size & 1);
        }
        return Math.Max(frames, 1);
    }
}
