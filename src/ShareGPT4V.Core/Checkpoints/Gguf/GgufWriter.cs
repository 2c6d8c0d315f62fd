using System.Text;
using TorchSharp;

namespace ShareGPT4V.Checkpoints.Gguf;

/// <summary>
/// Writes a GGUF v3 file: typed metadata, tensor descriptions, then the tensor data aligned to 32 bytes. Tensors are
/// fetched one at a time while writing (only one is in memory at once); the file is written to a temporary name and
/// renamed when complete, so a failed export leaves nothing half-written.
/// </summary>
internal sealed class GgufWriter
{
    private readonly List<(string Key, GgufValueType Type, object Value)> _metadata = new();
    private readonly List<(string Name, GgmlType Type, long[] Ne, long Bytes, Func<byte[]> Data)> _tensors = new();
    private const int Alignment = 32;

    public void Add(string key, string value) => _metadata.Add((key, GgufValueType.String, value));
    public void Add(string key, uint value) => _metadata.Add((key, GgufValueType.UInt32, value));
    public void Add(string key, int value) => _metadata.Add((key, GgufValueType.Int32, value));
    public void Add(string key, float value) => _metadata.Add((key, GgufValueType.Float32, value));
    public void Add(string key, bool value) => _metadata.Add((key, GgufValueType.Bool, value));
    public void Add(string key, string[] value) => _metadata.Add((key, GgufValueType.Array, new GgufArray(GgufValueType.String, value)));
    public void Add(string key, float[] value) => _metadata.Add((key, GgufValueType.Array, new GgufArray(GgufValueType.Float32, value)));
    public void Add(string key, int[] value) => _metadata.Add((key, GgufValueType.Array, new GgufArray(GgufValueType.Int32, value)));

    /// <summary>A tensor of torch shape <paramref name="shape"/> (ne is its reverse); <paramref name="data"/> gives its bytes when written.</summary>
    public void AddTensor(string name, GgmlType type, long[] shape, Func<byte[]> data)
    {
        var ne = Enumerable.Reverse(shape).ToArray();
        var (block, bytesPerBlock) = GgufFile.BlockLayout(type) ?? throw new ArgumentException($"Type {type} cannot be written");
        long bytes = ne.Aggregate(1L, (a, b) => a * b) / block * bytesPerBlock;
        _tensors.Add((name, type, ne, bytes, data));
    }

    public void Write(string path)
    {
        var tmp = path + ".tmp";
        try
        {
            using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
            using (var w = new BinaryWriter(fs, Encoding.UTF8, leaveOpen: true))
            {
                w.Write(0x46554747u);
                w.Write(3u);
                w.Write((ulong)_tensors.Count);
                w.Write((ulong)_metadata.Count);
                foreach (var (key, type, value) in _metadata)
                {
                    WriteString(w, key);
                    w.Write((uint)type);
                    WriteValue(w, type, value);
                }
                long offset = 0;
                foreach (var t in _tensors)
                {
                    WriteString(w, t.Name);
                    w.Write((uint)t.Ne.Length);
                    foreach (var n in t.Ne) w.Write((ulong)n);
                    w.Write((uint)t.Type);
                    w.Write((ulong)offset);
                    offset = Align(offset + t.Bytes);
                }
                w.Flush();
                Pad(fs);
                foreach (var t in _tensors)
                {
                    var data = t.Data();
                    if (data.Length != t.Bytes)
                        throw new InvalidOperationException($"Tensor '{t.Name}' gave {data.Length} bytes, {t.Bytes} expected");
                    fs.Write(data);
                    Pad(fs);
                }
            }
            File.Move(tmp, path, overwrite: true);
        }
        catch
        {
            try { File.Delete(tmp); } catch (IOException) { }
            throw;
        }
    }

    private static long Align(long n) => (n + Alignment - 1) / Alignment * Alignment;

    private static void Pad(Stream s)
    {
        long pad = Align(s.Position) - s.Position;
        for (long i = 0; i < pad; i++) s.WriteByte(0);
    }

    private static void WriteString(BinaryWriter w, string s)
    {
        var b = Encoding.UTF8.GetBytes(s);
        w.Write((ulong)b.Length);
        w.Write(b);
    }

    private static void WriteValue(BinaryWriter w, GgufValueType type, object value)
    {
        switch (value)
        {
            case string s: WriteString(w, s); break;
            case uint u: w.Write(u); break;
            case int i: w.Write(i); break;
            case float f: w.Write(f); break;
            case bool b: w.Write((byte)(b ? 1 : 0)); break;
            case GgufArray a:
                w.Write((uint)a.ElementType);
                w.Write((ulong)a.Count);
                foreach (var item in a.Items) WriteValue(w, a.ElementType, item!);
                break;
            default: throw new ArgumentException($"Cannot write {value.GetType()} as {type}");
        }
    }

    /// <summary>The bytes of a CPU tensor in the given storage (F32 / F16 as values, blocks as stored).</summary>
    public static byte[] Bytes(torch.Tensor t)
    {
        using var c = t.contiguous();
        return c.bytes.ToArray();
    }
}
