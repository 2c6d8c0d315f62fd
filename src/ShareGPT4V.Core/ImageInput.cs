using ShareGPT4V.Preprocessing;

namespace ShareGPT4V;

/// <summary>An image to caption or chat about: a file, or encoded bytes (PNG, JPEG, WebP, GIF, BMP, ...).</summary>
public sealed class ImageInput
{
    /// <summary>The file path, or the name given with the bytes; error messages name the image by it.</summary>
    public string Name { get; }
    internal string? FilePath { get; }
    internal byte[]? Bytes { get; }

    private ImageInput(string name, string? path, byte[]? bytes)
    {
        Name = name;
        FilePath = path;
        Bytes = bytes;
    }

    /// <summary>An image file, read when a request uses it.</summary>
    /// <param name="path">The image file.</param>
    public static ImageInput FromFile(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        return new ImageInput(path, path, null);
    }

    /// <summary>An encoded image held in memory.</summary>
    /// <param name="encoded">The file's bytes (PNG, JPEG, WebP, GIF, BMP, ...).</param>
    /// <param name="name">How errors name the image.</param>
    public static ImageInput FromBytes(byte[] encoded, string? name = null)
    {
        ArgumentNullException.ThrowIfNull(encoded);
        return new ImageInput(name ?? "image bytes", null, encoded);
    }

    /// <summary>Reads a stream up to <paramref name="maxBytes"/>; a longer stream is refused without reading it all.</summary>
    public static async Task<ImageInput> FromStreamAsync(Stream stream, string? name = null, long maxBytes = 64L * 1024 * 1024, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(stream);
        var buffer = new MemoryStream();
        var chunk = new byte[81920];
        int n;
        while ((n = await stream.ReadAsync(chunk, cancellationToken).ConfigureAwait(false)) > 0)
        {
            if (buffer.Length + n > maxBytes)
                throw new ImageInputException($"The image stream is longer than the {maxBytes}-byte limit", name);
            buffer.Write(chunk, 0, n);
        }
        return new ImageInput(name ?? "image stream", null, buffer.ToArray());
    }

    /// <summary>
    /// Decodes the image now, under <paramref name="limits"/> (e.g. a pipeline's <see cref="PipelineOptions.ImageLimits"/>),
    /// so a file that cannot be used is refused before a request, not during it.
    /// </summary>
    /// <exception cref="ImageInputException">The image is missing, unreadable, corrupt or over a limit.</exception>
    public void Validate(ImageLoadOptions? limits = null)
    {
        if (FilePath is not null) Preprocessing.ImageLoader.Load(FilePath, limits);
        else Preprocessing.ImageLoader.Load(Bytes!, Name, limits);
    }

    /// <summary>The image's <see cref="Name"/>.</summary>
    public override string ToString() => Name;
}
