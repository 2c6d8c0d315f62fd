using System.Text;
using TorchSharp;

namespace ShareGPT4V.Checkpoints.Gguf;

/// <summary>ggml's tensor element types (the numbering of GGUF files).</summary>
internal enum GgmlType : uint
{
    F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
    Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
    IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22, IQ4_XS = 23,
    I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30, TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39,
}

/// <summary>One tensor of a GGUF file, as its header describes it.</summary>
/// <param name="Name">The GGUF name (e.g. <c>blk.0.attn_q.weight</c>).</param>
/// <param name="Type">Element type.</param>
/// <param name="Ne">Dimensions, fastest-varying first (torch's shape reversed).</param>
/// <param name="Offset">Absolute byte offset of the data in the file.</param>
/// <param name="Bytes">Size of the data.</param>
internal sealed record GgufTensorInfo(string Name, GgmlType Type, long[] Ne, long Offset, long Bytes)
{
    /// <summary>The torch-order shape (<see cref="Ne"/> reversed).</summary>
    public long[] Shape => Enumerable.Reverse(Ne).ToArray();
}

/// <summary>An array value of GGUF metadata: its element type and items (a typed .NET array).</summary>
internal sealed record GgufArray(GgufValueType ElementType, Array Items)
{
    public int Count => Items.Length;
}

/// <summary>GGUF metadata value types.</summary>
internal enum GgufValueType : uint
{
    UInt8 = 0, Int8 = 1, UInt16 = 2, Int16 = 3, UInt32 = 4, Int32 = 5, Float32 = 6, Bool = 7, String = 8, Array = 9,
    UInt64 = 10, Int64 = 11, Float64 = 12,
}

/// <summary>
/// A GGUF file (llama.cpp's model container, versions 2 and 3): a header of typed key/value metadata and tensor
/// descriptions, then aligned tensor data. The whole header is read and checked when the file is opened (every
/// length, count, dimension and offset against the file's size and fixed limits before anything is allocated,
/// tensors inside the data section and not overlapping); tensor data is memory-mapped on use.
/// </summary>
internal sealed class GgufFile : IDisposable
{
    /// <summary>Most metadata entries accepted.</summary>
    public const int MaxKeys = 1 << 16;
    /// <summary>Most tensors accepted.</summary>
    public const int MaxTensors = 1 << 16;
    /// <summary>Longest string accepted (keys, values and array items), in bytes.</summary>
    public const int MaxStringBytes = 16 << 20;
    /// <summary>Most items of one metadata array.</summary>
    public const int MaxArrayItems = 1 << 24;
    /// <summary>Most dimensions of a tensor (ggml's limit).</summary>
    public const int MaxDims = 4;

    private readonly Dictionary<string, GgufTensorInfo> _byName;
    private readonly FileMapping _mapping;
    private bool _disposed;

    public string FilePath { get; }
    public uint Version { get; }
    public long Alignment { get; }
    /// <summary>Absolute offset of the tensor data section.</summary>
    public long DataStart { get; }
    public long FileLength { get; }
    /// <summary>Metadata by key: numbers as their .NET types (byte … double), bool, string, or <see cref="GgufArray"/>.</summary>
    public IReadOnlyDictionary<string, object> Metadata { get; }
    /// <summary>Tensors in file order.</summary>
    public IReadOnlyList<GgufTensorInfo> Tensors { get; }

    private GgufFile(string path, uint version, long alignment, long dataStart, long length, Dictionary<string, object> metadata,
        List<GgufTensorInfo> tensors)
    {
        FilePath = path;
        Version = version;
        Alignment = alignment;
        DataStart = dataStart;
        FileLength = length;
        Metadata = metadata;
        Tensors = tensors;
        _byName = tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
        _mapping = new FileMapping(path, length);
    }

    public bool TryGetTensor(string name, out GgufTensorInfo info) => _byName.TryGetValue(name, out info!);

    public GgufTensorInfo GetTensor(string name) =>
        _byName.TryGetValue(name, out var t) ? t : throw new CheckpointFormatException("Tensor not found", FilePath, name);

