using System.Text.Json;

namespace ShareGPT4V.Preprocessing;

/// <summary>
/// The settings of a CLIP image processor, read from <c>preprocessor_config.json</c>.
/// Both the current <c>CLIPImageProcessor</c> form (<c>size: {"shortest_edge": 336}</c>, <c>crop_size: {"height", "width"}</c>)
/// and the older <c>CLIPFeatureExtractor</c> form (<c>size: 336</c>, <c>crop_size: 336</c>) are accepted; missing keys take
/// the defaults of transformers' <c>CLIPImageProcessor</c>.
/// </summary>
internal sealed record PreprocessorConfig
{
    /// <summary>OpenAI CLIP's per-channel mean (transformers' OPENAI_CLIP_MEAN).</summary>
    public static readonly IReadOnlyList<double> OpenAIClipMean = [0.48145466, 0.4578275, 0.40821073];
    /// <summary>OpenAI CLIP's per-channel standard deviation (transformers' OPENAI_CLIP_STD).</summary>
    public static readonly IReadOnlyList<double> OpenAIClipStd = [0.26862954, 0.26130258, 0.27577711];

    /// <summary>Resize before cropping.</summary>
    public bool DoResize { get; init; } = true;
    /// <summary>Resize so the shorter side has this length (the long side keeps the aspect ratio). Null when <see cref="ResizeHeight"/>/<see cref="ResizeWidth"/> are used instead.</summary>
    public int? ShortestEdge { get; init; } = 224;
    /// <summary>Exact resize height, for configs whose <c>size</c> is <c>{"height", "width"}</c>.</summary>
    public int? ResizeHeight { get; init; }
    /// <summary>Exact resize width, for configs whose <c>size</c> is <c>{"height", "width"}</c>.</summary>
    public int? ResizeWidth { get; init; }
    /// <summary>Resampling filter as a PIL id (3 = bicubic, the CLIP default).</summary>
    public ResampleFilter Resample { get; init; } = ResampleFilter.Bicubic;
    /// <summary>Center-crop after resizing.</summary>
    public bool DoCenterCrop { get; init; } = true;
    /// <summary>Crop height.</summary>
    public int CropHeight { get; init; } = 224;
    /// <summary>Crop width.</summary>
    public int CropWidth { get; init; } = 224;
    /// <summary>Multiply the 0..255 values by <see cref="RescaleFactor"/>.</summary>
    public bool DoRescale { get; init; } = true;
    /// <summary>Rescale factor, 1/255 by default.</summary>
    public double RescaleFactor { get; init; } = 1.0 / 255.0;
    /// <summary>Subtract <see cref="ImageMean"/> and divide by <see cref="ImageStd"/>.</summary>
    public bool DoNormalize { get; init; } = true;
    /// <summary>Per-channel mean (R, G, B).</summary>
    public IReadOnlyList<double> ImageMean { get; init; } = OpenAIClipMean;
    /// <summary>Per-channel standard deviation (R, G, B).</summary>
    public IReadOnlyList<double> ImageStd { get; init; } = OpenAIClipStd;
    /// <summary>Recorded for completeness; images are always converted to RGB because the vision tower needs 3 channels.</summary>
    public bool DoConvertRgb { get; init; } = true;
    /// <summary>The file this config was read from, when any (used in error messages).</summary>
    public string? SourcePath { get; init; }

    /// <summary>
    /// Largest resize or crop side accepted (the largest CLIP image_size a config may declare): the output of one image
    /// is side x side x 3 floats, so an absurd size must not become an allocation.
    /// </summary>
    public const int MaxSide = 2048;

    /// <summary>CLIPImageProcessor's defaults (224 px).</summary>
    public static PreprocessorConfig Default { get; } = new();

    /// <summary>
    /// The background colour of LLaVA's <c>expand2square</c>: <c>tuple(int(m * 255) for m in image_mean)</c>.
    /// </summary>
    public (byte R, byte G, byte B) PadBackground => (ToByte(ImageMean[0]), ToByte(ImageMean[1]), ToByte(ImageMean[2]));

    private static byte ToByte(double m) => (byte)Math.Clamp((int)(m * 255), 0, 255);

    /// <summary>Preprocessor configs are a few hundred bytes; anything over this is not one.</summary>
    public const long MaxFileBytes = 1024 * 1024;

