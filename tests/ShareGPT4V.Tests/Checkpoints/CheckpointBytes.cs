using System.Buffers.Binary;
using System.Text;

namespace ShareGPT4V.Tests.Checkpoints;

/// <summary>Builds small torch.save-like files byte by byte, so hostile variants can be crafted in tests.</summary>
internal static class CheckpointBytes
{
    /// <summary>A minimal zip: STORED records (or the given method), local headers, central directory, end record.</summary>
    /// <remarks>With <paramref name="zip64"/>, sizes and offsets move to zip64 extra fields (0xFFFFFFFF in the classic
    /// fields) and a zip64 end record + locator precede the classic end record, as in torch's multi-GB shards.</remarks>
    public static byte[] Zip(IEnumerable<(string Name, byte[] Data)> records, int method = 0, long? centralDirOffsetOverride = null, bool zip64 = false)
    {
        var ms = new MemoryStream();
        var w = new BinaryWriter(ms);
        var central = new List<(string Name, int Size, long Offset)>();
        foreach (var (name, data) in records)
        {
            var nameBytes = Encoding.UTF8.GetBytes(name);
            long offset = ms.Position;
            w.Write(0x04034b50u); w.Write((ushort)20); w.Write((ushort)0); w.Write((ushort)method);
            w.Write(0u); w.Write(0u); w.Write(data.Length); w.Write(data.Length);
            w.Write((ushort)nameBytes.Length); w.Write((ushort)0); w.Write(nameBytes); w.Write(data);
            central.Add((name, data.Length, offset));
        }
        long cdOffset = ms.Position;
        foreach (var (name, size, offset) in central)
        {
            var nameBytes = Encoding.UTF8.GetBytes(name);
            w.Write(0x02014b50u); w.Write((ushort)45); w.Write((ushort)45); w.Write((ushort)0); w.Write((ushort)method);
            if (!zip64)
            {
                w.Write(0u); w.Write(0u); w.Write(size); w.Write(size);
                w.Write((ushort)nameBytes.Length); w.Write((ushort)0); w.Write((ushort)0); w.Write((ushort)0); w.Write((ushort)0);
                w.Write(0u); w.Write((uint)offset); w.Write(nameBytes);
            }
            else
            {
                w.Write(0u); w.Write(0u); w.Write(0xFFFFFFFFu); w.Write(0xFFFFFFFFu);
                w.Write((ushort)nameBytes.Length); w.Write((ushort)28); w.Write((ushort)0); w.Write((ushort)0); w.Write((ushort)0);
                w.Write(0u); w.Write(0xFFFFFFFFu); w.Write(nameBytes);
                w.Write((ushort)1); w.Write((ushort)24); w.Write((long)size); w.Write((long)size); w.Write(offset);
            }
        }
        long cdSize = ms.Position - cdOffset;
        if (zip64)
        {
            long z64 = ms.Position;
            w.Write(0x06064b50u); w.Write(44L); w.Write((ushort)45); w.Write((ushort)45); w.Write(0u); w.Write(0u);
            w.Write((long)central.Count); w.Write((long)central.Count); w.Write(cdSize); w.Write(centralDirOffsetOverride ?? cdOffset);
            w.Write(0x07064b50u); w.Write(0u); w.Write(z64); w.Write(1u);
            w.Write(0x06054b50u); w.Write((ushort)0); w.Write((ushort)0); w.Write((ushort)0xFFFF); w.Write((ushort)0xFFFF);
            w.Write(0xFFFFFFFFu); w.Write(0xFFFFFFFFu); w.Write((ushort)0);
            return ms.ToArray();
        }
        w.Write(0x06054b50u); w.Write((ushort)0); w.Write((ushort)0);
        w.Write((ushort)central.Count); w.Write((ushort)central.Count);
        w.Write((uint)cdSize); w.Write((uint)(centralDirOffsetOverride ?? cdOffset)); w.Write((ushort)0);
        return ms.ToArray();
    }

    /// <summary>A torch zip with one data.pkl and the given storages (key → bytes) under folder <c>ckpt/</c>.</summary>
    public static byte[] TorchZip(byte[] dataPkl, IDictionary<string, byte[]> storages, string? byteorder = null, int method = 0, bool zip64 = false)
    {
        var records = new List<(string, byte[])> { ("ckpt/data.pkl", dataPkl) };
        if (byteorder is not null) records.Add(("ckpt/byteorder", Encoding.ASCII.GetBytes(byteorder)));
        foreach (var kv in storages) records.Add(("ckpt/data/" + kv.Key, kv.Value));
        records.Add(("ckpt/version", Encoding.ASCII.GetBytes("3\n")));
        return Zip(records, method, zip64: zip64);
    }

    /// <summary>Pickle opcodes, written as a state dict would be.</summary>
    public sealed class Pickle
    {
        private readonly MemoryStream _ms = new();
        public Pickle Op(params byte[] b) { _ms.Write(b); return this; }
        public Pickle Proto() => Op(0x80, 2);
        public Pickle Str(string s)
        {
            var b = Encoding.UTF8.GetBytes(s);
            Op((byte)'X');
            Span<byte> n = stackalloc byte[4];
            BinaryPrimitives.WriteInt32LittleEndian(n, b.Length);
            _ms.Write(n);
            _ms.Write(b);
            return this;
        }
        public Pickle Int(int v)
        {
            Op((byte)'J');
            Span<byte> n = stackalloc byte[4];
            BinaryPrimitives.WriteInt32LittleEndian(n, v);
            _ms.Write(n);
            return this;
        }
        public Pickle Global(string module, string name) => Op((byte)'c').Op(Encoding.ASCII.GetBytes(module + "\n" + name + "\n"));
        public Pickle Mark() => Op((byte)'(');
        public Pickle Tuple() => Op((byte)'t');
        public Pickle Ints(params int[] v) { Mark(); foreach (var x in v) Int(x); return Tuple(); }

        /// <summary>Pushes <c>_rebuild_tensor_v2(storage(key, type, numel), offset, size, stride, False, OrderedDict())</c>.</summary>
        public Pickle Tensor(string storageType, string key, int numel, int offset, int[] size, int[] stride)
        {
            Global("torch._utils", "_rebuild_tensor_v2").Mark();
            Mark().Str("storage").Global("torch", storageType).Str(key).Str("cpu").Int(numel).Tuple().Op((byte)'Q');
            Int(offset).Ints(size).Ints(stride).Op(0x89);
            Global("collections", "OrderedDict").Op((byte)')', (byte)'R');
            return Tuple().Op((byte)'R');
        }

        public byte[] Bytes => _ms.ToArray();
    }

    /// <summary>data.pkl of <c>{name: float32 tensor over storage '0'}</c>.</summary>
    public static byte[] OneTensorPickle(string name = "w", int numel = 4, int offset = 0, int[]? size = null, int[]? stride = null, string key = "0") =>
        new Pickle().Proto().Op((byte)'}').Str(name)
            .Tensor("FloatStorage", key, numel, offset, size ?? new[] { numel }, stride ?? new[] { 1 })
            .Op((byte)'s', (byte)'.').Bytes;

    public static byte[] Floats(params float[] v)
    {
        var b = new byte[v.Length * 4];
        for (int i = 0; i < v.Length; i++) BinaryPrimitives.WriteSingleLittleEndian(b.AsSpan(4 * i), v[i]);
        return b;
    }
}
