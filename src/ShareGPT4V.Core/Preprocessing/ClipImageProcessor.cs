using TorchSharp;

namespace ShareGPT4V.Preprocessing;

/// <summary>
/// Reproduces transformers' <c>CLIPImageProcessor</c> (with PIL) exactly: optional LLaVA expand2square, resize of the
/// shortest edge with PIL's resampling (long edge = int(size * long / short)), center crop (top = (h - ch) // 2),
/// x * rescale_factor computed in double then rounded to float32, then (x - mean) / std in float32.
/// Immutable, so one instance can serve many threads.
/// </summary>
internal sealed class ClipImageProcessor
{
    private readonly float[] _mean;
    private readonly float[] _std;

    /// <summary>The processor settings.</summary>
    public PreprocessorConfig Config { get; }
    /// <summary>Resize-and-crop or pad-to-square.</summary>
    public ImageAspectMode AspectMode { get; }

    /// <exception cref="ModelConfigurationException">The config holds invalid values.</exception>
    public ClipImageProcessor(PreprocessorConfig config, ImageAspectMode aspectMode = ImageAspectMode.Resize)
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        if (!Enum.IsDefined(aspectMode)) throw new ArgumentOutOfRangeException(nameof(aspectMode), aspectMode, null);
        Config = config;
        AspectMode = aspectMode;
        // transformers casts mean and std to the image dtype (float32) before normalising.
        _mean = config.ImageMean.Select(m => (float)m).ToArray();
        _std = config.ImageStd.Select(s => (float)s).ToArray();
    }

    /// <summary>Loads <c>preprocessor_config.json</c> and builds a processor.</summary>
    public static ClipImageProcessor FromFile(string preprocessorConfigPath, ImageAspectMode aspectMode = ImageAspectMode.Resize) =>
        new(PreprocessorConfig.Load(preprocessorConfigPath), aspectMode);

    /// <summary>Decodes an image file and preprocesses it.</summary>
    /// <exception cref="ImageInputException">The image cannot be used.</exception>
    public PreprocessedImage Preprocess(string path, ImageLoadOptions? options = null) => Preprocess(ImageLoader.Load(path, options));

    /// <summary>Decodes an image from a stream and preprocesses it.</summary>
    /// <exception cref="ImageInputException">The image cannot be used.</exception>
    public PreprocessedImage Preprocess(Stream stream, string? name = null, ImageLoadOptions? options = null) =>
        Preprocess(ImageLoader.Load(stream, name, options));

    /// <summary>Decodes an encoded image held in memory and preprocesses it.</summary>
    /// <exception cref="ImageInputException">The image cannot be used.</exception>
    public PreprocessedImage Preprocess(byte[] encoded, string? name = null, ImageLoadOptions? options = null) =>
        Preprocess(ImageLoader.Load(encoded, name, options));

    /// <summary>Preprocesses a decoded RGB image.</summary>
    public PreprocessedImage Preprocess(RgbImage image)
    {
        ArgumentNullException.ThrowIfNull(image);
        var source = AspectMode == ImageAspectMode.Pad && image.Width != image.Height
            ? SourceView.ExpandToSquare(image, Config.PadBackground)
            : SourceView.Plain(image);

        var (outH, outW) = ResizedSize(source.Width, source.Height);
        long top = 0, left = 0;
        int cropH, cropW;
        if (Config.DoCenterCrop)
        {
            cropH = Config.CropHeight;
            cropW = Config.CropWidth;
            top = FloorDiv2(outH - cropH);
            left = FloorDiv2(outW - cropW);
        }
        else
        {
            // Without a crop the output keeps the aspect ratio, so a 50000x1 image would become millions of pixels wide.
            const long maxPixels = (long)PreprocessorConfig.MaxSide * PreprocessorConfig.MaxSide;
            if (outH > PreprocessorConfig.MaxSide || outW > PreprocessorConfig.MaxSide)
                throw new ImageInputException(
                    $"The resized image would be {outW}x{outH} pixels; without a center crop each side must stay within {PreprocessorConfig.MaxSide} (at most {maxPixels} pixels)");
            cropH = (int)outH;
            cropW = (int)outW;
        }

        var rgb = PilResampler.ResizeWindow(source, outW, outH, Config.Resample, left, top, cropW, cropH);
        return new PreprocessedImage(ToChwFloat(rgb, cropH, cropW), cropH, cropW, rgb);
    }

    /// <summary>Preprocesses several images into a new float32 tensor [N, 3, H, W] (caller disposes).</summary>
    public torch.Tensor PreprocessBatch(IReadOnlyList<RgbImage> images)
    {
        ArgumentNullException.ThrowIfNull(images);
        var processed = new PreprocessedImage[images.Count];
        for (int i = 0; i < images.Count; i++) processed[i] = Preprocess(images[i]);
        return PreprocessedImage.Stack(processed);
    }

    /// <summary>Loads and preprocesses several image files into a new float32 tensor [N, 3, H, W] (caller disposes).</summary>
    /// <exception cref="ImageInputException">One of the images cannot be used.</exception>
    public torch.Tensor PreprocessBatch(IReadOnlyList<string> paths, ImageLoadOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(paths);
        var processed = new PreprocessedImage[paths.Count];
        for (int i = 0; i < paths.Count; i++) processed[i] = Preprocess(paths[i], options);
        return PreprocessedImage.Stack(processed);
    }

    /// <summary>
    /// Output size of the resize step (height, width): transformers' get_resize_output_image_size with
    /// default_to_square=False, i.e. short side = size and long side = int(size * long / short).
    /// </summary>
    internal (long Height, long Width) ResizedSize(int width, int height)
    {
        if (!Config.DoResize) return (height, width);
        if (Config.ShortestEdge is not { } size) return (Config.ResizeHeight!.Value, Config.ResizeWidth!.Value);
        bool widthIsShort = width <= height;
        long shortSide = widthIsShort ? width : height, longSide = widthIsShort ? height : width;
        long newLong = (long)((double)(size * longSide) / shortSide); // Python: int(size * long / short), true division
        return widthIsShort ? (newLong, size) : (size, newLong);
    }

    private static long FloorDiv2(long v) => v >= 0 ? v / 2 : -((-v + 1) / 2); // Python's v // 2

    private float[] ToChwFloat(byte[] hwc, int h, int w)
    {
        int plane = h * w;
        var data = new float[3 * plane];
        bool rescale = Config.DoRescale, normalize = Config.DoNormalize;
        double factor = Config.RescaleFactor;
        // Per-byte lookup: every pixel with the same value and channel gives the same float.
        var table = new float[3, 256];
        for (int c = 0; c < 3; c++)
            for (int v = 0; v < 256; v++)
            {
                float x = rescale ? (float)(v * factor) : v; // numpy: uint8 -> float64 * scale -> float32
                if (normalize) x = (x - _mean[c]) / _std[c]; // float32 arithmetic, as numpy does on float32 arrays
                table[c, v] = x;
            }
        for (int i = 0; i < plane; i++)
        {
            data[i] = table[0, hwc[i * 3]];
            data[plane + i] = table[1, hwc[i * 3 + 1]];
            data[2 * plane + i] = table[2, hwc[i * 3 + 2]];
        }
        return data;
    }
}
