namespace ShareGPT4V.Preprocessing;

/// <summary>
/// 8-bit separable convolution resize that reproduces Pillow's <c>Image.resize</c> (ImagingResample) bit for bit:
/// the same filter kernels, the same coefficient normalisation, 22-bit fixed-point weights, round-half-up and
/// clipping, and the same order (horizontal pass to an 8-bit intermediate, then vertical pass).
/// Only an output window is computed (the center crop), which gives exactly the same pixels as resizing the
/// whole image and cropping afterwards, but keeps extreme aspect ratios cheap.
/// </summary>
internal static class PilResampler
{
    // Pillow: PRECISION_BITS = 32 - 8 - 2, so that 8-bit values times weights (sum of |w| < 4) fit an int32.
    private const int PrecisionBits = 32 - 8 - 2;
    private const int Half = 1 << (PrecisionBits - 1);

    /// <summary>
    /// Resizes <paramref name="src"/> to <paramref name="outWidth"/> x <paramref name="outHeight"/> and returns the window
    /// starting at (<paramref name="winX"/>, <paramref name="winY"/>) of size <paramref name="winWidth"/> x <paramref name="winHeight"/>
    /// as HWC RGB bytes. Window pixels that fall outside the resized image are 0 (what transformers' center_crop pads with).
    /// </summary>
    public static byte[] ResizeWindow(SourceView src, long outWidth, long outHeight, ResampleFilter filter,
        long winX, long winY, int winWidth, int winHeight)
    {
        var result = new byte[checked(winWidth * winHeight * 3)];
        // The part of the window that lies inside the resized image.
        long xs = Math.Max(0, winX), xe = Math.Min(outWidth, winX + winWidth);
        long ys = Math.Max(0, winY), ye = Math.Min(outHeight, winY + winHeight);
        if (xs >= xe || ys >= ye) return result;
        int w = (int)(xe - xs), h = (int)(ye - ys);

        var (support, kernel) = Kernel(filter);
        // Pillow skips a pass when that dimension keeps its size (the full-image box is the default).
        bool needHorizontal = outWidth != src.Width;
        bool needVertical = outHeight != src.Height;

        var horiz = needHorizontal ? Coefficients.Compute(src.Width, outWidth, support, kernel, xs, w) : null;
        var vert = needVertical ? Coefficients.Compute(src.Height, outHeight, support, kernel, ys, h) : null;

        // Input rows that the vertical pass reads.
        int rowFirst, rowEnd;
        if (vert is null) { rowFirst = (int)ys; rowEnd = (int)ye; }
        else { rowFirst = vert.FirstInput; rowEnd = vert.EndInput; }

        // Horizontal pass into an 8-bit intermediate (rows rowFirst..rowEnd, window columns only).
        int tmpStride = w * 3;
        var tmp = new byte[checked((long)(rowEnd - rowFirst) * tmpStride)];
        var rowBuf = new byte[src.Width * 3];
        // A padded canvas repeats the background: a background row, and every output pixel whose taps read only
        // background columns, equal the same pixel of the resized background row. Compute that row once; then a tall
        // thin image padded to a square (1 x 50000 becomes 50000 x 50000) costs its own pixels, not the canvas's.
        byte[]? backgroundOut = null;
        bool[]? needsImage = null;
        if (src.HasPadding)
        {
            src.FillBackground(rowBuf);
            backgroundOut = new byte[tmpStride];
            if (horiz is null) rowBuf.AsSpan((int)xs * 3, tmpStride).CopyTo(backgroundOut);
            else
            {
                HorizontalRow(rowBuf, backgroundOut, horiz, null, null);
                var (first, end) = src.ImageColumns;
                needsImage = new bool[w];
                for (int x = 0; x < w; x++) needsImage[x] = horiz.Min[x] < end && horiz.Min[x] + horiz.Count[x] > first;
            }
        }
        for (int y = rowFirst; y < rowEnd; y++)
        {
            var dst = tmp.AsSpan((y - rowFirst) * tmpStride, tmpStride);
            if (src.IsBackgroundRow(y)) { backgroundOut!.CopyTo(dst); continue; }
            src.ReadRow(y, rowBuf, backgroundFilled: src.HasPadding);
            if (horiz is null) rowBuf.AsSpan((int)xs * 3, tmpStride).CopyTo(dst);
            else HorizontalRow(rowBuf, dst, horiz, needsImage, backgroundOut);
        }

        // Vertical pass (or a copy), written into the window at its offset.
        int offX = (int)(xs - winX), offY = (int)(ys - winY);
        for (int j = 0; j < h; j++)
        {
            var dst = result.AsSpan(((offY + j) * winWidth + offX) * 3, tmpStride);
            if (vert is null)
            {
                tmp.AsSpan(j * tmpStride, tmpStride).CopyTo(dst);
                continue;
            }
            int ymin = vert.Min[j] - rowFirst, count = vert.Count[j];
            var k = vert.Weights.AsSpan(j * vert.KSize, count);
            for (int i = 0; i < tmpStride; i++)
            {
                int ss = Half;
                int p = ymin * tmpStride + i;
                for (int t = 0; t < k.Length; t++, p += tmpStride) ss += tmp[p] * k[t];
                dst[i] = Clip8(ss);
            }
        }
        return result;
    }

