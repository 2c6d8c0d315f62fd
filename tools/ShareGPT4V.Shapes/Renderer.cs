using System.Numerics;

namespace ShareGPT4V.Shapes;

/// <summary>An image as interleaved RGB bytes and its label mask (one byte per pixel).</summary>
internal sealed record RenderedImage(int Width, int Height, byte[] Rgb, byte[] Mask);

/// <summary>
/// A per-pixel rasteriser: background texture, shapes with optional k×k supersampled coverage of their edge pixels,
/// blur, noise. Writes the label mask alongside: each pixel whose centre lies inside a shape gets that shape's class id.
/// </summary>
internal static class Renderer
{
    /// <param name="cellLabels">The mask names colour, shape and grid cell (<see cref="World.CellClassId"/>) instead of
    /// colour, shape and size.</param>
    public static RenderedImage Render(Scene scene, RenderSettings s, Random rng, bool cellLabels = false)
    {
        int w = scene.Width, h = scene.Height;
        var buf = new float[w * h * 3];
        PaintBackground(scene, s, buf);
        var mask = new byte[w * h];
        foreach (var o in scene.Objects)
            PaintObject(o, s.Supersample, buf, mask, w, h, (byte)(cellLabels ? World.CellClassId(o.Color, o.Shape, o.Row, o.Col) : o.ClassId));
        if (s.BlurSigma > 0) GaussianBlur(buf, w, h, s.BlurSigma);
        if (s.BoxBlur > 0) BoxBlur(buf, w, h, s.BoxBlur);
        if (s.Noise > 0) AddNoise(buf, s.Noise, s.GaussianNoise, (ulong)rng.NextInt64());
        var rgb = new byte[buf.Length];
        for (int i = 0; i < buf.Length; i++) rgb[i] = (byte)Math.Clamp((int)MathF.Round(buf[i]), 0, 255);
        return new RenderedImage(w, h, rgb, mask);
    }

    private static void PaintBackground(Scene scene, RenderSettings s, float[] buf)
    {
        int w = scene.Width, h = scene.Height;
        var (r, g, b) = scene.BackgroundRgb;
        double amp = s.TextureAmplitude, period = s.TexturePeriod;
        double dx = Math.Cos(s.TextureAngle), dy = Math.Sin(s.TextureAngle);
        double diag = Math.Sqrt((double)w * w + (double)h * h);
        // Every texture is a sum or product of a term in x and a term in y, computed once per column and per row.
        var fx = new double[w];
        var gx = new double[w];
        var fy = new double[h];
        var gy = new double[h];
        bool product = false;
        switch (scene.Texture)
        {
            case BackgroundTexture.Gradient: // soft linear gradient across the image, ±amp
                for (int x = 0; x < w; x++) fx[x] = amp * 2 * (x - w / 2.0) * dx / diag;
                for (int y = 0; y < h; y++) fy[y] = amp * 2 * (y - h / 2.0) * dy / diag;
                break;
            case BackgroundTexture.Stripes: // faint stripes: sin(a + b) = sin a cos b + cos a sin b
                for (int x = 0; x < w; x++) { double a = 2 * Math.PI * x * dx / period; fx[x] = Math.Sin(a); gx[x] = Math.Cos(a); }
                for (int y = 0; y < h; y++) { double a = 2 * Math.PI * y * dy / period; fy[y] = amp * 0.5 * Math.Cos(a); gy[y] = amp * 0.5 * Math.Sin(a); }
                product = true;
                break;
            case BackgroundTexture.Dots: // a faint grid of soft dots (clamped below at 0 after the product)
                for (int x = 0; x < w; x++) fx[x] = Math.Cos(2 * Math.PI * x / period);
                for (int y = 0; y < h; y++) fy[y] = Math.Cos(2 * Math.PI * y / period);
                break;
            case BackgroundTexture.Radial: // darker towards the corners
                for (int x = 0; x < w; x++) fx[x] = -amp * Math.Pow(x - w / 2.0, 2) / (diag * diag / 4);
                for (int y = 0; y < h; y++) fy[y] = -amp * Math.Pow(y - h / 2.0, 2) / (diag * diag / 4);
                break;
        }
        for (int y = 0; y < h; y++)
        {
            int i = y * w * 3;
            for (int x = 0; x < w; x++, i += 3)
            {
                double d = scene.Texture switch
                {
                    BackgroundTexture.Gradient or BackgroundTexture.Radial => fx[x] + fy[y],
                    BackgroundTexture.Stripes when product => fx[x] * fy[y] + gx[x] * gy[y],
                    BackgroundTexture.Dots => -amp * 0.6 * Math.Max(0, fx[x] * fy[y]),
                    _ => 0,
                };
                buf[i] = (float)(r + d);
                buf[i + 1] = (float)(g + d);
                buf[i + 2] = (float)(b + d);
            }
        }
    }

