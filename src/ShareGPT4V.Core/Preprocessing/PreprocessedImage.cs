using TorchSharp;

namespace ShareGPT4V.Preprocessing;

/// <summary>The output of <see cref="ClipImageProcessor"/> for one image.</summary>
internal sealed class PreprocessedImage
{
    /// <summary>Normalised pixel values, channel-major (CHW), float32: what the vision tower takes.</summary>
    public float[] Data { get; }
    /// <summary>Always 3 (R, G, B).</summary>
    public int Channels => 3;
    /// <summary>Height in pixels.</summary>
    public int Height { get; }
    /// <summary>Width in pixels.</summary>
    public int Width { get; }
    /// <summary>The 8-bit RGB image after resize and crop, before rescale/normalize (HWC), for debugging and comparisons.</summary>
    public byte[] CroppedRgb { get; }

    internal PreprocessedImage(float[] data, int height, int width, byte[] croppedRgb)
    {
        Data = data;
        Height = height;
        Width = width;
        CroppedRgb = croppedRgb;
    }

    /// <summary>A new float32 CPU tensor [3, H, W] holding a copy of <see cref="Data"/>. The caller disposes it.</summary>
    public torch.Tensor ToTensor() => torch.tensor(Data, [Channels, Height, Width], torch.float32);

    /// <summary>Stacks images of equal size into a new float32 CPU tensor [N, 3, H, W]. The caller disposes it.</summary>
    /// <exception cref="ArgumentException">The list is empty or the sizes differ.</exception>
    public static torch.Tensor Stack(IReadOnlyList<PreprocessedImage> images)
    {
        ArgumentNullException.ThrowIfNull(images);
        if (images.Count == 0) throw new ArgumentException("At least one image is needed", nameof(images));
        var first = images[0];
        int per = first.Data.Length;
        var all = new float[checked((long)per * images.Count)];
        for (int i = 0; i < images.Count; i++)
        {
            var im = images[i] ?? throw new ArgumentException($"Image {i} is null", nameof(images));
            if (im.Height != first.Height || im.Width != first.Width)
                throw new ArgumentException($"Image {i} is {im.Width}x{im.Height} but image 0 is {first.Width}x{first.Height}", nameof(images));
            Array.Copy(im.Data, 0, all, (long)i * per, per);
        }
        return torch.tensor(all, [images.Count, 3, first.Height, first.Width], torch.float32);
    }
}