    /// <summary>One row of the horizontal pass; outputs with <paramref name="needed"/> false are copied from <paramref name="precomputed"/>.</summary>
    private static void HorizontalRow(ReadOnlySpan<byte> row, Span<byte> dst, Coefficients c, bool[]? needed, byte[]? precomputed)
    {
        for (int x = 0; x < c.Min.Length; x++)
        {
            if (needed is not null && !needed[x])
            {
                precomputed.AsSpan(x * 3, 3).CopyTo(dst[(x * 3)..]);
                continue;
            }
            int s0 = Half, s1 = Half, s2 = Half;
            int p = c.Min[x] * 3;
            var k = c.Weights.AsSpan(x * c.KSize, c.Count[x]);
            for (int t = 0; t < k.Length; t++, p += 3)
            {
                int kt = k[t];
                s0 += row[p] * kt;
                s1 += row[p + 1] * kt;
                s2 += row[p + 2] * kt;
            }
            dst[x * 3] = Clip8(s0);
            dst[x * 3 + 1] = Clip8(s1);
            dst[x * 3 + 2] = Clip8(s2);
        }
    }

    private static byte Clip8(int v)
    {
        v >>= PrecisionBits; // arithmetic shift: floors negative sums, which then clip to 0
        return v < 0 ? (byte)0 : v > 255 ? (byte)255 : (byte)v;
    }

    /// <summary>Pillow's filter kernels and their supports. The arithmetic order is kept so weights match to the last bit.</summary>
    private static (double Support, Func<double, double> Kernel) Kernel(ResampleFilter f) => f switch
    {
        ResampleFilter.Box => (0.5, x => x > -0.5 && x <= 0.5 ? 1.0 : 0.0),
        ResampleFilter.Bilinear => (1.0, x => { if (x < 0.0) x = -x; return x < 1.0 ? 1.0 - x : 0.0; }),
        ResampleFilter.Hamming => (1.0, Hamming),
        ResampleFilter.Bicubic => (2.0, Bicubic),
        ResampleFilter.Lanczos => (3.0, x => -3.0 <= x && x < 3.0 ? Sinc(x) * Sinc(x / 3.0) : 0.0),
        _ => throw new ArgumentOutOfRangeException(nameof(f), f, "Unsupported resample filter"),
    };

    // Keys' cubic convolution with a = -0.5.
    private static double Bicubic(double x)
    {
        const double a = -0.5;
        if (x < 0.0) x = -x;
        if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
        if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
        return 0.0;
    }

    private static double Hamming(double x)
    {
        if (x < 0.0) x = -x;
        if (x == 0.0) return 1.0;
        if (x >= 1.0) return 0.0;
        x *= Math.PI;
        return Math.Sin(x) / x * (0.54f + 0.46f * Math.Cos(x)); // Pillow uses float literals here
    }

    private static double Sinc(double x)
    {
        if (x == 0.0) return 1.0;
        x *= Math.PI;
        return Math.Sin(x) / x;
    }

    /// <summary>Fixed-point weights for a run of output positions along one axis (Pillow's precompute_coeffs + normalize_coeffs_8bpc).</summary>
    private sealed class Coefficients
    {
        public required int[] Min;
        public required int[] Count;
        public required int[] Weights; // KSize per output position
        public required int KSize;
        public int FirstInput => Min.Length == 0 ? 0 : Min.Min();
        public int EndInput
        {
            get
            {
                int end = 0;
                for (int i = 0; i < Min.Length; i++) end = Math.Max(end, Min[i] + Count[i]);
                return end;
            }
        }

