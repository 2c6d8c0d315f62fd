namespace ShareGPT4V.Preprocessing;

/// <summary>A decoded 8-bit RGB image, row-major, 3 bytes per pixel (what PIL calls mode "RGB").</summary>
internal sealed class RgbImage
{
    /// <summary>Width in pixels.</summary>
    public int Width { get; }
    /// <summary>Height in pixels.</summary>
    public int Height { get; }
    /// <summary>Pixels as R, G, B bytes, row after row (HWC). Length = Width * Height * 3.</summary>
    public byte[] Pixels { get; }

    /// <summary>Wraps an existing HWC RGB buffer (not copied).</summary>
    public RgbImage(int width, int height, byte[] pixels)
    {
        ArgumentNullException.ThrowIfNull(pixels);
        if (width <= 0 || height <= 0)
            throw new ArgumentOutOfRangeException(nameof(width), $"Image size must be positive, got {width}x{height}");
        if (pixels.LongLength != (long)width * height * 3)
            throw new ArgumentException($"Expected {(long)width * height * 3} bytes for a {width}x{height} RGB image, got {pixels.LongLength}", nameof(pixels));
        Width = width;
        Height = height;
        Pixels = pixels;
    }

    /// <summary>One row of pixels (Width * 3 bytes).</summary>
    public ReadOnlySpan<byte> Row(int y) => Pixels.AsSpan(y * Width * 3, Width * 3);
}
