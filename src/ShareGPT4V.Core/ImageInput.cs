namespace ShareGPT4V;

/// <summary>An image to caption or chat about: a file, or encoded bytes (PNG, JPEG, WebP, GIF, BMP, ...).</summary>
public sealed class ImageInput
{
    public string Name { get; }
    internal string? FilePath { get; }
    internal byte[]? Bytes { get; }

    private ImageInput(string name, string? path, byte[]? bytes)
    {
        Name = name;
        FilePath = path;
        Bytes = bytes;
    }

    public static ImageInput FromFile(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        return new ImageInput(path, path, null);
    }

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

    public override string ToString() => Name;
}