        public static Coefficients Compute(int inSize, long outSize, double filterSupport, Func<double, double> kernel, long first, int count)
        {
            // Pillow receives the box (0, 0, width, height) as C floats, hence the float rounding of inSize.
            double scale = (double)(float)inSize / outSize;
            double filterScale = scale < 1.0 ? 1.0 : scale;
            double support = filterSupport * filterScale;
            int ksize = (int)Math.Ceiling(support) * 2 + 1;
            var min = new int[count];
            var cnt = new int[count];
            var weights = new int[checked(count * ksize)];
            var k = new double[ksize];
            double ss = 1.0 / filterScale;
            for (int i = 0; i < count; i++)
            {
                long xx = first + i;
                double center = (xx + 0.5) * scale;
                // (int) truncates toward zero, like the C cast.
                int xmin = (int)(center - support + 0.5);
                if (xmin < 0) xmin = 0;
                int xmax = (int)(center + support + 0.5);
                if (xmax > inSize) xmax = inSize;
                xmax -= xmin;
                double ww = 0.0;
                for (int x = 0; x < xmax; x++)
                {
                    double w = kernel((x + xmin - center + 0.5) * ss);
                    k[x] = w;
                    ww += w;
                }
                for (int x = 0; x < xmax; x++)
                {
                    if (ww != 0.0) k[x] /= ww;
                    double v = k[x] * (1 << PrecisionBits);
                    weights[i * ksize + x] = v < 0 ? (int)(-0.5 + v) : (int)(0.5 + v);
                }
                min[i] = xmin;
                cnt[i] = Math.Max(xmax, 0);
            }
            return new Coefficients { Min = min, Count = cnt, Weights = weights, KSize = ksize };
        }
    }
}

/// <summary>
/// The image the resampler reads: either a decoded image as is, or that image pasted on a square canvas of a
/// uniform colour (LLaVA's expand2square) without materialising the canvas.
/// </summary>
internal sealed class SourceView
{
    private readonly RgbImage _image;
    private readonly int _offsetX, _offsetY;
    private readonly byte _r, _g, _b;

    public int Width { get; }
    public int Height { get; }

    private SourceView(RgbImage image, int width, int height, int offsetX, int offsetY, (byte R, byte G, byte B) background)
    {
        _image = image;
        Width = width;
        Height = height;
        _offsetX = offsetX;
        _offsetY = offsetY;
        (_r, _g, _b) = background;
    }

    public static SourceView Plain(RgbImage image) => new(image, image.Width, image.Height, 0, 0, (0, 0, 0));

    /// <summary>LLaVA's expand2square: a max(W, H) square of <paramref name="background"/> with the image pasted at ((max-W)//2, (max-H)//2).</summary>
    public static SourceView ExpandToSquare(RgbImage image, (byte R, byte G, byte B) background)
    {
        int side = Math.Max(image.Width, image.Height);
        return new(image, side, side, (side - image.Width) / 2, (side - image.Height) / 2, background);
    }

    public bool IsBackgroundRow(int y) => y < _offsetY || y >= _offsetY + _image.Height;

    /// <summary>True when the canvas is larger than the image (some rows or columns are background).</summary>
    public bool HasPadding => Width != _image.Width || Height != _image.Height;

    /// <summary>The canvas columns [First, End) the image covers.</summary>
    public (int First, int End) ImageColumns => (_offsetX, _offsetX + _image.Width);

    /// <summary>Fills a whole canvas row with the background colour.</summary>
    public void FillBackground(Span<byte> dst)
    {
        for (int x = 0; x < Width; x++)
        {
            dst[x * 3] = _r;
            dst[x * 3 + 1] = _g;
            dst[x * 3 + 2] = _b;
        }
    }

    /// <summary>
    /// Reads canvas row <paramref name="y"/>. With <paramref name="backgroundFilled"/>, <paramref name="dst"/> already holds
    /// the background in the padding columns (from <see cref="FillBackground"/>), and only the image's pixels are written.
    /// </summary>
    public void ReadRow(int y, Span<byte> dst, bool backgroundFilled = false)
    {
        if (Width == _image.Width && !IsBackgroundRow(y))
        {
            _image.Row(y - _offsetY).CopyTo(dst);
            return;
        }
        if (!backgroundFilled) FillBackground(dst);
        if (!IsBackgroundRow(y)) _image.Row(y - _offsetY).CopyTo(dst.Slice(_offsetX * 3));
    }
}
