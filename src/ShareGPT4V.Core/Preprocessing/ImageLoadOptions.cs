namespace ShareGPT4V.Preprocessing;

/// <summary>Limits applied when decoding an image, so that a hostile or accidental input cannot exhaust memory.</summary>
public sealed record ImageLoadOptions
{
    /// <summary>Largest accepted encoded size in bytes (default 64 MiB).</summary>
    public long MaxFileBytes { get; init; } = 64L * 1024 * 1024;

    /// <summary>Largest accepted width * height, checked from the header before any pixel is decoded (default 64 megapixels).</summary>
    public long MaxPixels { get; init; } = 64L * 1000 * 1000;

    /// <summary>
    /// Largest accepted number of frames in an animated file (default 1000). Only the first frame is used;
    /// GIF and TIFF decode only that frame, but the WebP decoder decodes every frame, so this bounds its work.
    /// </summary>
    public int MaxFrames { get; init; } = 1000;

    /// <summary>
    /// Rotate/flip the image as its EXIF orientation tag says (default false). LLaVA/ShareGPT4V open images with
    /// <c>Image.open(...).convert("RGB")</c>, which ignores the tag; transformers' <c>load_image</c> applies it
    /// (<c>ImageOps.exif_transpose</c>). Pick the one that matches the pipeline you compare with.
    /// </summary>
    public bool ApplyExifOrientation { get; init; }

    /// <summary>The default limits.</summary>
    public static ImageLoadOptions Default { get; } = new();

    internal void Validate()
    {
        if (MaxFileBytes <= 0) throw new ArgumentOutOfRangeException(nameof(MaxFileBytes), MaxFileBytes, "must be positive");
        if (MaxPixels <= 0) throw new ArgumentOutOfRangeException(nameof(MaxPixels), MaxPixels, "must be positive");
        if (MaxFrames <= 0) throw new ArgumentOutOfRangeException(nameof(MaxFrames), MaxFrames, "must be positive");
    }
}
