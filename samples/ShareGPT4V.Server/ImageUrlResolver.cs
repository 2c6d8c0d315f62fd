namespace ShareGPT4V.Server;

/// <summary>
/// Turns <c>image_url</c> values into image bytes: <c>data:image/...;base64,</c> URLs always; <c>http(s)</c> and
/// <c>file</c> URLs only under a prefix the operator allowed (a server that fetched any URL would let clients probe
/// its network and disk). Sizes are checked before decoding or downloading the whole body; pixel limits are checked
/// by the pipeline from the image header.
/// </summary>
internal sealed class ImageUrlResolver(ServerOptions options, IHttpClientFactory? httpClients)
{
    public async Task<ImageInput> ResolveAsync(ImageReference image, CancellationToken ct)
    {
        var url = image.Url;
        if (url.StartsWith("data:", StringComparison.OrdinalIgnoreCase)) return FromDataUrl(url, image.Param);
        if (!Uri.TryCreate(url, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https" or "file"))
            throw OpenAIErrorException.BadParam(image.Param, "image_url must be a data: URL (data:image/png;base64,...)", "invalid_image_url");
        var allowed = options.AllowedImageUrlPrefixes.FirstOrDefault(p => IsUnder(uri, p));
        if (allowed is null)
            throw OpenAIErrorException.BadParam(image.Param,
                $"image_url '{Shorten(url)}' is not allowed: this server takes data: URLs{(options.AllowedImageUrlPrefixes.Count > 0 ? " and URLs under its allowed prefixes" : " only")}",
                "image_url_not_allowed");
        return uri.Scheme == "file" ? await FromFileAsync(uri, image.Param, ct).ConfigureAwait(false) : await FromHttpAsync(uri, image.Param, ct).ConfigureAwait(false);
    }

    private static bool IsUnder(Uri uri, string prefix)
    {
        var p = new Uri(prefix);
        if (p.Scheme != uri.Scheme) return false;
        if (uri.Scheme == "file")
        {
            // Compare resolved paths so that "..", "." or doubled slashes cannot step out of the allowed folder.
            var root = Path.TrimEndingDirectorySeparator(Path.GetFullPath(p.LocalPath)) + Path.DirectorySeparatorChar;
            var path = Path.GetFullPath(uri.LocalPath);
            return path.StartsWith(root, StringComparison.Ordinal);
        }
        return uri.GetLeftPart(UriPartial.Authority).Equals(p.GetLeftPart(UriPartial.Authority), StringComparison.OrdinalIgnoreCase)
            && uri.AbsolutePath.StartsWith(p.AbsolutePath, StringComparison.Ordinal);
    }

    private ImageInput FromDataUrl(string url, string param)
    {
        int comma = url.IndexOf(',');
        if (comma < 0) throw OpenAIErrorException.BadParam(param, "The data: URL has no ',' before its data", "invalid_image_url");
        var header = url[5..comma];
        var parts = header.Split(';');
        var mime = parts[0].Trim().ToLowerInvariant();
        if (!mime.StartsWith("image/", StringComparison.Ordinal))
            throw OpenAIErrorException.BadParam(param, $"The data: URL's media type is '{(mime.Length == 0 ? "(none)" : mime)}', not an image/* type", "invalid_image_format");
        if (!parts.Skip(1).Any(p => p.Trim().Equals("base64", StringComparison.OrdinalIgnoreCase)))
            throw OpenAIErrorException.BadParam(param, "The data: URL must be base64-encoded (data:image/png;base64,...)", "invalid_image_url");
        var data = url.AsSpan(comma + 1);
        if ((long)data.Length * 3 / 4 > options.MaxImageBytes + 2) // refuse before decoding: base64 is 4 chars per 3 bytes
            throw OpenAIErrorException.BadParam(param, $"The image is larger than the server's limit of {options.MaxImageBytes} bytes", "image_too_large");
        var bytes = new byte[data.Length / 4 * 3 + 3];
        if (!Convert.TryFromBase64Chars(data, bytes, out int written))
            throw OpenAIErrorException.BadParam(param, "The data: URL's base64 data is invalid", "invalid_base64");
        if (written > options.MaxImageBytes)
            throw OpenAIErrorException.BadParam(param, $"The image is larger than the server's limit of {options.MaxImageBytes} bytes", "image_too_large");
        Array.Resize(ref bytes, written);
        return ImageInput.FromBytes(bytes, param);
    }

    private async Task<ImageInput> FromFileAsync(Uri uri, string param, CancellationToken ct)
    {
        var path = Path.GetFullPath(uri.LocalPath);
        var info = new FileInfo(path);
        if (!info.Exists) throw OpenAIErrorException.BadParam(param, $"The image file '{uri}' does not exist", "invalid_image_url");
        if (info.Length > options.MaxImageBytes)
            throw OpenAIErrorException.BadParam(param, $"The image is larger than the server's limit of {options.MaxImageBytes} bytes", "image_too_large");
        await using var stream = File.OpenRead(path);
        return await ReadLimitedAsync(stream, param, ct).ConfigureAwait(false);
    }

    private async Task<ImageInput> FromHttpAsync(Uri uri, string param, CancellationToken ct)
    {
        var client = httpClients?.CreateClient(nameof(ImageUrlResolver)) ?? new HttpClient();
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(TimeSpan.FromSeconds(30));
        HttpResponseMessage response;
        try { response = await client.GetAsync(uri, HttpCompletionOption.ResponseHeadersRead, timeout.Token).ConfigureAwait(false); }
        catch (HttpRequestException e) { throw OpenAIErrorException.BadParam(param, $"Could not download '{uri}': {e.Message}", "image_download_failed"); }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested) { throw OpenAIErrorException.BadParam(param, $"Downloading '{uri}' took longer than 30 s", "image_download_failed"); }
        using (response)
        {
            if (!response.IsSuccessStatusCode)
                throw OpenAIErrorException.BadParam(param, $"Downloading '{uri}' failed with HTTP {(int)response.StatusCode}", "image_download_failed");
            if (response.Content.Headers.ContentLength > options.MaxImageBytes)
                throw OpenAIErrorException.BadParam(param, $"The image is larger than the server's limit of {options.MaxImageBytes} bytes", "image_too_large");
            await using var stream = await response.Content.ReadAsStreamAsync(timeout.Token).ConfigureAwait(false);
            return await ReadLimitedAsync(stream, param, timeout.Token).ConfigureAwait(false);
        }
    }

    private async Task<ImageInput> ReadLimitedAsync(Stream stream, string param, CancellationToken ct)
    {
        try { return await ImageInput.FromStreamAsync(stream, param, options.MaxImageBytes, ct).ConfigureAwait(false); }
        catch (ImageInputException e) { throw OpenAIErrorException.BadParam(param, e.Message, "image_too_large"); }
    }

    private static string Shorten(string s) => s.Length <= 80 ? s : s[..77] + "...";
}
