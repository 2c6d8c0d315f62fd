using System.Buffers.Binary;
using System.Text.Json;
using TorchSharp;

namespace ShareGPT4V.Checkpoints;

/// <summary>
/// One <c>.safetensors</c> file: an 8-byte little-endian header length, a JSON header, then the raw tensor bytes.
/// The header is read and fully validated on open (dtype, shape, byte counts, offsets that tile the data section
/// exactly); tensor data is memory-mapped on first use.
/// </summary>
internal sealed class SafeTensorsFile : ITensorReader
{
    /// <summary>The largest header accepted, as in the reference implementation (100 MB).</summary>
    public const long MaxHeaderBytes = 100_000_000;

    private readonly Dictionary<string, Entry> _entries;
    private readonly List<string> _names;
    private readonly long _dataStart;
    private bool _disposed;

    private sealed record Entry(TensorInfo Info, long Begin, long End)
    {
        /// <summary>The stored [rows, row bytes] of a block-quantized matrix (see <see cref="QuantizationKeyPrefix"/>).</summary>
        public long[]? StoredShape { get; init; }
    }

    /// <summary>
    /// <c>__metadata__</c> keys <c>sharegpt4v.quant.NAME</c> = <c>q8_0</c> / <c>q4_0</c> mark tensor NAME as a
    /// block-quantized matrix: stored as U8 [rows, row bytes] (llama.cpp's blocks, rows of whole blocks), read as a
    /// rows × (row bytes / block bytes · 32) matrix.
    /// </summary>
    public const string QuantizationKeyPrefix = "sharegpt4v.quant.";

    public string FilePath { get; }
    public string Source => FilePath;
    public IReadOnlyList<string> Names => _names;

    /// <summary>The optional <c>__metadata__</c> string map of the header.</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    public long FileLength { get; }
    private readonly FileMapping _mapping;

    private SafeTensorsFile(string path, long fileLength, long dataStart, Dictionary<string, Entry> entries,
        List<string> names, Dictionary<string, string> metadata)
    {
        FilePath = path;
        FileLength = fileLength;
        _mapping = new FileMapping(path, fileLength);
        _dataStart = dataStart;
        _entries = entries;
        _names = names;
        Metadata = metadata;
    }

