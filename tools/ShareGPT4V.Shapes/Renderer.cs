using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace ShareGPT4V.Shapes;

/// <summary>
/// A per-pixel rasteriser: background texture, shapes with optional k×k supersampled coverage, blur, noise.
/// Writes the label mask alongside: each pixel whose centre lies inside a shape gets that shape's class id.
/// </summary>
internal static class Renderer
{
    public static (Image<Rgb24> Image, Image<L8> Mask) Render(Scene scene, RenderSettings s, Random rng)
    {
        int w = scene.Width, h = scene.Height;
        var buf = new float[w * h * 3];
        PaintBackground(scene, s, buf);
        var mask = new byte[w * h];
        foreach (var o in scene.Objects) PaintObject(o, s.Supersample, buf, mask, w, h);
        if (s.BlurSigma > 0) GaussianBlur(buf, w, h, s.BlurSigma);
        if (s.BoxBlur > 0) BoxBlur(buf, w, h, s.BoxBlur);
        if (s.Noise > 0) AddNoise(buf, s.Noise, s.GaussianNoise, rng);

        var image = new Image<Rgb24>(w, h);
        image.ProcessPixelRows(rows =>
        {
            for (int y = 0; y < h; y++)
            {
                var row = rows.GetRowSpan(y);
                int i = y * w * 3;
                for (int x = 0; x < w; x++, i += 3)
                    row[x] = new Rgb24(ToByte(buf[i]), ToByte(buf[i + 1]), ToByte(buf[i + 2]));
            }
        });
        var maskImage = Image.LoadPixelData<L8>(mask, w, h);
        return (image, maskImage);
    }

    private static byte ToByte(float v) => (byte)Math.Clamp((int)MathF.Round(v), 0, 255);

    private static void PaintBackground(Scene scene, RenderSettings s, float[] buf)
    {
        int w = scene.Width, h = scene.Height;
        var (r, g, b) = scene.BackgroundRgb;
        double amp = s.TextureAmplitude, period = s.TexturePeriod;
        double dx = Math.Cos(s.TextureAngle), dy = Math.Sin(s.TextureAngle);
        double diag = Math.Sqrt((double)w * w + (double)h * h);
        for (int y = 0; y < h; y++)
        {
            for (int x = 0; x < w; x++)
            {
                double d = scene.Texture switch
                {
                    // Soft linear gradient across the whole image.
                    BackgroundTexture.Gradient => amp * 2 * ((x - w / 2.0) * dx + (y - h / 2.0) * dy) / diag,
                    // Faint stripes.
                    BackgroundTexture.Stripes => amp * 0.5 * Math.Sin(2 * Math.PI * (x * dx + y * dy) / period),
                    // A faint grid of soft dots.
                    BackgroundTexture.Dots => -amp * 0.6 * Math.Max(0, Math.Cos(2 * Math.PI * x / period) * Math.Cos(2 * Math.PI * y / period)),
                    // Darker towards the corners.
                    BackgroundTexture.Radial => -amp * (Math.Pow(x - w / 2.0, 2) + Math.Pow(y - h / 2.0, 2)) / (diag * diag / 4),
                    _ => 0,
                };
                int i = (y * w + x) * 3;
                buf[i] = (float)(r + d);
                buf[i + 1] = (float)(g + d);
                buf[i + 2] = (float)(b + d);
            }
        }
    }

    private static void PaintObject(SceneObject o, int k, float[] buf, byte[] mask, int w, int h)
    {
        (double X, double Y)[]? poly = o.Shape == 0 ? null : Geometry.Polygon(o.Shape, o.Extent, o.Rotation, o.StarInner);
        double radius2 = o.Extent * o.Extent / 4;
        var (hx, hy) = Geometry.HalfExtents(o.Shape, o.Extent, o.Rotation, o.StarInner);
        int x0 = Math.Max(0, (int)Math.Floor(o.Cx - hx) - 1), x1 = Math.Min(w - 1, (int)Math.Ceiling(o.Cx + hx) + 1);
        int y0 = Math.Max(0, (int)Math.Floor(o.Cy - hy) - 1), y1 = Math.Min(h - 1, (int)Math.Ceiling(o.Cy + hy) + 1);
        bool Inside(double px, double py)
        {
            double u = px - o.Cx, v = py - o.Cy;
            return poly is null ? u * u + v * v <= radius2 : Geometry.Inside(poly, u, v);
        }
        // Distance from a point to the outline; pixels farther than half a diagonal are wholly in or out.
        double radius = o.Extent / 2;
        double EdgeDistance(double px, double py)
        {
            double u = px - o.Cx, v = py - o.Cy;
            return poly is null ? Math.Abs(Math.Sqrt(u * u + v * v) - radius) : Geometry.EdgeDistance(poly, u, v);
        }
        byte label = (byte)o.ClassId;
        var (cr, cg, cb) = o.Rgb;
        for (int y = y0; y <= y1; y++)
        {
            for (int x = x0; x <= x1; x++)
            {
                bool centre = Inside(x + 0.5, y + 0.5);
                if (centre) mask[y * w + x] = label;
                double cover;
                if (k <= 1 || EdgeDistance(x + 0.5, y + 0.5) > 0.75) cover = centre ? 1 : 0;
                else
                {
                    int hits = 0;
                    for (int sy = 0; sy < k; sy++)
                        for (int sx = 0; sx < k; sx++)
                            if (Inside(x + (sx + 0.5) / k, y + (sy + 0.5) / k)) hits++;
                    cover = (double)hits / (k * k);
                }
                if (cover <= 0) continue;
                int i = (y * w + x) * 3;
                float a = (float)cover;
                buf[i] += a * (cr - buf[i]);
                buf[i + 1] += a * (cg - buf[i + 1]);
                buf[i + 2] += a * (cb - buf[i + 2]);
            }
        }
    }

