namespace ShareGPT4V.Preprocessing;

/// <summary>How a non-square image is made square before the CLIP processor.</summary>
public enum ImageAspectMode
{
    /// <summary>Resize the shortest edge and center-crop (llava-hf processors; LLaVA's <c>image_aspect_ratio</c> "square" or unset).</summary>
    Resize,
    /// <summary>LLaVA/ShareGPT4V <c>image_aspect_ratio = "pad"</c>: paste on a square of colour int(mean * 255) first (expand2square).</summary>
    Pad,
}

/// <summary>Reading <see cref="ImageAspectMode"/> from a model config.</summary>
internal static class ImageAspectModes
{
    /// <summary>
    /// Maps LLaVA's <c>image_aspect_ratio</c> config value: "pad" → <see cref="ImageAspectMode.Pad"/>;
    /// null, "", "square" or "resize" → <see cref="ImageAspectMode.Resize"/>.
    /// </summary>
    /// <exception cref="ModelConfigurationException">Any other value (e.g. LLaVA-NeXT's "anyres", which this library does not implement).</exception>
    public static ImageAspectMode FromConfigValue(string? value, string? configPath = null) => value?.Trim().ToLowerInvariant() switch
    {
        null or "" or "square" or "resize" => ImageAspectMode.Resize,
        "pad" => ImageAspectMode.Pad,
        _ => throw new ModelConfigurationException($"Unsupported image_aspect_ratio '{value}' (supported: pad, square)", configPath, "image_aspect_ratio"),
    };
}
