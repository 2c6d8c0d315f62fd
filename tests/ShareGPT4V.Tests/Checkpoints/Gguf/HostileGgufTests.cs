using System.Text;
using ShareGPT4V.Checkpoints.Gguf;
using ShareGPT4V.Configuration;
using Xunit;

namespace ShareGPT4V.Tests.Checkpoints.Gguf;

/// <summary>Writes GGUF bytes field by field, so a test can put any value anywhere (valid or not).</summary>
internal sealed class GgufBytes
{
    private readonly MemoryStream _ms = new();
    private readonly BinaryWriter _w;
    public GgufBytes() => _w = new BinaryWriter(_ms);

    public GgufBytes Header(uint version, ulong tensors, ulong keys, uint magic = 0x46554747)
    {
        _w.Write(magic); _w.Write(version); _w.Write(tensors); _w.Write(keys);
        return this;
    }

    public GgufBytes Str(string s) => Str(Encoding.UTF8.GetBytes(s));
    public GgufBytes Str(byte[] b) { _w.Write((ulong)b.Length); _w.Write(b); return this; }
    public GgufBytes U32(uint v) { _w.Write(v); return this; }
    public GgufBytes U64(ulong v) { _w.Write(v); return this; }
    public GgufBytes F32(float v) { _w.Write(v); return this; }
    public GgufBytes Byte(byte v) { _w.Write(v); return this; }

    public GgufBytes KeyU32(string key, uint v) => Str(key).U32((uint)GgufValueType.UInt32).U32(v);
    public GgufBytes KeyStr(string key, string v) => Str(key).U32((uint)GgufValueType.String).Str(v);

    public GgufBytes Tensor(string name, GgmlType type, ulong offset, params ulong[] ne)
    {
        Str(name).U32((uint)ne.Length);
        foreach (var n in ne) U64(n);
        return U32((uint)type).U64(offset);
    }

    /// <summary>Pads to the 32-byte alignment and appends <paramref name="data"/> bytes of zeros.</summary>
    public GgufBytes Data(int data)
    {
        _w.Flush();
        while (_ms.Length % 32 != 0) _w.Write((byte)0);
        _w.Write(new byte[data]);
        return this;
    }

    public byte[] ToArray() { _w.Flush(); return _ms.ToArray(); }
}