    /// <summary>Opens and validates a GGUF file. Throws <see cref="CheckpointFormatException"/> on any problem.</summary>
    public static GgufFile Open(string path)
    {
        var full = Path.GetFullPath(path);
        if (!File.Exists(full)) throw new CheckpointFormatException("GGUF file not found", full);
        using var fs = new FileStream(full, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        var r = new HeaderReader(fs, full);
        uint magic = r.U32("magic");
        if (magic != 0x46554747) throw new CheckpointFormatException("Not a GGUF file (the magic bytes are not 'GGUF')", full);
        uint version = r.U32("version");
        if (version is not (2 or 3))
            throw new CheckpointFormatException($"GGUF version {version} is not supported (supported: 2, 3)", full);
        ulong tensorCount = r.U64("tensor count"), keyCount = r.U64("metadata count");
        if (tensorCount > MaxTensors) throw new CheckpointFormatException($"The header declares {tensorCount} tensors, more than the {MaxTensors} accepted", full);
        if (keyCount > MaxKeys) throw new CheckpointFormatException($"The header declares {keyCount} metadata entries, more than the {MaxKeys} accepted", full);

        var metadata = new Dictionary<string, object>(StringComparer.Ordinal);
        for (ulong i = 0; i < keyCount; i++)
        {
            string key = r.String("metadata key");
            var type = (GgufValueType)r.U32($"type of '{key}'");
            var value = r.Value(type, key, allowArray: true);
            if (!metadata.TryAdd(key, value))
                throw new CheckpointFormatException($"Metadata key '{key}' appears twice", full);
        }

        long alignment = 32;
        if (metadata.TryGetValue("general.alignment", out var a))
        {
            if (a is not uint au || au == 0 || (au & (au - 1)) != 0 || au > 1 << 20)
                throw new CheckpointFormatException($"general.alignment {a} is not a power of two (uint32, at most 2^20)", full);
            alignment = au;
        }

        var infos = new List<(string Name, GgmlType Type, long[] Ne, ulong Offset)>((int)tensorCount);
        var names = new HashSet<string>(StringComparer.Ordinal);
        for (ulong i = 0; i < tensorCount; i++)
        {
            string name = r.String("tensor name");
            if (!names.Add(name)) throw new CheckpointFormatException("Tensor name appears twice", full, name);
            uint dims = r.U32("dimension count");
            if (dims > MaxDims) throw new CheckpointFormatException($"{dims} dimensions, more than ggml's {MaxDims}", full, name);
            var ne = new long[dims];
            for (int d = 0; d < dims; d++)
            {
                ulong n = r.U64("dimension");
                if (n > 1UL << 40) throw new CheckpointFormatException($"Dimension {d} is {n}, out of range", full, name);
                ne[d] = (long)n;
            }
            var type = (GgmlType)r.U32("tensor type");
            ulong offset = r.U64("tensor offset");
            infos.Add((name, type, ne, offset));
        }
        long headerEnd = r.Position;
        long dataStart = (headerEnd + alignment - 1) / alignment * alignment;
        long length = fs.Length;
        if (dataStart > length && tensorCount > 0)
            throw new CheckpointFormatException($"File is truncated: the tensor data would start at byte {dataStart}, past its end ({length})", full);

        var tensors = new List<GgufTensorInfo>(infos.Count);
        foreach (var (name, type, ne, offset) in infos)
        {
            long bytes = DataBytes(type, ne, full, name);
            if (offset % (ulong)alignment != 0)
                throw new CheckpointFormatException($"Data offset {offset} is not a multiple of the alignment {alignment}", full, name);
            if (offset > (ulong)length || (long)offset > length - dataStart || bytes > length - dataStart - (long)offset)
                throw new CheckpointFormatException($"Data [{offset}, +{bytes}) runs past the end of the file ({length - dataStart} data bytes)", full, name);
            tensors.Add(new GgufTensorInfo(name, type, ne, dataStart + (long)offset, bytes));
        }
        var sorted = tensors.Where(t => t.Bytes > 0).OrderBy(t => t.Offset).ToList();
        for (int i = 1; i < sorted.Count; i++)
            if (sorted[i].Offset < sorted[i - 1].Offset + sorted[i - 1].Bytes)
                throw new CheckpointFormatException($"Data of '{sorted[i].Name}' overlaps '{sorted[i - 1].Name}'", full, sorted[i].Name);
        return new GgufFile(full, version, alignment, dataStart, length, metadata, tensors);
    }

    /// <summary>(weights per block, bytes per block) of the types whose data size is known here.</summary>
    public static (int Block, int Bytes)? BlockLayout(GgmlType t) => t switch
    {
        GgmlType.F32 => (1, 4), GgmlType.F16 => (1, 2), GgmlType.BF16 => (1, 2), GgmlType.F64 => (1, 8),
        GgmlType.I8 => (1, 1), GgmlType.I16 => (1, 2), GgmlType.I32 => (1, 4), GgmlType.I64 => (1, 8),
        GgmlType.Q4_0 => (32, 18), GgmlType.Q4_1 => (32, 20), GgmlType.Q5_0 => (32, 22), GgmlType.Q5_1 => (32, 24),
        GgmlType.Q8_0 => (32, 34), GgmlType.Q8_1 => (32, 36),
        GgmlType.Q2_K => (256, 84), GgmlType.Q3_K => (256, 110), GgmlType.Q4_K => (256, 144), GgmlType.Q5_K => (256, 176),
        GgmlType.Q6_K => (256, 210), GgmlType.Q8_K => (256, 292),
        // Types we do not compute with: their sizes still let a file's layout be checked, so that the tensor using
        // one is refused by name and type when it is read (GgufTensorReader).
        GgmlType.IQ2_XXS => (256, 66), GgmlType.IQ2_XS => (256, 74), GgmlType.IQ3_XXS => (256, 98),
        GgmlType.IQ1_S => (256, 50), GgmlType.IQ4_NL => (32, 18), GgmlType.IQ3_S => (256, 110), GgmlType.IQ2_S => (256, 82),
        GgmlType.IQ4_XS => (256, 136), GgmlType.IQ1_M => (256, 56), GgmlType.TQ1_0 => (256, 54), GgmlType.TQ2_0 => (256, 66),
        GgmlType.MXFP4 => (32, 17),
        _ => null,
    };

    private static long DataBytes(GgmlType type, long[] ne, string file, string name)
    {
        var layout = BlockLayout(type) ?? throw new CheckpointFormatException($"Unknown or unsupported ggml type {(uint)type}", file, name);
        long rowLength = ne.Length == 0 ? 1 : ne[0];
        if (rowLength % layout.Block != 0)
            throw new CheckpointFormatException($"Row length {rowLength} is not a multiple of {type}'s block of {layout.Block}", file, name);
        long blocks = rowLength / layout.Block;
        long bytes = blocks * layout.Bytes;
        for (int d = 1; d < ne.Length; d++)
        {
            if (ne[d] != 0 && bytes > long.MaxValue / ne[d])
                throw new CheckpointFormatException("Tensor size overflows", file, name);
            bytes *= ne[d];
        }
        return bytes;
    }

    // ----------------------------------------------------------------------------------------------- data access

    /// <summary>
    /// The tensor's bytes as a uint8 CPU tensor viewing the memory-mapped file (copy-on-write, so writing to it never
    /// reaches the file). The caller owns it.
    /// </summary>
    public torch.Tensor Bytes(GgufTensorInfo t)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        _mapping.CheckUnchanged(t.Name);
        if (t.Bytes == 0) return torch.empty(0, torch.ScalarType.Byte);
        return _mapping.Get(torch.ScalarType.Byte).narrow(0, t.Offset, t.Bytes);
    }