    /// <summary>Reads and validates <c>preprocessor_config.json</c>.</summary>
    /// <exception cref="ModelConfigurationException">The file is missing, not JSON, or holds invalid values.</exception>
    public static PreprocessorConfig Load(string path)
    {
        string text;
        try
        {
            var info = new FileInfo(path);
            if (info.Exists && info.Length > MaxFileBytes)
                throw new ModelConfigurationException($"The preprocessor config is {info.Length} bytes, more than the {MaxFileBytes} accepted", path);
            text = File.ReadAllText(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ModelConfigurationException($"Cannot read the preprocessor config: {e.Message}", path, null, e);
        }
        return Parse(text, path);
    }

    /// <summary>Parses the JSON text of a <c>preprocessor_config.json</c>; <paramref name="sourcePath"/> only names it in errors.</summary>
    /// <exception cref="ModelConfigurationException">Not JSON, or invalid values.</exception>
    public static PreprocessorConfig Parse(string json, string? sourcePath = null)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(json, new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip });
        }
        catch (JsonException e)
        {
            throw new ModelConfigurationException($"The preprocessor config is not valid JSON: {e.Message}", sourcePath, null, e);
        }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw new ModelConfigurationException("The preprocessor config must be a JSON object", sourcePath);
            if (Configuration.JsonText.FindUndecodableString(root) is { } where)
                throw new ModelConfigurationException(Configuration.JsonText.UndecodableMessage(where), sourcePath);
            var r = new Reader(root, sourcePath);
            var d = Default;

            int? shortest = d.ShortestEdge, rh = null, rw = null;
            if (r.Get("size") is { } size)
                (shortest, rh, rw) = ParseResizeSize(size, r);

            int ch = d.CropHeight, cw = d.CropWidth;
            if (r.Get("crop_size") is { } crop)
                (ch, cw) = ParseCropSize(crop, r);

            int resample = r.Int("resample") ?? (int)d.Resample;
            if (!Enum.IsDefined(typeof(ResampleFilter), resample))
                throw r.Error($"Unsupported resample filter {resample} (supported PIL filters: 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming)", "resample");

            var config = new PreprocessorConfig
            {
                DoResize = r.Bool("do_resize") ?? d.DoResize,
                ShortestEdge = shortest,
                ResizeHeight = rh,
                ResizeWidth = rw,
                Resample = (ResampleFilter)resample,
                DoCenterCrop = r.Bool("do_center_crop") ?? d.DoCenterCrop,
                CropHeight = ch,
                CropWidth = cw,
                DoRescale = r.Bool("do_rescale") ?? d.DoRescale,
                RescaleFactor = r.Double("rescale_factor") ?? d.RescaleFactor,
                DoNormalize = r.Bool("do_normalize") ?? d.DoNormalize,
                ImageMean = r.Triple("image_mean") ?? d.ImageMean,
                ImageStd = r.Triple("image_std") ?? d.ImageStd,
                DoConvertRgb = r.Bool("do_convert_rgb") ?? d.DoConvertRgb,
                SourcePath = sourcePath,
            };
            config.Validate();
            return config;
        }
    }

    /// <summary>Checks that every value is usable; called by <see cref="Parse"/> and by the processor.</summary>
    /// <exception cref="ModelConfigurationException">A value is out of range.</exception>
    public void Validate()
    {
        if (ShortestEdge is { } s)
        {
            if (s <= 0 || s > MaxSide) throw Fail($"size.shortest_edge must be positive and at most {MaxSide}, got {s}", "size");
        }
        else if (ResizeHeight is not { } h || ResizeWidth is not { } w)
            throw Fail("size must give shortest_edge or both height and width", "size");
        else if (h <= 0 || w <= 0 || h > MaxSide || w > MaxSide)
            throw Fail($"size height and width must be positive and at most {MaxSide}, got {h}x{w}", "size");
        if (CropHeight <= 0 || CropWidth <= 0 || CropHeight > MaxSide || CropWidth > MaxSide)
            throw Fail($"crop_size must be positive and at most {MaxSide}, got {CropHeight}x{CropWidth}", "crop_size");
        if (!Enum.IsDefined(Resample))
            throw Fail($"Unsupported resample filter {(int)Resample}", "resample");
        if (!double.IsFinite(RescaleFactor) || RescaleFactor <= 0)
            throw Fail($"rescale_factor must be a positive number, got {RescaleFactor}", "rescale_factor");
        if (ImageMean is null || ImageMean.Count != 3)
            throw Fail($"image_mean must have 3 values (R, G, B), got {ImageMean?.Count ?? 0}", "image_mean");
        if (ImageStd is null || ImageStd.Count != 3)
            throw Fail($"image_std must have 3 values (R, G, B), got {ImageStd?.Count ?? 0}", "image_std");
        foreach (var m in ImageMean)
            if (!double.IsFinite(m)) throw Fail($"image_mean values must be finite, got {m}", "image_mean");
        foreach (var v in ImageStd)
            if (!double.IsFinite(v) || v == 0 || (float)v == 0f) throw Fail($"image_std values must be finite and non-zero, got {v}", "image_std");
    }

    private ModelConfigurationException Fail(string message, string key) => new(message, SourcePath, key);

    // transformers' get_size_dict(size, default_to_square=False): an int is the shortest edge, a pair is (height, width).
    private static (int? Shortest, int? H, int? W) ParseResizeSize(JsonElement e, Reader r)
    {
        switch (e.ValueKind)
        {
            case JsonValueKind.Number:
                return (r.AsInt(e, "size"), null, null);
            case JsonValueKind.Array when e.GetArrayLength() == 2:
                return (null, r.AsInt(e[0], "size"), r.AsInt(e[1], "size"));
            case JsonValueKind.Object:
                if (e.TryGetProperty("shortest_edge", out var se) && se.ValueKind != JsonValueKind.Null)
                    return (r.AsInt(se, "size.shortest_edge"), null, null);
                if (e.TryGetProperty("height", out var h) && e.TryGetProperty("width", out var w))
                    return (null, r.AsInt(h, "size.height"), r.AsInt(w, "size.width"));
                throw r.Error("size must hold shortest_edge, or height and width", "size");
            default:
                throw r.Error($"size must be a number, a [height, width] pair or an object, got {e.ValueKind}", "size");
        }
    }

    // transformers' get_size_dict(crop_size, default_to_square=True): an int is a square.
    private static (int H, int W) ParseCropSize(JsonElement e, Reader r)
    {
        switch (e.ValueKind)
        {
            case JsonValueKind.Number:
                var n = r.AsInt(e, "crop_size");
                return (n, n);
            case JsonValueKind.Array when e.GetArrayLength() == 2:
                return (r.AsInt(e[0], "crop_size"), r.AsInt(e[1], "crop_size"));
            case JsonValueKind.Object when e.TryGetProperty("height", out var h) && e.TryGetProperty("width", out var w):
                return (r.AsInt(h, "crop_size.height"), r.AsInt(w, "crop_size.width"));
            default:
                throw r.Error("crop_size must be a number, a [height, width] pair or an object with height and width", "crop_size");
        }
    }

    /// <summary>Typed access to the JSON keys; a JSON null counts as missing, as transformers then falls back to its default.</summary>
    private readonly struct Reader(JsonElement root, string? path)
    {
        public JsonElement? Get(string key) =>
            root.TryGetProperty(key, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

        public ModelConfigurationException Error(string message, string key) => new(message, path, key);

        public bool? Bool(string key) => Get(key) switch
        {
            null => null,
            { ValueKind: JsonValueKind.True } => true,
            { ValueKind: JsonValueKind.False } => false,
            var v => throw Error($"{key} must be true or false, got {v.Value.ValueKind}", key),
        };

        public double? Double(string key) => Get(key) is { } v ? AsDouble(v, key) : null;

        public int? Int(string key) => Get(key) is { } v ? AsInt(v, key) : null;

        public int AsInt(JsonElement v, string key)
        {
            if (v.ValueKind == JsonValueKind.Number)
            {
                if (v.TryGetInt32(out var i)) return i;
                // Some writers emit 336.0; accept integral doubles.
                if (v.TryGetDouble(out var d) && d == Math.Floor(d) && d is >= int.MinValue and <= int.MaxValue) return (int)d;
            }
            throw Error($"{key} must be an integer, got {v}", key);
        }

        public double AsDouble(JsonElement v, string key) =>
            v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out var d) ? d : throw Error($"{key} must be a number, got {v}", key);

        // A single number is broadcast to the three channels, as transformers does.
        public IReadOnlyList<double>? Triple(string key)
        {
            if (Get(key) is not { } v) return null;
            if (v.ValueKind == JsonValueKind.Number) { var x = AsDouble(v, key); return [x, x, x]; }
            if (v.ValueKind != JsonValueKind.Array) throw Error($"{key} must be a list of 3 numbers", key);
            var list = new List<double>();
            foreach (var item in v.EnumerateArray()) list.Add(AsDouble(item, key));
            return list.ToArray();
        }
    }
}

/// <summary>PIL resampling filters, numbered as PIL numbers them (the <c>resample</c> key). Nearest (0) is not supported.</summary>
internal enum ResampleFilter
{
    /// <summary>Lanczos (a = 3).</summary>
    Lanczos = 1,
    /// <summary>Bilinear (triangle).</summary>
    Bilinear = 2,
    /// <summary>Bicubic (a = -0.5), CLIP's filter.</summary>
    Bicubic = 3,
    /// <summary>Box.</summary>
    Box = 4,
    /// <summary>Hamming.</summary>
    Hamming = 5,
}