/// <summary>Hostile GGUF headers: every one is refused with a <see cref="CheckpointFormatException"/> naming the file, before any outsized allocation.</summary>
public sealed class HostileGgufTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("sgpt4v-gguf-").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Write(byte[] bytes)
    {
        var path = Path.Combine(_dir, $"t{Guid.NewGuid():N}.gguf");
        File.WriteAllBytes(path, bytes);
        return path;
    }

    private CheckpointFormatException Refused(byte[] bytes, string fragment)
    {
        var path = Write(bytes);
        long before = GC.GetAllocatedBytesForCurrentThread();
        var e = Assert.Throws<CheckpointFormatException>(() => GgufFile.Open(path).Dispose());
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 64L << 20, "a header value became an allocation");
        Assert.Contains(fragment, e.Message, StringComparison.OrdinalIgnoreCase);
        Assert.Equal(path, e.FilePath);
        return e;
    }

    /// <summary>A valid file: two keys and two F32 tensors of 8 floats.</summary>
    private static byte[] Valid() => new GgufBytes().Header(3, 2, 2).KeyStr("general.architecture", "clip").KeyU32("k", 7)
        .Tensor("a", GgmlType.F32, 0, 8).Tensor("b", GgmlType.F32, 32, 8).Data(64).ToArray();

    [Fact]
    public void TheValidFileOpens()
    {
        using var f = GgufFile.Open(Write(Valid()));
        Assert.Equal(2, f.Tensors.Count);
        Assert.Equal("clip", f.String("general.architecture"));
        Assert.Equal(7, f.Int("k"));
        using var t = f.Plain(f.GetTensor("b"));
        Assert.Equal(new long[] { 8 }, t.shape);
    }

    [Fact]
    public void EveryTruncationIsRefused()
    {
        var valid = Valid();
        for (int n = 0; n < valid.Length; n++)
        {
            var path = Write(valid[..n]);
            Assert.Throws<CheckpointFormatException>(() => GgufFile.Open(path).Dispose());
            File.Delete(path);
        }
    }

    [Fact]
    public void MagicVersionAndCountsAreChecked()
    {
        Refused(new GgufBytes().Header(3, 0, 0, magic: 0x12345678).ToArray(), "magic");
        Refused(new GgufBytes().Header(1, 0, 0).ToArray(), "version 1");
        Refused(new GgufBytes().Header(3, 1UL << 40, 0).ToArray(), "tensors");
        Refused(new GgufBytes().Header(3, 0, ulong.MaxValue).ToArray(), "metadata entries");
    }

    [Fact]
    public void StringAndArrayLengthsAreCheckedBeforeAllocation()
    {
        Refused(new GgufBytes().Header(3, 0, 1).U64(1UL << 62).ToArray(), "longer than");
        Refused(new GgufBytes().Header(3, 0, 1).U64(1000).Byte(65).ToArray(), "truncated");
        Refused(new GgufBytes().Header(3, 0, 1).Str("tokens").U32((uint)GgufValueType.Array).U32((uint)GgufValueType.String).U64(1UL << 40).ToArray(), "items");
        Refused(new GgufBytes().Header(3, 0, 1).Str("tokens").U32((uint)GgufValueType.Array).U32((uint)GgufValueType.String).U64(1 << 20).ToArray(), "truncated");
        Refused(new GgufBytes().Header(3, 0, 1).Str("tokens").U32((uint)GgufValueType.Array).U32((uint)GgufValueType.Array).U64(1).ToArray(), "array of arrays");
        Refused(new GgufBytes().Header(3, 0, 1).Str("x").U32(99).ToArray(), "unknown value type");
        Refused(new GgufBytes().Header(3, 0, 1).Str(new byte[] { 0xC3, 0x28 }).U32(4).U32(1).ToArray(), "UTF-8");
        Refused(new GgufBytes().Header(3, 0, 1).Str("b").U32((uint)GgufValueType.Bool).Byte(2).ToArray(), "neither 0 nor 1");
        Refused(new GgufBytes().Header(3, 0, 2).KeyU32("k", 1).KeyU32("k", 2).ToArray(), "twice");
        Refused(new GgufBytes().Header(3, 0, 1).KeyU32("general.alignment", 48).ToArray(), "power of two");
    }

    [Fact]
    public void TensorDescriptionsAreChecked()
    {
        GgufBytes One() => new GgufBytes().Header(3, 1, 0);
        Refused(One().Tensor("t", GgmlType.F32, 0, 1, 1, 1, 1, 1).Data(4).ToArray(), "dimensions");
        Refused(One().Tensor("t", GgmlType.F32, 0, 1UL << 41).Data(4).ToArray(), "out of range");
        Refused(One().Tensor("t", GgmlType.F32, 0, 1UL << 40, 1UL << 40, 1UL << 40).Data(4).ToArray(), "overflows");
        Refused(One().Tensor("t", (GgmlType)99, 0, 4).Data(16).ToArray(), "unknown");
        Refused(One().Tensor("t", GgmlType.Q8_0, 0, 33).Data(64).ToArray(), "multiple");
        Refused(One().Tensor("t", GgmlType.F32, 32, 8).Data(32).ToArray(), "past the end");
        Refused(One().Tensor("t", GgmlType.F32, ulong.MaxValue - 31, 8).Data(32).ToArray(), "past the end");
        Refused(One().Tensor("t", GgmlType.F32, 4, 4).Data(64).ToArray(), "alignment");
        Refused(new GgufBytes().Header(3, 2, 0).Tensor("a", GgmlType.F32, 0, 16).Tensor("b", GgmlType.F32, 32, 8).Data(64).ToArray(), "overlaps");
        Refused(new GgufBytes().Header(3, 2, 0).Tensor("a", GgmlType.F32, 0, 8).Tensor("a", GgmlType.F32, 32, 8).Data(64).ToArray(), "twice");
    }

    [Fact]
    public void WrongMetadataTypesAndValuesNameTheKey()
    {
        // A real mmproj header with one value replaced: the config reader names the key.
        var llm = GgufFixtures.File("llm-q4_0.gguf");
        var bytes = File.ReadAllBytes(GgufFixtures.File("mmproj-f16.gguf"));
        var key = Encoding.UTF8.GetBytes("clip.vision.image_size");
        int at = bytes.AsSpan().IndexOf(key) + key.Length;
        Assert.Equal((uint)GgufValueType.UInt32, BitConverter.ToUInt32(bytes, at));
        BitConverter.GetBytes(1u << 30).CopyTo(bytes, at + 4);
        var e = Assert.Throws<ModelConfigurationException>(() => ModelFolder.OpenGguf(llm, Write(bytes)));
        Assert.Contains("clip.vision.image_size", e.Message);
        BitConverter.GetBytes((uint)GgufValueType.Float32).CopyTo(bytes, at);
        e = Assert.Throws<ModelConfigurationException>(() => ModelFolder.OpenGguf(llm, Write(bytes)));
        Assert.Contains("integer", e.Message);
    }
}