    /// <summary>An F32 / F16 / BF16 tensor in its stored dtype and torch-order shape, viewing the mapping where aligned.</summary>
    public torch.Tensor Plain(GgufTensorInfo t)
    {
        var dtype = t.Type switch
        {
            GgmlType.F32 => torch.ScalarType.Float32,
            GgmlType.F16 => torch.ScalarType.Float16,
            GgmlType.BF16 => torch.ScalarType.BFloat16,
            _ => throw new CheckpointFormatException($"{t.Type} is not a plain float type", FilePath, t.Name),
        };
        ObjectDisposedException.ThrowIf(_disposed, this);
        _mapping.CheckUnchanged(t.Name);
        var shape = t.Shape;
        int size = SafeTensorsFile.ElementSize(dtype);
        if (t.Bytes == 0) return torch.empty(shape, dtype);
        if (t.Offset % size == 0)
            return _mapping.Get(dtype).as_strided(shape, SafeTensorsFile.ContiguousStrides(shape), t.Offset / size);
        // Unaligned (a file with a small general.alignment): copy this one tensor.
        using var raw = Bytes(t);
        var dst = torch.empty(shape, dtype);
        raw.bytes.CopyTo(dst.bytes);
        return dst;
    }

    // ----------------------------------------------------------------------------------------------- metadata helpers

