namespace ShareGPT4V.Shapes;

/// <summary>The fixed vocabulary of the shapes world: colours, shapes, sizes, grid cells, backgrounds.</summary>
internal static class World
{
    /// <summary>Colour names in class-id order (the label mask's colour index).</summary>
    public static readonly string[] Colors = ["red", "green", "blue", "yellow", "orange", "purple"];

    /// <summary>
    /// RGB prototypes of each colour. The first is the world's own base (jittered ±20 per channel); the others are
    /// common renderings of the same name, such as the CSS / PIL named colours (jittered ±12), so a model does not learn
    /// one renderer's palette. The second is the CSS / PIL named colour itself, which the alt renderer uses. Every
    /// jittered prototype stays at least 15 levels (in some channel) from every prototype of another colour.
    /// </summary>
    public static readonly (int R, int G, int B)[][] ColorPrototypes =
    [
        [(220, 40, 40), (255, 0, 0), (200, 25, 35), (230, 70, 60)],
        [(40, 165, 60), (0, 128, 0), (0, 200, 0), (34, 139, 34), (60, 180, 75)],
        [(45, 85, 220), (0, 0, 255), (30, 110, 230), (65, 105, 225)],
        [(240, 218, 40), (255, 255, 0), (250, 225, 50)],
        [(246, 138, 28), (255, 165, 0), (255, 140, 0), (245, 120, 48)],
        [(140, 60, 190), (128, 0, 128), (150, 40, 170), (110, 50, 160)],
    ];

    public const int BaseColorJitter = 20, ColorVariantJitter = 12, AltColorJitter = 8;

    /// <summary>Shape names in class-id order.</summary>
    public static readonly string[] Shapes = ["circle", "square", "triangle", "star"];

    /// <summary>Size names in class-id order.</summary>
    public static readonly string[] Sizes = ["small", "large"];

    /// <summary>Nominal shape extent as a fraction of the shorter side of its cell.</summary>
    public static readonly double[] SizeFraction = [0.45, 0.80];

    public static readonly string[] Rows = ["top", "middle", "bottom"];
    public static readonly string[] Cols = ["left", "center", "right"];

    /// <summary>
    /// Pale backgrounds by name, each with a few renderings (the world's own first, then CSS-like ones such as
    /// lightblue, lightgreen, lightpink); a scene jitters each channel by up to ±5.
    /// </summary>
    public static readonly (string Name, (int R, int G, int B)[] Rgb)[] Backgrounds =
    [
        ("light gray", [(214, 214, 214), (211, 211, 211), (226, 226, 226)]),
        ("white", [(250, 250, 250), (255, 255, 255)]),
        ("cream", [(250, 244, 222), (255, 253, 208)]),
        ("pale yellow", [(251, 247, 196), (255, 255, 224)]),
        ("light blue", [(208, 226, 245), (173, 216, 230), (224, 238, 252)]),
        ("pale pink", [(250, 218, 228), (255, 182, 193), (255, 228, 225)]),
        ("light green", [(212, 240, 212), (144, 238, 144), (236, 252, 236)]),
        ("beige", [(238, 228, 208), (245, 245, 220)]),
        ("lavender", [(230, 224, 246), (230, 230, 250)]),
    ];

    public static readonly string[] NumberWords = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"];

    /// <summary>The name of a grid cell as answers and captions use it ("top left", ..., "center", ..., "bottom right").</summary>
    public static string PositionName(int row, int col) => (row, col) switch
    {
        (1, 1) => "center",
        (1, _) => "middle " + Cols[col],
        _ => Rows[row] + " " + Cols[col],
    };

    /// <summary>The label-mask class of an object: 1 + (colour·4 + shape)·2 + size, so 1..48; 0 is background.</summary>
    public static int ClassId(int color, int shape, int size) => 1 + (color * Shapes.Length + shape) * 2 + size;

    public static int ClassCount => 1 + Colors.Length * Shapes.Length * Sizes.Length;

    /// <summary>The label-mask class of <c>generate --label-cells</c>: 1 + (colour·4 + shape)·9 + row·3 + column, so
    /// 1..216; 0 is background. It puts where an object is into what the tower is trained to see.</summary>
    public static int CellClassId(int color, int shape, int row, int col) => 1 + (color * Shapes.Length + shape) * 9 + row * 3 + col;

    public static int CellClassCount => 1 + Colors.Length * Shapes.Length * 9;

    public static string Capitalize(string s) => s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..];
}

/// <summary>One filled shape: what it is, where it sits and how it is drawn.</summary>
/// <param name="Color">Index into <see cref="World.Colors"/>.</param>
/// <param name="Shape">Index into <see cref="World.Shapes"/>.</param>
/// <param name="Size">0 small, 1 large.</param>
/// <param name="Row">Grid row 0..2 (top, middle, bottom).</param>
/// <param name="Col">Grid column 0..2 (left, center, right).</param>
/// <param name="Cx">Centre x in pixels.</param>
/// <param name="Cy">Centre y in pixels.</param>
/// <param name="Extent">Drawn extent in pixels (diameter, side, base width, star's outer diameter).</param>
/// <param name="Rotation">Rotation in radians (0 for circles).</param>
/// <param name="StarInner">Star inner radius over outer radius.</param>
/// <param name="Rgb">Fill colour after jitter.</param>
internal sealed record SceneObject(int Color, int Shape, int Size, int Row, int Col, double Cx, double Cy, double Extent,
    double Rotation, double StarInner, (byte R, byte G, byte B) Rgb)
{
    public string ColorName => World.Colors[Color];
    public string ShapeName => World.Shapes[Shape];
    public string SizeName => World.Sizes[Size];
    public string Position => World.PositionName(Row, Col);
    public int ClassId => World.ClassId(Color, Shape, Size);
}

/// <summary>How the background is textured.</summary>
internal enum BackgroundTexture { Plain, Noise, Gradient, Stripes, Dots, Radial }

/// <summary>A whole image: size, background and the objects in reading order (row, then column).</summary>
internal sealed record Scene(int Width, int Height, int Background, (byte R, byte G, byte B) BackgroundRgb,
    BackgroundTexture Texture, IReadOnlyList<SceneObject> Objects)
{
    public string BackgroundName => World.Backgrounds[Background].Name;
}
