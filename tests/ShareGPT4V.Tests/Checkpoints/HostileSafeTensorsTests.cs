using System.Buffers.Binary;
using System.Text;
using ShareGPT4V.Checkpoints;
using Xunit;

namespace ShareGPT4V.Tests.Checkpoints;

/// <summary>Malformed safetensors files, indexes and folders: each refused with a CheckpointFormatException naming the file.</summary>
public sealed class HostileSafeTensorsTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("sgpt4v-st-").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static byte[] SafeTensors(string header, int dataBytes, ulong? lengthOverride = null)
    {
        var h = Encoding.UTF8.GetBytes(header);
        var b = new byte[8 + h.Length + dataBytes];
        BinaryPrimitives.WriteUInt64LittleEndian(b, lengthOverride ?? (ulong)h.Length);
        h.CopyTo(b, 8);
        return b;
    }

    private string Write(string name, byte[] bytes)
    {
        var p = Path.Combine(_dir, name);
        File.WriteAllBytes(p, bytes);
        return p;
    }

    private static CheckpointFormatException Refused(Func<IDisposable> open, string file, params string[] fragments)
    {
        var e = Assert.Throws<CheckpointFormatException>(() => { using var r = open(); });
        foreach (var f in fragments) Assert.Contains(f, e.Message);
        Assert.Contains(Path.GetFileName(file), e.Message);
        return e;
    }

    private CheckpointFormatException RefusedFile(string name, byte[] bytes, params string[] fragments)
    {
        var p = Write(name, bytes);
        return Refused(() => SafeTensorsFile.Open(p), p, fragments);
    }

    private const string Good = """{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}""";

    [Fact]
    public void AGoodFileOpens()
    {
        using var f = SafeTensorsFile.Open(Write("good.safetensors", SafeTensors(Good, 8)));
        Assert.Equal(new[] { "a" }, f.Names);
    }

    [Fact]
    public void UnalignedTensorsAreCopiedCorrectly()
    {
        // A 1-byte tensor first puts the float at an odd offset: it cannot be a view of the mapping.
        var bytes = SafeTensors("""{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"b":{"dtype":"F32","shape":[2],"data_offsets":[1,9]}}""", 9);
        int data = bytes.Length - 9;
        bytes[data] = 7;
        BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan(data + 1), 1.5f);
        BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan(data + 5), -2.25f);
        using var f = SafeTensorsFile.Open(Write("unaligned.safetensors", bytes));
        using var b = f.Load("b");
        Assert.Equal(new[] { 1.5f, -2.25f }, b.data<float>().ToArray());
        using var b64 = f.Load("b", TorchSharp.torch.ScalarType.Float64);
        Assert.Equal(new[] { 1.5, -2.25 }, b64.data<double>().ToArray());
        using var a = f.Load("a");
        Assert.Equal((byte)7, a[0].item<byte>());
    }

    [Fact]
    public void TruncatedFile()
    {
        RefusedFile("tiny.safetensors", new byte[5], "truncated");
        var full = SafeTensors(Good, 8);
        RefusedFile("cut.safetensors", full[..^3], "truncated");
    }

    [Fact]
    public void HeaderLengthLargerThanTheFile()
    {
        RefusedFile("len.safetensors", SafeTensors(Good, 8, lengthOverride: 5000), "Header length 5000 is larger than the file");
        RefusedFile("len2.safetensors", SafeTensors(Good, 8, lengthOverride: ulong.MaxValue), "exceeds the limit");
    }

    [Fact]
    public void HeaderNotJson()
    {
        RefusedFile("notjson.safetensors", SafeTensors("{\"a\": [1, 2", 0), "not valid JSON");
        RefusedFile("array.safetensors", SafeTensors("[1,2]", 0), "not a JSON object");
        // Found by fuzzing: invalid UTF-8 inside a JSON string used to escape as InvalidOperationException.
        var bytes = SafeTensors(Good, 8);
        bytes[8 + 2] = 0xff; // inside the name "a"
        RefusedFile("utf8.safetensors", bytes, "not valid UTF-8");
    }

    [Fact]
    public void OffsetsOutOfRange()
    {
        var e = RefusedFile("range.safetensors",
            SafeTensors("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[1000,1008]}}""", 8), "the previous one ends at 0");
        RefusedFile("neg.safetensors", SafeTensors("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}}""", 8), "data_offsets");
        RefusedFile("past.safetensors",
            SafeTensors("""{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}""", 8), "data section has only 8 bytes");
        Assert.NotNull(e.TensorName);
    }

    [Fact]
    public void OverlappingOffsets()
    {
        var e = RefusedFile("overlap.safetensors", SafeTensors(
            """{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}""", 12),
            "overlap");
        Assert.Equal("b", e.TensorName);
    }

    [Fact]
    public void UnknownDtype() =>
        RefusedFile("dtype.safetensors", SafeTensors("""{"a":{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}}""", 8),
            "Unsupported dtype 'F8_E4M3'", "tensor 'a'");

    [Fact]
    public void ShapeAndByteCountDisagree() =>
        RefusedFile("shape.safetensors", SafeTensors("""{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}""", 8),
            "needs 12 bytes", "hold 8");

    [Fact]
    public void HostileShapeValues()
    {
        RefusedFile("negshape.safetensors", SafeTensors("""{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}""", 8), "non-negative");
        RefusedFile("bigshape.safetensors",
            SafeTensors("""{"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}}""", 8), "overflows");
    }

    [Fact]
    public void MissingShardNamedInTheIndex()
    {
        Write("model-00001-of-00002.safetensors", SafeTensors(Good, 8));
        var index = Write("model.safetensors.index.json", Encoding.UTF8.GetBytes(
            """{"metadata":{"total_size":16},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}"""));
        var e = Refused(() => ShardedTensorReader.OpenIndex(index, p => SafeTensorsFile.Open(p)), index,
            "model-00002-of-00002.safetensors", "missing");
        Assert.Equal(index, e.FilePath);
        Refused(() => CheckpointDiscovery.Open(_dir), index, "missing");
    }

    [Fact]
    public void IndexAndShardDisagree()
    {
        Write("model-00001-of-00001.safetensors", SafeTensors(Good, 8));
        var index = Write("model.safetensors.index.json", Encoding.UTF8.GetBytes(
            """{"weight_map":{"zz":"model-00001-of-00001.safetensors"}}"""));
        Refused(() => ShardedTensorReader.OpenIndex(index, p => SafeTensorsFile.Open(p)), "model-00001-of-00001.safetensors", "does not contain");
        var escape = Write("escape.index.json", Encoding.UTF8.GetBytes("""{"weight_map":{"a":"../etc/passwd"}}"""));
        Refused(() => ShardedTensorReader.OpenIndex(escape, p => SafeTensorsFile.Open(p)), escape, "not a plain file name");
    }

    [Fact]
    public void FolderWithoutACheckpointListsItsFiles()
    {
        Write("config.json", "{}"u8.ToArray());
        Write("a.safetensors", SafeTensors(Good, 8));
        Write("b.safetensors", SafeTensors(Good, 8));
        var e = Assert.Throws<CheckpointFormatException>(() => CheckpointDiscovery.Find(_dir));
        Assert.Contains("No checkpoint found", e.Message);
        Assert.Contains("a.safetensors, b.safetensors, config.json", e.Message);
        Assert.Contains(_dir, e.Message);

        File.Delete(Path.Combine(_dir, "b.safetensors"));
        var picked = CheckpointDiscovery.Find(_dir);
        Assert.Equal(CheckpointFormat.SingleSafeTensors, picked.Format);
        Assert.EndsWith("a.safetensors", picked.EntryFile);
    }

    [Fact]
    public void SafetensorsWinsOverBinInTheSameFolder()
    {
        Write("pytorch_model.bin", File.ReadAllBytes(Fixtures.Path("oracle/dtype_bin/dtype_zip.bin")));
        Assert.Equal(CheckpointFormat.PyTorch, CheckpointDiscovery.Find(_dir).Format);
        Write("model.safetensors", SafeTensors(Good, 8));
        Assert.Equal(CheckpointFormat.SafeTensors, CheckpointDiscovery.Find(_dir).Format);
    }
}