    /// <summary>Opens and validates a safetensors file. Throws <see cref="CheckpointFormatException"/> on any problem.</summary>
    public static SafeTensorsFile Open(string path)
    {
        var full = Path.GetFullPath(path);
        if (!File.Exists(full))
            throw new CheckpointFormatException("Safetensors file not found", full);
        using var fs = new FileStream(full, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.None);
        long fileLength = fs.Length;
        if (fileLength < 8)
            throw new CheckpointFormatException($"File is truncated: {fileLength} bytes, shorter than the 8-byte header length", full);
        Span<byte> lenBytes = stackalloc byte[8];
        fs.ReadExactly(lenBytes);
        ulong headerLen = BinaryPrimitives.ReadUInt64LittleEndian(lenBytes);
        if (headerLen > MaxHeaderBytes)
            throw new CheckpointFormatException($"Header length {headerLen} exceeds the limit of {MaxHeaderBytes} bytes", full);
        if ((long)headerLen > fileLength - 8)
            throw new CheckpointFormatException($"Header length {headerLen} is larger than the file allows ({fileLength - 8} bytes after the length prefix): the file is truncated or not safetensors", full);
        var header = new byte[headerLen];
        fs.ReadExactly(header);

        // System.Text.Json accepts invalid UTF-8 inside strings and only fails (with InvalidOperationException) when
        // a name is read, so check the encoding first.
        if (!System.Text.Unicode.Utf8.IsValid(header))
            throw new CheckpointFormatException("Header is not valid UTF-8 JSON", full);
        JsonDocument doc;
        try { doc = JsonDocument.Parse(header, new JsonDocumentOptions { MaxDepth = 16 }); }
        catch (JsonException e) { throw new CheckpointFormatException($"Header is not valid JSON: {e.Message}", full, inner: e); }

        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new CheckpointFormatException("Header is not a JSON object", full);
            if (Configuration.JsonText.FindUndecodableString(doc.RootElement) is { } where)
                throw new CheckpointFormatException("Header: " + Configuration.JsonText.UndecodableMessage(where), full);
            long dataStart = 8 + (long)headerLen;
            long dataLen = fileLength - dataStart;
            var entries = new Dictionary<string, Entry>(StringComparer.Ordinal);
            var names = new List<string>();
            var metadata = new Dictionary<string, string>();
            foreach (var prop in doc.RootElement.EnumerateObject())
            {
                if (prop.Name == "__metadata__")
                {
                    if (prop.Value.ValueKind != JsonValueKind.Object)
                        throw new CheckpointFormatException("__metadata__ is not an object", full);
                    foreach (var m in prop.Value.EnumerateObject())
                    {
                        if (m.Value.ValueKind != JsonValueKind.String)
                            throw new CheckpointFormatException($"__metadata__ value '{m.Name}' is not a string", full);
                        metadata[m.Name] = m.Value.GetString()!;
                    }
                    continue;
                }
                var e = ParseEntry(full, prop);
                if (!entries.TryAdd(prop.Name, e))
                    throw new CheckpointFormatException("Duplicate tensor name in header", full, prop.Name);
                names.Add(prop.Name);
            }

            // The data section must be tiled exactly: sorted by offset, no gaps, no overlap, ending at the file's end.
            long cursor = 0;
            foreach (var e in entries.Values.OrderBy(x => x.Begin).ThenBy(x => x.End))
            {
                if (e.Begin != cursor)
                    throw new CheckpointFormatException(
                        e.Begin < cursor
                            ? $"Data offsets [{e.Begin}, {e.End}) overlap the previous tensor (which ends at {cursor})"
                            : $"Data offsets leave a gap: tensor starts at {e.Begin} but the previous one ends at {cursor}",
                        full, e.Info.Name);
                cursor = e.End;
            }
            if (cursor != dataLen)
                throw new CheckpointFormatException(
                    cursor > dataLen
                        ? $"Data offsets run to byte {cursor} but the data section has only {dataLen} bytes: the file is truncated"
                        : $"Data section has {dataLen} bytes but the tensors cover only {cursor}",
                    full);
            foreach (var (key, value) in metadata)
            {
                if (!key.StartsWith(QuantizationKeyPrefix, StringComparison.Ordinal)) continue;
                var name = key[QuantizationKeyPrefix.Length..];
                var format = Modeling.QuantizationFormats.TryParse(value)
                    ?? throw new CheckpointFormatException($"__metadata__ '{key}' names unknown format '{value}' (known: q8_0, q4_0)", full, name);
                if (!entries.TryGetValue(name, out var q))
                    throw new CheckpointFormatException($"__metadata__ '{key}' names a tensor the file does not have", full, name);
                int bb = Modeling.QuantizationFormats.BlockBytes(format);
                var sh = q.Info.Shape;
                if (q.Info.DType != torch.ScalarType.Byte || sh.Length != 2 || sh[1] == 0 || sh[1] % bb != 0)
                    throw new CheckpointFormatException($"A {value} tensor must be U8 [rows, a multiple of {bb}]; it is {q.Info.DType} [{string.Join(", ", sh)}]", full, name);
                entries[name] = q with
                {
                    Info = new TensorInfo(name, torch.ScalarType.Float32, new[] { sh[0], sh[1] / bb * 32 }, full) { Format = format },
                    StoredShape = sh,
                };
            }
            return new SafeTensorsFile(full, fileLength, dataStart, entries, names, metadata);
        }
    }

    private static Entry ParseEntry(string file, JsonProperty prop)
    {
        var v = prop.Value;
        if (v.ValueKind != JsonValueKind.Object)
            throw new CheckpointFormatException("Header entry is not an object", file, prop.Name);
        if (!v.TryGetProperty("dtype", out var dt) || dt.ValueKind != JsonValueKind.String)
            throw new CheckpointFormatException("Header entry has no string 'dtype'", file, prop.Name);
        var dtype = ParseDType(dt.GetString()!, file, prop.Name);
        if (!v.TryGetProperty("shape", out var sh) || sh.ValueKind != JsonValueKind.Array)
            throw new CheckpointFormatException("Header entry has no 'shape' array", file, prop.Name);
        if (sh.GetArrayLength() > 16)
            throw new CheckpointFormatException($"Shape has {sh.GetArrayLength()} dimensions (at most 16 are accepted)", file, prop.Name);
        var shape = new long[sh.GetArrayLength()];
        int i = 0;
        long count = 1;
        foreach (var d in sh.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out var n) || n < 0)
                throw new CheckpointFormatException("Shape holds a value that is not a non-negative integer", file, prop.Name);
            shape[i++] = n;
            try { count = checked(count * n); }
            catch (OverflowException) { throw new CheckpointFormatException("Shape's element count overflows", file, prop.Name); }
        }
        if (!v.TryGetProperty("data_offsets", out var off) || off.ValueKind != JsonValueKind.Array || off.GetArrayLength() != 2)
            throw new CheckpointFormatException("Header entry has no 'data_offsets' pair", file, prop.Name);
        var o0 = off[0];
        var o1 = off[1];
        if (o0.ValueKind != JsonValueKind.Number || o1.ValueKind != JsonValueKind.Number
            || !o0.TryGetInt64(out var begin) || !o1.TryGetInt64(out var end) || begin < 0 || end < begin)
            throw new CheckpointFormatException("data_offsets are not a valid [begin, end] pair", file, prop.Name);
        long bytes;
        try { bytes = checked(count * ElementSize(dtype)); }
        catch (OverflowException) { throw new CheckpointFormatException("Tensor byte size overflows", file, prop.Name); }
        if (end - begin != bytes)
            throw new CheckpointFormatException(
                $"Shape [{string.Join(", ", shape)}] of {dtype} needs {bytes} bytes but data_offsets [{begin}, {end}) hold {end - begin}",
                file, prop.Name);
        return new Entry(new TensorInfo(prop.Name, dtype, shape, file), begin, end);
    }

    /// <summary>Maps a safetensors dtype string to a torch dtype.</summary>
    public static torch.ScalarType ParseDType(string s, string? file = null, string? tensor = null) => s switch
    {
        "F64" => torch.ScalarType.Float64,
        "F32" => torch.ScalarType.Float32,
        "F16" => torch.ScalarType.Float16,
        "BF16" => torch.ScalarType.BFloat16,
        "I64" => torch.ScalarType.Int64,
        "I32" => torch.ScalarType.Int32,
        "I16" => torch.ScalarType.Int16,
        "I8" => torch.ScalarType.Int8,
        "U8" => torch.ScalarType.Byte,
        "BOOL" => torch.ScalarType.Bool,
        _ => throw new CheckpointFormatException($"Unsupported dtype '{s}' (supported: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)", file, tensor),
    };

    /// <summary>The safetensors dtype string of a torch dtype.</summary>
    public static string DTypeName(torch.ScalarType t) => t switch
    {
        torch.ScalarType.Float64 => "F64",
        torch.ScalarType.Float32 => "F32",
        torch.ScalarType.Float16 => "F16",
        torch.ScalarType.BFloat16 => "BF16",
        torch.ScalarType.Int64 => "I64",
        torch.ScalarType.Int32 => "I32",
        torch.ScalarType.Int16 => "I16",
        torch.ScalarType.Int8 => "I8",
        torch.ScalarType.Byte => "U8",
        torch.ScalarType.Bool => "BOOL",
        _ => throw new ArgumentException($"dtype {t} has no safetensors name"),
    };

    public static int ElementSize(torch.ScalarType t) => t switch
    {
        torch.ScalarType.Float64 or torch.ScalarType.Int64 => 8,
        torch.ScalarType.Float32 or torch.ScalarType.Int32 => 4,
        torch.ScalarType.Float16 or torch.ScalarType.BFloat16 or torch.ScalarType.Int16 => 2,
        torch.ScalarType.Int8 or torch.ScalarType.Byte or torch.ScalarType.Bool => 1,
        _ => throw new ArgumentException($"Unsupported dtype {t}"),
    };

    public bool Contains(string name) => _entries.ContainsKey(name);

    public TensorInfo GetInfo(string name) =>
        _entries.TryGetValue(name, out var e) ? e.Info : throw new CheckpointFormatException("Tensor not found", FilePath, name);

    /// <summary>Byte range of a tensor relative to the start of the file.</summary>
    public (long Offset, long Length) GetByteRange(string name)
    {
        var e = _entries.TryGetValue(name, out var x) ? x : throw new CheckpointFormatException("Tensor not found", FilePath, name);
        return (_dataStart + e.Begin, e.End - e.Begin);
    }

    public torch.Tensor Load(string name, torch.ScalarType? dtype = null, torch.Device? device = null)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (!_entries.TryGetValue(name, out var e))
            throw new CheckpointFormatException("Tensor not found", FilePath, name);
        CheckUnchanged(name);
        if (e.StoredShape is { } storedShape) return LoadQuantized(e, storedShape, dtype, device);
        var info = e.Info;
        var target = dtype ?? info.DType;
        long bytes = e.End - e.Begin;
        long offset = _dataStart + e.Begin;
        int itemSize = ElementSize(info.DType);
        // A zero-copy view needs the byte offset aligned to the element size; otherwise read this one tensor.
        bool aligned = offset % itemSize == 0;
        var mapped = bytes == 0 || !aligned ? null : Mapped(info.DType);
        using var scope = torch.NewDisposeScope();
        torch.Tensor stored;
        if (bytes == 0)
        {
            stored = torch.empty(info.Shape, info.DType);
        }
        else if (aligned)
        {
            stored = mapped!.as_strided(info.Shape, ContiguousStrides(info.Shape), offset / itemSize);
        }
        else
        {
            // Read straight into the tensor (a managed byte[] would cap tensors at 2 GiB and cost a second copy).
            stored = torch.empty(info.Shape, info.DType);
            using (var fs = new FileStream(FilePath, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16))
            {
                fs.Seek(offset, SeekOrigin.Begin);
                stored.ReadBytesFromStream(fs);
            }
        }
        var result = stored;
        if (target != info.DType)
        {
            if (device is null || device.type == DeviceType.CPU)
            {
                // Convert into memory the kernel may back with huge pages (a few page faults instead of one per 4 KiB),
                // then drop the mapped source pages from this process (they stay in the page cache): converting a
                // checkpoint must not hold both copies resident.
                result = torch.empty(info.Shape, target);
                MappedMemory.AdviseHugePages(result);
                if (aligned && bytes > 0) MappedMemory.Populate(stored); // one call instead of a fault per page
                result.copy_(stored);
                if (aligned && bytes > 0) MappedMemory.Release(stored);
            }
            else result = result.to(target);
        }
        if (device is not null && device.type != DeviceType.CPU)
            result = result.to(device);
        return result.MoveToOuterDisposeScope();
    }

    /// <summary>A quantized matrix: the mapped blocks as a <see cref="Modeling.QuantizedWeight"/>, or dequantized when a dtype is asked for.</summary>
    private torch.Tensor LoadQuantized(Entry e, long[] storedShape, torch.ScalarType? dtype, torch.Device? device)
    {
        var format = e.Info.Format!.Value;
        long offset = _dataStart + e.Begin;
        using var scope = torch.NewDisposeScope();
        var blocks = Mapped(torch.ScalarType.Byte).as_strided(storedShape, ContiguousStrides(storedShape), offset).DetachFromDisposeScope();
        var q = new Modeling.QuantizedWeight(blocks, format, e.Info.Shape[0], e.Info.Shape[1]);
        if (dtype is null && (device is null || device.type == DeviceType.CPU)) return q;
        using (q)
        {
            var result = q.Dequantize().to(dtype ?? torch.ScalarType.Float32);
            if (device is not null && device.type != DeviceType.CPU) result = result.to(device);
            return result.MoveToOuterDisposeScope();
        }
    }

    internal static long[] ContiguousStrides(long[] shape)
    {
        var strides = new long[shape.Length];
        long s = 1;
        for (int i = shape.Length - 1; i >= 0; i--)
        {
            strides[i] = s;
            s *= Math.Max(shape[i], 1);
        }
        return strides;
    }


    private torch.Tensor Mapped(torch.ScalarType dtype) => _mapping.Get(dtype);

    private void CheckUnchanged(string tensor) => _mapping.CheckUnchanged(tensor);

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _mapping.Dispose();
    }
}
