namespace ShareGPT4V.Modeling;

/// <summary>
/// Block-quantized weight formats, with llama.cpp's block layouts (a GGUF file's Q8_0 / Q4_0 tensors are used as
/// stored). Each block covers 32 consecutive weights of one row and starts with its scale as an IEEE half.
/// </summary>
public enum QuantizationFormat
{
    /// <summary>34-byte blocks: scale d, then 32 signed bytes q; w = d·q.</summary>
    Q8_0,
    /// <summary>18-byte blocks: scale d, then 16 bytes; weight j is the low nibble of byte j, weight j+16 the high nibble; w = d·(nibble − 8).</summary>
    Q4_0,
}

/// <summary>Sizes and names of the block formats.</summary>
internal static class QuantizationFormats
{
    /// <summary>Weights per block (every format here).</summary>
    public const int BlockSize = 32;

    /// <summary>Bytes of one block.</summary>
    public static int BlockBytes(QuantizationFormat f) => f switch
    {
        QuantizationFormat.Q8_0 => 34,
        QuantizationFormat.Q4_0 => 18,
        _ => throw new ArgumentOutOfRangeException(nameof(f)),
    };

    /// <summary>Bytes of one row of <paramref name="columns"/> weights (a multiple of <see cref="BlockSize"/>).</summary>
    public static long RowBytes(QuantizationFormat f, long columns) => columns / BlockSize * BlockBytes(f);

    /// <summary>The lower-case name used by options, file metadata and messages (<c>q8_0</c>, <c>q4_0</c>).</summary>
    public static string Name(QuantizationFormat f) => f switch
    {
        QuantizationFormat.Q8_0 => "q8_0",
        QuantizationFormat.Q4_0 => "q4_0",
        _ => f.ToString().ToLowerInvariant(),
    };

    /// <summary>Parses <c>q8_0</c> / <c>q4_0</c> (any case); null for anything else.</summary>
    public static QuantizationFormat? TryParse(string? text) => (text ?? "").Trim().ToLowerInvariant() switch
    {
        "q8_0" => QuantizationFormat.Q8_0,
        "q4_0" => QuantizationFormat.Q4_0,
        _ => null,
    };
}
