using ShareGPT4V.Preprocessing;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.Training;

/// <summary>
/// The per-patch targets of the auxiliary patch loss: a record's label image (8-bit class ids, the size of its image)
/// mapped onto the vision tower's patch grid through the same geometry the image processor applies (LLaVA's pad to a
/// square, or shortest-edge resize and centre crop), so patch (r, c) is labelled with what its pixels show.
/// </summary>
internal static class PatchLabelGrid
{
    /// <summary>A patch takes the most frequent non-background class of its pixels when that class covers at least
    /// this share of the patch; otherwise it is background (0). Low, so a small shape inside one patch still counts.</summary>
    public const double MinCoverage = 0.10;

    /// <summary>
    /// The label of every patch, row-major, for an image of <paramref name="imageWidth"/> × <paramref name="imageHeight"/>.
    /// </summary>
    /// <exception cref="TrainingDataException">The label image cannot be read, has another size than its image, or holds a class ≥ <paramref name="classes"/>.</exception>
    public static long[] Compute(string labelPath, int imageWidth, int imageHeight, ImageAspectMode aspect, int inputSize, int patchSize,
        int classes, string recordId)
    {
        byte[] ids;
        int w, h;
        try
        {
            var info = Image.Identify(labelPath);
            if (info.Width != imageWidth || info.Height != imageHeight)
                throw new TrainingDataException($"label image '{labelPath}' is {info.Width}x{info.Height} but its image is {imageWidth}x{imageHeight}", recordId);
            using var img = Image.Load<L8>(labelPath);
            w = img.Width;
            h = img.Height;
            ids = new byte[w * h];
            img.CopyPixelDataTo(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, L8>(ids.AsSpan()));
        }
        catch (Exception e) when (e is IOException or UnknownImageFormatException or InvalidImageContentException or UnauthorizedAccessException)
        {
            throw new TrainingDataException($"label image '{labelPath}' cannot be read: {e.Message}", recordId, e);
        }
        return Compute(ids, w, h, aspect, inputSize, patchSize, classes, labelPath, recordId);
    }

    /// <summary>The grid from label pixels already in memory (row-major class ids).</summary>
    public static long[] Compute(ReadOnlySpan<byte> ids, int w, int h, ImageAspectMode aspect, int inputSize, int patchSize, int classes,
        string labelPath, string recordId)
    {
        int grid = inputSize / patchSize;
        // The patch's square in original-image coordinates: origin (ox, oy) and side `scale` per input pixel.
        double ox, oy, scale;
        if (aspect == ImageAspectMode.Pad)
        {
            // expand2square pastes the image centred on a max(w, h) square, which is then resized to the input size.
            int side = Math.Max(w, h);
            ox = -(side - w) / 2;
            oy = -(side - h) / 2;
            scale = (double)side / inputSize;
        }
        else
        {
            // Shortest edge to the input size, then a centre crop of the input size.
            scale = (double)Math.Min(w, h) / inputSize;
            ox = (w / scale - inputSize) / 2 * scale;
            oy = (h / scale - inputSize) / 2 * scale;
        }
        var labels = new long[grid * grid];
        Span<int> counts = stackalloc int[256];
        for (int r = 0; r < grid; r++)
        for (int c = 0; c < grid; c++)
        {
            int x0 = (int)Math.Floor(ox + c * patchSize * scale), x1 = (int)Math.Ceiling(ox + (c + 1) * patchSize * scale);
            int y0 = (int)Math.Floor(oy + r * patchSize * scale), y1 = (int)Math.Ceiling(oy + (r + 1) * patchSize * scale);
            long area = Math.Max(1L, (long)(x1 - x0) * (y1 - y0));
            counts.Clear();
            for (int y = Math.Max(0, y0); y < Math.Min(h, y1); y++)
            {
                var row = ids.Slice(y * w, w);
                for (int x = Math.Max(0, x0); x < Math.Min(w, x1); x++) counts[row[x]]++;
            }
            int best = 0;
            for (int k = 1; k < 256; k++)
            {
                if (counts[k] == 0) continue;
                if (k >= classes)
                    throw new TrainingDataException($"label image '{labelPath}' holds class {k}, but --aux-patch-classes is {classes}", recordId);
                if (best == 0 || counts[k] > counts[best]) best = k;
            }
            labels[r * grid + c] = best != 0 && counts[best] >= MinCoverage * area ? best : 0;
        }
        return labels;
    }
}

/// <summary>
/// The auxiliary head: one linear layer from each patch feature (the features the projector reads) to the patch's
/// class. It exists only during training; checkpoints keep it next to the optimizer state so a resumed run continues
/// it, and the final model is a plain LLaVA without it.
/// </summary>
internal sealed class AuxPatchHead : IDisposable
{
    public const string FileName = "aux_patch_head.safetensors";
    public const string WeightName = "aux_patch_head.weight";
    public const string BiasName = "aux_patch_head.bias";

    public Tensor Weight { get; }
    public Tensor Bias { get; }

    public AuxPatchHead(long features, int classes, int seed)
    {
        using var g = new torch.Generator(unchecked((ulong)(seed * 7919L + 17)));
        Weight = torch.randn(new[] { (long)classes, features }, generator: g).mul_(0.02).requires_grad_(true);
        Bias = torch.zeros(classes).requires_grad_(true);
    }

    public IEnumerable<(string Name, Tensor Param)> Parameters => new[] { (WeightName, Weight), (BiasName, Bias) };

    /// <summary>Mean cross-entropy of every patch of <paramref name="features"/> [N, P, F] against <paramref name="labels"/> [N, P].</summary>
    public Tensor Loss(Tensor features, Tensor labels)
    {
        using var scope = NewDisposeScope();
        var logits = nn.functional.linear(features.reshape(-1, features.shape[^1]), Weight, Bias);
        return nn.functional.cross_entropy(logits, labels.reshape(-1)).MoveToOuterDisposeScope();
    }

    public void Save(string dir) => Checkpoints.SafeTensorsWriter.Write(Path.Combine(dir, FileName),
        new List<KeyValuePair<string, Tensor>> { new(WeightName, Weight), new(BiasName, Bias) });

    public void Load(string dir)
    {
        var path = Path.Combine(dir, FileName);
        if (!File.Exists(path)) throw new TrainingDataException($"The checkpoint '{dir}' has no {FileName} to resume the auxiliary patch head from");
        using var reader = Checkpoints.SafeTensorsFile.Open(path);
        using var noGrad = torch.no_grad();
        using var w = reader.Load(WeightName);
        using var b = reader.Load(BiasName);
        if (!w.shape.SequenceEqual(Weight.shape) || !b.shape.SequenceEqual(Bias.shape))
            throw new ModelConfigurationException($"The saved auxiliary head has shape [{string.Join(", ", w.shape)}], the run asks for [{string.Join(", ", Weight.shape)}]", path, "aux-patch-classes");
        Weight.copy_(w);
        Bias.copy_(b);
    }

    public void Dispose()
    {
        Weight.Dispose();
        Bias.Dispose();
    }
}