    public bool Has(string key) => Metadata.ContainsKey(key);

    /// <summary>An integer value of any integer type (or null when absent); refuses other types and out-of-range values.</summary>
    public long? Integer(string key, long min = long.MinValue, long max = long.MaxValue)
    {
        if (!Metadata.TryGetValue(key, out var v)) return null;
        long x = v switch
        {
            byte b => b, sbyte sb => sb, ushort us => us, short s => s, uint ui => ui, int i => i, long l => l,
            ulong ul when ul <= long.MaxValue => (long)ul,
            bool => throw Bad(key, "an integer", v),
            _ => throw Bad(key, "an integer", v),
        };
        if (x < min || x > max) throw new ModelConfigurationException($"Value {x} is out of the accepted range [{min}, {max}]", FilePath, key);
        return x;
    }

    public int? Int(string key, int min = int.MinValue, int max = int.MaxValue) => (int?)Integer(key, min, max);

    public double? Float(string key)
    {
        if (!Metadata.TryGetValue(key, out var v)) return null;
        return v switch
        {
            float f => f, double d => d,
            byte or sbyte or ushort or short or uint or int or long or ulong => Convert.ToDouble(v),
            _ => throw Bad(key, "a number", v),
        };
    }

    public bool? Bool(string key) =>
        Metadata.TryGetValue(key, out var v) ? v as bool? ?? throw Bad(key, "a bool", v) : null;

    public string? String(string key) =>
        Metadata.TryGetValue(key, out var v) ? v as string ?? throw Bad(key, "a string", v) : null;

    /// <summary>An array whose items are of type <typeparamref name="T"/> (string, float, int ...), or null when absent.</summary>
    public T[]? Array<T>(string key)
    {
        if (!Metadata.TryGetValue(key, out var v)) return null;
        if (v is GgufArray { Items: T[] items }) return items;
        throw Bad(key, $"an array of {typeof(T).Name}", v);
    }

    private ModelConfigurationException Bad(string key, string expected, object v) =>
        new($"Expected {expected}, found {Describe(v)}", FilePath, key);