    private static void PaintObject(SceneObject o, int k, float[] buf, byte[] mask, int w, int h, byte label)
    {
        (double X, double Y)[]? poly = o.Shape == 0 ? null : Geometry.Polygon(o.Shape, o.Extent, o.Rotation, o.StarInner);
        double radius = o.Extent / 2, radius2 = radius * radius;
        var (hx, hy) = Geometry.HalfExtents(o.Shape, o.Extent, o.Rotation, o.StarInner);
        int x0 = Math.Max(0, (int)Math.Floor(o.Cx - hx) - 1), x1 = Math.Min(w - 1, (int)Math.Ceiling(o.Cx + hx) + 1);
        int y0 = Math.Max(0, (int)Math.Floor(o.Cy - hy) - 1), y1 = Math.Min(h - 1, (int)Math.Ceiling(o.Cy + hy) + 1);
        bool Inside(double px, double py)
        {
            double u = px - o.Cx, v = py - o.Cy;
            return poly is null ? u * u + v * v <= radius2 : Geometry.Inside(poly, u, v);
        }
        // Distance from a point to the outline; pixels farther than half a diagonal are wholly in or out.
        double EdgeDistance(double px, double py)
        {
            double u = px - o.Cx, v = py - o.Cy;
            return poly is null ? Math.Abs(Math.Sqrt(u * u + v * v) - radius) : Geometry.EdgeDistance(poly, u, v);
        }
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
        int radius = kernel.Length / 2, stride = w * 3;
        var tmp = new float[buf.Length];
        // Horizontal: each row copied with clamped edges, then a weighted sum of shifted copies (contiguous, vectorised).
        var line = new float[(w + 2 * radius) * 3];
        for (int y = 0; y < h; y++)
        {
            var row = buf.AsSpan(y * stride, stride);
            for (int p = 0; p < radius; p++)
            {
                row[..3].CopyTo(line.AsSpan(p * 3));
                row[^3..].CopyTo(line.AsSpan((w + radius + p) * 3));
            }
            row.CopyTo(line.AsSpan(radius * 3));
            var dst = tmp.AsSpan(y * stride, stride);
            dst.Clear();
            for (int t = 0; t < kernel.Length; t++) AddScaled(dst, line.AsSpan(t * 3, stride), kernel[t]);
        }
        // Vertical: each output row is a weighted sum of whole (clamped) rows.
        for (int y = 0; y < h; y++)
        {
            var dst = buf.AsSpan(y * stride, stride);
            dst.Clear();
            for (int t = 0; t < kernel.Length; t++)
                AddScaled(dst, tmp.AsSpan(Math.Clamp(y + t - radius, 0, h - 1) * stride, stride), kernel[t]);
        }
    }

    private static void AddScaled(Span<float> dst, ReadOnlySpan<float> src, float k)
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            var kv = new Vector<float>(k);
            for (; i <= dst.Length - Vector<float>.Count; i += Vector<float>.Count)
                (new Vector<float>(dst[i..]) + kv * new Vector<float>(src[i..])).CopyTo(dst[i..]);
        }
        for (; i < dst.Length; i++) dst[i] += k * src[i];
    }

    /// <summary>SplitMix64: a small, fast generator for per-pixel noise, seeded from the image's own generator.</summary>
    private static ulong Next(ref ulong state)
    {
        ulong z = state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    private static void AddNoise(float[] buf, double amplitude, bool gaussian, ulong state)
    {
        float amp = (float)amplitude;
        for (int i = 0; i < buf.Length; i += 3)
        {
            ulong z = Next(ref state);
            float n;
            if (gaussian)
            {
                // Sum of four uniforms (Irwin-Hall), scaled to unit variance, standard deviation amp / 2.
                ulong g = Next(ref state);
                float sum = (g & 0xFFFF) + ((g >> 16) & 0xFFFF) + ((g >> 32) & 0xFFFF) + (g >> 48);
                n = amp * 0.5f * (sum / 65536f - 2f) * 1.7320508f;
            }
            else n = amp * ((z >> 40) / 8388608f - 1f); // uniform in [-amp, amp)
            // Mostly luminance noise with a little per-channel variation (±0.5).
            buf[i] += n + ((z & 0xFF) / 255f - 0.5f);
            buf[i + 1] += n + (((z >> 8) & 0xFF) / 255f - 0.5f);
            buf[i + 2] += n + (((z >> 16) & 0xFF) / 255f - 0.5f);
        }
    }
}
