using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ShareGPT4V.Modeling;

/// <summary>
/// A block-quantized matrix of <see cref="Rows"/> × <see cref="Columns"/> weights, held as a uint8 tensor of
/// [rows, row bytes] (its own memory, or a view of a memory-mapped file). It is a parameter like any other weight, so
/// modules, residency and disposal treat it as one; the layers that read weights dispatch on this type. The blocks are
/// in the row layout (as files store them) or, for the decode kernels, interleaved in groups of eight rows
/// (<see cref="Interleaved"/>, <see cref="InterleavedBlocks"/>); either way row r's bytes lie in the same
/// [r / 8 · 8, r / 8 · 8 + 8) rows of the tensor.
/// </summary>
internal sealed class QuantizedWeight : Parameter
{
    /// <summary>The block format.</summary>
    public QuantizationFormat Format { get; }
    /// <summary>Rows of the matrix (output features of a linear layer).</summary>
    public long Rows { get; }
    /// <summary>Columns of the matrix (input features), a multiple of 32.</summary>
    public long Columns { get; }
    /// <summary>Whether the blocks are in the interleaved decode layout (<see cref="InterleavedBlocks"/>) rather than the row layout.</summary>
    public bool Interleaved { get; }

    /// <summary>Wraps <paramref name="blocks"/>, a contiguous uint8 [rows, row bytes] tensor; the weight takes ownership.</summary>
    /// <param name="blocks">The blocks.</param>
    /// <param name="format">Their format.</param>
    /// <param name="rows">Rows of the matrix.</param>
    /// <param name="columns">Columns of the matrix (a multiple of 32).</param>
    /// <param name="interleaved">The blocks are in the interleaved layout (rows a multiple of 8).</param>
    public QuantizedWeight(Tensor blocks, QuantizationFormat format, long rows, long columns, bool interleaved = false) : base(blocks, requires_grad: false)
    {
        Format = format;
        Rows = rows;
        Columns = columns;
        Interleaved = interleaved;
        if (interleaved && !CanInterleave(rows))
            throw new ArgumentException($"An interleaved matrix has rows in groups of {InterleavedBlocks.Rows}; got {rows}");
        // The base constructor has taken over the blocks' handle: check this tensor.
        if (!Fits(columns) || dtype != ScalarType.Byte || dim() != 2 || shape[0] != rows
            || shape[1] != QuantizationFormats.RowBytes(format, columns) || !is_contiguous() || device_type != DeviceType.CPU)
            throw new ArgumentException($"{QuantizationFormats.Name(format)} blocks of a {rows} x {columns} matrix must be a contiguous CPU uint8 tensor " +
                $"[{rows}, {QuantizationFormats.RowBytes(format, columns)}]; got {dtype} [{string.Join(", ", shape)}]");
    }

    /// <summary>Can a rows × columns matrix be stored in a block format (rows of whole blocks)?</summary>
    public static bool Fits(long columns) => columns > 0 && columns % QuantizationFormats.BlockSize == 0;

    /// <summary>Can a matrix of this many rows take the interleaved layout?</summary>
    public static bool CanInterleave(long rows) => rows > 0 && rows % InterleavedBlocks.Rows == 0;

    /// <summary>Bytes of one row of blocks.</summary>
    public long RowBytes => QuantizationFormats.RowBytes(Format, Columns);

    internal unsafe byte* Pointer => (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(bytes));