    private static string Describe(object v) => v is GgufArray a ? $"an array of {a.Count} {a.ElementType}" : $"{v.GetType().Name} {v}";

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _mapping.Dispose();
    }

    // ----------------------------------------------------------------------------------------------- header reader

    /// <summary>Reads the header, checking each length against what is left of the file before allocating.</summary>
    private sealed class HeaderReader(FileStream fs, string path)
    {
        private readonly byte[] _buf = new byte[8];
        private readonly long _length = fs.Length;
        public long Position { get; private set; }

        private long Left => _length - Position;

        private ReadOnlySpan<byte> Take(int n, string what)
        {
            if (Left < n) throw new CheckpointFormatException($"File is truncated in the header (reading the {what} at byte {Position})", path);
            fs.ReadExactly(_buf, 0, n);
            Position += n;
            return _buf.AsSpan(0, n);
        }

        public uint U32(string what) => BitConverter.ToUInt32(Take(4, what));
        public ulong U64(string what) => BitConverter.ToUInt64(Take(8, what));

        public string String(string what)
        {
            ulong n = U64(what + " length");
            if (n > MaxStringBytes) throw new CheckpointFormatException($"A {what} of {n} bytes is longer than the {MaxStringBytes} accepted (at byte {Position})", path);
            if ((long)n > Left) throw new CheckpointFormatException($"File is truncated in the header (a {what} of {n} bytes at byte {Position})", path);
            var bytes = new byte[n];
            fs.ReadExactly(bytes);
            Position += (long)n;
            try { return new UTF8Encoding(false, true).GetString(bytes); }
            catch (DecoderFallbackException) { throw new CheckpointFormatException($"A {what} is not valid UTF-8 (at byte {Position - (long)n})", path); }
        }

        public object Value(GgufValueType type, string key, bool allowArray)
        {
            switch (type)
            {
                case GgufValueType.UInt8: return Take(1, key)[0];
                case GgufValueType.Int8: return (sbyte)Take(1, key)[0];
                case GgufValueType.UInt16: return BitConverter.ToUInt16(Take(2, key));
                case GgufValueType.Int16: return BitConverter.ToInt16(Take(2, key));
                case GgufValueType.UInt32: return BitConverter.ToUInt32(Take(4, key));
                case GgufValueType.Int32: return BitConverter.ToInt32(Take(4, key));
                case GgufValueType.Float32: return BitConverter.ToSingle(Take(4, key));
                case GgufValueType.UInt64: return BitConverter.ToUInt64(Take(8, key));
                case GgufValueType.Int64: return BitConverter.ToInt64(Take(8, key));
                case GgufValueType.Float64: return BitConverter.ToDouble(Take(8, key));
                case GgufValueType.Bool:
                    byte b = Take(1, key)[0];
                    if (b > 1) throw new CheckpointFormatException($"Bool value {b} of '{key}' is neither 0 nor 1", path);
                    return b == 1;
                case GgufValueType.String: return String($"value of '{key}'");
                case GgufValueType.Array when allowArray: return Array(key);
                case GgufValueType.Array:
                    throw new CheckpointFormatException($"Metadata '{key}' is an array of arrays (not supported)", path);
                default:
                    throw new CheckpointFormatException($"Metadata '{key}' has unknown value type {(uint)type}", path);
            }
        }

        private GgufArray Array(string key)
        {
            var type = (GgufValueType)U32($"array type of '{key}'");
            ulong count = U64($"array length of '{key}'");
            int min = type switch
            {
                GgufValueType.UInt8 or GgufValueType.Int8 or GgufValueType.Bool => 1,
                GgufValueType.UInt16 or GgufValueType.Int16 => 2,
                GgufValueType.UInt32 or GgufValueType.Int32 or GgufValueType.Float32 => 4,
                GgufValueType.String or GgufValueType.UInt64 or GgufValueType.Int64 or GgufValueType.Float64 => 8,
                GgufValueType.Array => throw new CheckpointFormatException($"Metadata '{key}' is an array of arrays (not supported)", path),
                _ => throw new CheckpointFormatException($"Metadata '{key}' is an array of unknown type {(uint)type}", path),
            };
            if (count > MaxArrayItems) throw new CheckpointFormatException($"Metadata '{key}' has {count} items, more than the {MaxArrayItems} accepted", path);
            if ((long)count * min > Left) throw new CheckpointFormatException($"File is truncated in the header (array '{key}' of {count} items at byte {Position})", path);
            int n = (int)count;
            System.Array items = type switch
            {
                GgufValueType.UInt8 => new byte[n], GgufValueType.Int8 => new sbyte[n], GgufValueType.Bool => new bool[n],
                GgufValueType.UInt16 => new ushort[n], GgufValueType.Int16 => new short[n],
                GgufValueType.UInt32 => new uint[n], GgufValueType.Int32 => new int[n], GgufValueType.Float32 => new float[n],
                GgufValueType.UInt64 => new ulong[n], GgufValueType.Int64 => new long[n], GgufValueType.Float64 => new double[n],
                _ => new string[n],
            };
            for (int i = 0; i < n; i++) items.SetValue(Value(type, key, allowArray: false), i);
            return new GgufArray(type, items);
        }
    }
}