    /// <summary>Separable Gaussian blur, radius ceil(3σ), edges clamped.</summary>
    internal static void GaussianBlur(float[] buf, int w, int h, double sigma)
    {
        int radius = Math.Max(1, (int)Math.Ceiling(3 * sigma));
        var kernel = new float[2 * radius + 1];
        double sum = 0;
        for (int i = -radius; i <= radius; i++) sum += kernel[i + radius] = (float)Math.Exp(-i * i / (2 * sigma * sigma));
        for (int i = 0; i < kernel.Length; i++) kernel[i] = (float)(kernel[i] / sum);
        Convolve(buf, w, h, kernel);
    }

    internal static void BoxBlur(float[] buf, int w, int h, int radius)
    {
        var kernel = Enumerable.Repeat(1f / (2 * radius + 1), 2 * radius + 1).ToArray();
        Convolve(buf, w, h, kernel);
    }

    private static void Convolve(float[] buf, int w, int h, float[] kernel)
    {
        int radius = kernel.Length / 2;
        var tmp = new float[buf.Length];
        // Horizontal pass over a clamped-edge copy of each row, then the vertical pass the same way.
        var line = new float[(Math.Max(w, h) + 2 * radius) * 3];
        for (int y = 0; y < h; y++)
        {
            for (int x = -radius; x < w + radius; x++)
            {
                int src = (y * w + Math.Clamp(x, 0, w - 1)) * 3, dst = (x + radius) * 3;
                line[dst] = buf[src]; line[dst + 1] = buf[src + 1]; line[dst + 2] = buf[src + 2];
            }
            ConvolveLine(line, kernel, w, tmp, y * w * 3, 3);
        }
        for (int x = 0; x < w; x++)
        {
            for (int y = -radius; y < h + radius; y++)
            {
                int src = (Math.Clamp(y, 0, h - 1) * w + x) * 3, dst = (y + radius) * 3;
                line[dst] = tmp[src]; line[dst + 1] = tmp[src + 1]; line[dst + 2] = tmp[src + 2];
            }
            ConvolveLine(line, kernel, h, buf, x * 3, w * 3);
        }
    }

    /// <summary>Convolves <paramref name="n"/> RGB samples of a padded line into <paramref name="output"/> at the given stride.</summary>
    private static void ConvolveLine(float[] line, float[] kernel, int n, float[] output, int offset, int stride)
    {
        for (int i = 0; i < n; i++)
        {
            float r = 0, g = 0, b = 0;
            int p = i * 3;
            for (int t = 0; t < kernel.Length; t++, p += 3)
            {
                float kv = kernel[t];
                r += kv * line[p]; g += kv * line[p + 1]; b += kv * line[p + 2];
            }
            int o = offset + i * stride;
            output[o] = r; output[o + 1] = g; output[o + 2] = b;
        }
    }

    private static void AddNoise(float[] buf, double amplitude, bool gaussian, Random rng)
    {
        for (int i = 0; i < buf.Length; i += 3)
        {
            double n = gaussian
                ? amplitude * 0.5 * Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble())
                : amplitude * (rng.NextDouble() * 2 - 1);
            // Mostly luminance noise with a little per-channel variation.
            buf[i] += (float)(n + (rng.NextDouble() - 0.5));
            buf[i + 1] += (float)(n + (rng.NextDouble() - 0.5));
            buf[i + 2] += (float)(n + (rng.NextDouble() - 0.5));
        }
    }
}