    /// <summary>
    /// Quantizes a float matrix [rows, columns] (any float dtype) with llama.cpp's reference formulas, in the row layout
    /// or (<paramref name="interleaved"/>, rows a multiple of 8) the decode layout.
    /// </summary>
    public static QuantizedWeight Quantize(Tensor matrix, QuantizationFormat format, bool interleaved = false)
    {
        if (matrix.dim() != 2 || !Fits(matrix.shape[1]))
            throw new ArgumentException($"A {format} matrix needs rows of whole 32-weight blocks; got [{string.Join(", ", matrix.shape)}]");
        long rows = matrix.shape[0], columns = matrix.shape[1];
        long rowBytes = QuantizationFormats.RowBytes(format, columns);
        if (interleaved && !CanInterleave(rows))
            throw new ArgumentException($"An interleaved matrix has rows in groups of {InterleavedBlocks.Rows}; got {rows}");
        var blocks = torch.empty(new[] { rows, rowBytes }, ScalarType.Byte);
        // Huge pages: the decode kernels stream these blocks, and with 4 KiB pages they measured 5-10% slower.
        Checkpoints.MappedMemory.AdviseHugePages(blocks);
        // A bounded float32 panel at a time (whole groups of rows): a half-precision or memory-mapped source is never widened whole.
        long panel = Math.Max(InterleavedBlocks.Rows, (8L << 20) / (columns * 4) / InterleavedBlocks.Rows * InterleavedBlocks.Rows);
        byte[]? rowMajor = interleaved ? new byte[Math.Min(panel, rows) * rowBytes] : null;
        unsafe
        {
            byte* dst = (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(blocks.bytes));
            fixed (byte* staging = rowMajor)
                for (long r0 = 0; r0 < rows; r0 += panel)
                {
                    long n = Math.Min(panel, rows - r0);
                    using var scope = NewDisposeScope();
                    var f = matrix.narrow(0, r0, n).to(ScalarType.Float32).contiguous();
                    nint src = (nint)Unsafe.AsPointer(ref MemoryMarshal.GetReference(f.bytes));
                    nint dstRows = (nint)(staging != null ? staging : dst + r0 * rowBytes);
                    // Rows are independent: quantize them on libtorch's thread count.
                    Parallel.For(0, n, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, torch.get_num_threads()) }, r =>
                        BlockQuantizer.QuantizeRow(new ReadOnlySpan<float>((float*)src + r * columns, (int)columns),
                            new Span<byte>((byte*)dstRows + r * rowBytes, (int)rowBytes), format));
                    if (staging != null) InterleavedBlocks.Interleave(format, staging, n, rowBytes, dst + r0 * rowBytes);
                }
        }
        return new QuantizedWeight(blocks, format, rows, columns, interleaved);
    }

    /// <summary>The same blocks in the interleaved decode layout, in fresh memory (this weight is left as it is).</summary>
    public QuantizedWeight ToInterleaved()
    {
        if (Interleaved) throw new InvalidOperationException("The weight is interleaved already");
        if (!CanInterleave(Rows)) throw new ArgumentException($"An interleaved matrix has rows in groups of {InterleavedBlocks.Rows}; got {Rows}");
        var blocks = torch.empty(new[] { Rows, RowBytes }, ScalarType.Byte);
        Checkpoints.MappedMemory.AdviseHugePages(blocks); // as in Quantize
        unsafe
        {
            InterleavedBlocks.Interleave(Format, Pointer, Rows, RowBytes, (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(blocks.bytes)));
        }
        return new QuantizedWeight(blocks, Format, Rows, Columns, interleaved: true);
    }

    /// <summary>The blocks of rows [first, first + count) in the row layout, as files store them (a copy when interleaved).</summary>
    internal unsafe void CopyRows(long first, long count, byte* dst)
    {
        if (first < 0 || count < 0 || first + count > Rows) throw new ArgumentOutOfRangeException(nameof(count));
        if (!Interleaved)
        {
            Buffer.MemoryCopy(Pointer + first * RowBytes, dst, count * RowBytes, count * RowBytes);
            return;
        }
        long blocks = Columns / QuantizationFormats.BlockSize;
        for (long r = first; r < first + count; r++)
        {
            long g = r / InterleavedBlocks.Rows * InterleavedBlocks.Rows;
            InterleavedBlocks.ExtractRow(Format, Pointer + g * RowBytes, (int)(r - g), 0, blocks, dst + (r - first) * RowBytes);
        }
    }

    /// <summary>The whole matrix as float32 (tests, conversions; decoding never does this).</summary>
    public Tensor Dequantize() => DequantizeRows(0, Rows);

    /// <summary>Rows [first, first + count) as a float32 tensor [count, columns].</summary>
    public unsafe Tensor DequantizeRows(long first, long count)
    {
        var y = torch.empty(new[] { count, Columns }, ScalarType.Float32);
        QuantKernels.Dequantize(this, first, count, (float*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(y.bytes)));
        return y;
    }

    /// <summary>The rows named by <paramref name="ids"/> (any shape) as float32, shape ids.shape + [columns]: an embedding lookup.</summary>
    public unsafe Tensor Lookup(Tensor ids)
    {
        using var flat = ids.reshape(-1).to(ScalarType.Int64).contiguous();
        long n = flat.numel();
        var y = torch.empty(new[] { n, Columns }, ScalarType.Float32);
        var idx = flat.data<long>();
        float* yp = (float*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(y.bytes));
        for (long i = 0; i < n; i++)
        {
            long id = idx[i];
            if (id < 0 || id >= Rows) throw new ArgumentOutOfRangeException(nameof(ids), $"Row {id} is outside [0, {Rows})");
            QuantKernels.Dequantize(this, id, 1, yp + i * Columns);
        }
        using (y) return y.reshape(ids.shape.Append(Columns).ToArray());
    }
}
