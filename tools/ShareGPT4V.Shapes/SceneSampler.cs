namespace ShareGPT4V.Shapes;

/// <summary>Which of the two renderers draws the images (the world's rules are the same for both).</summary>
internal enum RendererKind
{
    /// <summary>The training renderer: augments (anti-aliasing on/off, rotation, star proportions, blur, noise).</summary>
    Default,
    /// <summary>A visibly different second renderer, for checking that a model did not learn one renderer.</summary>
    Alt,
}

/// <summary>How one image is drawn, beyond its scene: sampled per image by the renderer kind.</summary>
/// <param name="Supersample">Samples per pixel side for anti-aliasing (1 = none).</param>
/// <param name="BlurSigma">Gaussian blur sigma in pixels (0 = none).</param>
/// <param name="BoxBlur">Box blur radius in pixels (alt renderer; 0 = none).</param>
/// <param name="Noise">Per-pixel noise amplitude in levels (0 = none).</param>
/// <param name="GaussianNoise">Noise drawn from a normal distribution (alt) instead of a uniform one.</param>
/// <param name="TextureAmplitude">Strength of the background texture in levels.</param>
/// <param name="TexturePeriod">Period of stripes / dots, or gradient direction seed, in pixels.</param>
/// <param name="TextureAngle">Direction of stripes / gradient in radians.</param>
internal sealed record RenderSettings(int Supersample, double BlurSigma, int BoxBlur, double Noise, bool GaussianNoise,
    double TextureAmplitude, double TexturePeriod, double TextureAngle);

/// <summary>Draws random scenes that obey the world's rules, with the geometry each renderer kind uses.</summary>
internal static class SceneSampler
{
    public const int MinSide = 128, MaxSide = 512;

    public static (Scene Scene, RenderSettings Settings) Sample(Random rng, RendererKind kind)
    {
        // Size: square, landscape or portrait, each side in [128, 512], aspect at most 2:1.
        int w, h;
        int shapeKind = rng.Next(3);
        if (shapeKind == 0)
        {
            w = h = rng.Next(MinSide, MaxSide + 1);
        }
        else
        {
            int shortSide = rng.Next(MinSide, MaxSide + 1);
            double aspect = 1.15 + rng.NextDouble() * 0.85;
            int longSide = Math.Min(MaxSide, (int)Math.Round(shortSide * aspect));
            if (longSide < shortSide) longSide = shortSide;
            (w, h) = shapeKind == 1 ? (longSide, shortSide) : (shortSide, longSide);
        }

        int bg = rng.Next(World.Backgrounds.Length);
        var bgProtos = World.Backgrounds[bg].Rgb;
        // Default: any rendering of the name; alt: the CSS-like one where there is one.
        var (br, bgG, bb) = kind == RendererKind.Default ? bgProtos[rng.Next(bgProtos.Length)] : bgProtos[Math.Min(1, bgProtos.Length - 1)];
        var bgRgb = (Clamp(br + rng.Next(-5, 6)), Clamp(bgG + rng.Next(-5, 6)), Clamp(bb + rng.Next(-5, 6)));
        BackgroundTexture texture = kind == RendererKind.Default
            ? (BackgroundTexture)rng.Next(4) // plain, noise, gradient, stripes
            : rng.Next(4) switch { 0 => BackgroundTexture.Plain, 1 => BackgroundTexture.Dots, 2 => BackgroundTexture.Radial, _ => BackgroundTexture.Noise };

        int count = 1 + rng.Next(4);
        var cells = Enumerable.Range(0, 9).ToArray();
        rng.Shuffle(cells);
        var chosen = cells.Take(count).OrderBy(c => c).ToArray();
        double cellW = w / 3.0, cellH = h / 3.0, cellMin = Math.Min(cellW, cellH);
        var objects = new List<SceneObject>(count);
        foreach (int cell in chosen)
        {
            int row = cell / 3, col = cell % 3;
            int color = rng.Next(World.Colors.Length), shape = rng.Next(World.Shapes.Length), size = rng.Next(2);
            double jitter = kind == RendererKind.Default ? 0.10 : 0.12;
            double extent = World.SizeFraction[size] * cellMin * (1 + (rng.NextDouble() * 2 - 1) * jitter);
            double maxRot = kind == RendererKind.Default ? 20 : 30;
            double rotation = shape == 0 ? 0 : (rng.NextDouble() * 2 - 1) * maxRot * Math.PI / 180;
            double inner = kind == RendererKind.Default ? 0.38 + rng.NextDouble() * 0.12 : 0.50 + rng.NextDouble() * 0.10;

            // Keep the drawn shape inside its cell: less rotation first, then a smaller extent.
            double slackX, slackY;
            while (true)
            {
                var (hx, hy) = Geometry.HalfExtents(shape, extent, rotation, inner);
                slackX = cellW / 2 - 1.5 - hx;
                slackY = cellH / 2 - 1.5 - hy;
                if (slackX >= 0 && slackY >= 0) break;
                if (Math.Abs(rotation) > 0.01) rotation /= 2;
                else extent *= 0.95;
            }
            double cx = (col + 0.5) * cellW + (rng.NextDouble() * 2 - 1) * Math.Min(slackX, 0.12 * cellW);
            double cy = (row + 0.5) * cellH + (rng.NextDouble() * 2 - 1) * Math.Min(slackY, 0.12 * cellH);
            var protos = World.ColorPrototypes[color];
            int proto, jitterLevels;
            if (kind == RendererKind.Alt) (proto, jitterLevels) = (1, World.AltColorJitter);
            else if (rng.Next(2) == 0) (proto, jitterLevels) = (0, World.BaseColorJitter);
            else (proto, jitterLevels) = (1 + rng.Next(protos.Length - 1), World.ColorVariantJitter);
            var (r, g, b) = protos[proto];
            var rgb = (Clamp(r + rng.Next(-jitterLevels, jitterLevels + 1)), Clamp(g + rng.Next(-jitterLevels, jitterLevels + 1)), Clamp(b + rng.Next(-jitterLevels, jitterLevels + 1)));
            objects.Add(new SceneObject(color, shape, size, row, col, cx, cy, extent, rotation, inner, rgb));
        }

        RenderSettings settings = kind == RendererKind.Default
            ? new RenderSettings(
                Supersample: rng.Next(2) == 0 ? 1 : 4,
                BlurSigma: rng.NextDouble() < 0.4 ? 0 : 0.3 + rng.NextDouble() * 0.9,
                BoxBlur: 0,
                Noise: texture == BackgroundTexture.Noise ? 4 + rng.NextDouble() * 6 : rng.NextDouble() < 0.5 ? 0 : rng.NextDouble() * 4,
                GaussianNoise: false,
                TextureAmplitude: 3 + rng.NextDouble() * 7,
                TexturePeriod: 6 + rng.NextDouble() * 18,
                TextureAngle: rng.NextDouble() * Math.PI)
            : new RenderSettings(
                Supersample: rng.Next(3) switch { 0 => 1, 1 => 2, _ => 3 },
                BlurSigma: 0,
                BoxBlur: rng.NextDouble() < 0.35 ? 1 : 0,
                Noise: texture == BackgroundTexture.Noise ? 3 + rng.NextDouble() * 4 : rng.NextDouble() * 2,
                GaussianNoise: true,
                TextureAmplitude: 4 + rng.NextDouble() * 8,
                TexturePeriod: 10 + rng.NextDouble() * 14,
                TextureAngle: rng.NextDouble() * Math.PI * 2);
        return (new Scene(w, h, bg, bgRgb, texture, objects), settings);
    }

    private static byte Clamp(int v) => (byte)Math.Clamp(v, 0, 255);
}

/// <summary>Shape outlines: polygons for the angular shapes, an exact test for the circle.</summary>
internal static class Geometry
{
    /// <summary>The outline of a square, triangle or star centred at the origin (y down), rotated.</summary>
    public static (double X, double Y)[] Polygon(int shape, double extent, double rotation, double starInner)
    {
        double h = extent / 2;
        (double X, double Y)[] pts = shape switch
        {
            1 => [(-h, -h), (h, -h), (h, h), (-h, h)],
            // Apex up; base width = extent, height 0.9·extent, centred on its bounding box.
            2 => [(0, -0.9 * h), (h, 0.9 * h), (-h, 0.9 * h)],
            3 => Star(h, h * starInner),
            _ => throw new ArgumentOutOfRangeException(nameof(shape)),
        };
        double c = Math.Cos(rotation), s = Math.Sin(rotation);
        return pts.Select(p => (p.X * c - p.Y * s, p.X * s + p.Y * c)).ToArray();
    }

    private static (double X, double Y)[] Star(double outer, double inner)
    {
        var pts = new (double, double)[10];
        for (int i = 0; i < 10; i++)
        {
            double angle = -Math.PI / 2 + i * Math.PI / 5;
            double r = i % 2 == 0 ? outer : inner;
            pts[i] = (r * Math.Cos(angle), r * Math.Sin(angle));
        }
        return pts;
    }

    public static (double Hx, double Hy) HalfExtents(int shape, double extent, double rotation, double starInner)
    {
        if (shape == 0) return (extent / 2, extent / 2);
        var p = Polygon(shape, extent, rotation, starInner);
        return (p.Max(v => Math.Abs(v.X)), p.Max(v => Math.Abs(v.Y)));
    }

    /// <summary>Distance from a point to the nearest edge of a polygon.</summary>
    public static double EdgeDistance((double X, double Y)[] poly, double x, double y)
    {
        double best = double.MaxValue;
        for (int i = 0, j = poly.Length - 1; i < poly.Length; j = i++)
        {
            var (ax, ay) = poly[j];
            var (bx, by) = poly[i];
            double dx = bx - ax, dy = by - ay;
            double t = Math.Clamp(((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy), 0, 1);
            double ex = ax + t * dx - x, ey = ay + t * dy - y;
            best = Math.Min(best, ex * ex + ey * ey);
        }
        return Math.Sqrt(best);
    }

    /// <summary>Even-odd point-in-polygon test (the star is not convex).</summary>
    public static bool Inside((double X, double Y)[] poly, double x, double y)
    {
        bool inside = false;
        for (int i = 0, j = poly.Length - 1; i < poly.Length; j = i++)
        {
            var (xi, yi) = poly[i];
            var (xj, yj) = poly[j];
            if ((yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi) inside = !inside;
        }
        return inside;
    }
}
