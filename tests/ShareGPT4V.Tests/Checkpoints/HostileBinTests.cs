using ShareGPT4V.Checkpoints.PyTorch;
using TorchSharp;
using Xunit;
using static ShareGPT4V.Tests.Checkpoints.CheckpointBytes;

namespace ShareGPT4V.Tests.Checkpoints;

/// <summary>The bad_pickles fixtures and hand-crafted hostile .bin files: each refused with a typed, explanatory error.</summary>
public sealed class HostileBinTests : IDisposable
{
    private const string Pwned = "/tmp/PWNED_SHAREGPT4V";
    private readonly string _dir = Directory.CreateTempSubdirectory("sgpt4v-bin-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Write(string name, byte[] bytes)
    {
        var p = Path.Combine(_dir, name);
        File.WriteAllBytes(p, bytes);
        return p;
    }

    private static T Refused<T>(string path, params string[] fragments) where T : CheckpointFormatException
    {
        var e = Assert.ThrowsAny<CheckpointFormatException>(() => { using var r = PyTorchCheckpointReader.Open(path); });
        Assert.IsType<T>(e);
        foreach (var f in fragments) Assert.Contains(f, e.Message);
        Assert.Contains(Path.GetFileName(path), e.Message);
        Assert.False(File.Exists(Pwned), "a payload ran");
        return (T)e;
    }

    [Theory]
    [InlineData("os_system_reduce.bin", "posix", "system")]
    [InlineData("builtins_eval.bin", "__builtin__", "eval")]
    public void MaliciousFixturesAreRefusedNamingTheGlobal(string file, string module, string name)
    {
        var e = Refused<UnsafeCheckpointException>(Fixtures.Path("oracle/bad_pickles/" + file), $"'{module} {name}'", "allow-list");
        Assert.False(File.Exists(Pwned));
        Assert.NotNull(e.FilePath);
    }

    [Fact]
    public void TruncatedZipFixtureIsRefused() =>
        Refused<CheckpointFormatException>(Fixtures.Path("oracle/bad_pickles/truncated_zip.bin"), "truncated", "zip");

    [Fact]
    public void AWellFormedCraftedZipLoads()
    {
        var path = Write("ok.bin", TorchZip(OneTensorPickle(), new Dictionary<string, byte[]> { ["0"] = Floats(1, 2, 3, 4) }));
        using var r = PyTorchCheckpointReader.Open(path);
        using var t = r.Load("w");
        Assert.Equal(new[] { 1f, 2f, 3f, 4f }, t.data<float>().ToArray());
    }

    [Fact]
    public void Zip64ExtraFieldsAndEndRecordsAreRead()
    {
        var path = Write("z64.bin", TorchZip(OneTensorPickle(), new Dictionary<string, byte[]> { ["0"] = Floats(1, 2, 3, 4) }, zip64: true));
        using var r = PyTorchCheckpointReader.Open(path);
        using var t = r.Load("w");
        Assert.Equal(new[] { 1f, 2f, 3f, 4f }, t.data<float>().ToArray());
        var bad = Zip(new[] { ("ckpt/data.pkl", OneTensorPickle()), ("ckpt/data/0", Floats(1, 2, 3, 4)) }, centralDirOffsetOverride: 1L << 40, zip64: true);
        Refused<CheckpointFormatException>(Write("z64bad.bin", bad), "Central directory");
    }

    [Fact]
    public void NegativeStridesAndNonDictRootsAreRefused()
    {
        Refused<CheckpointFormatException>(
            Write("negstride.bin", TorchZip(OneTensorPickle(offset: 3, stride: new[] { -1 }), new Dictionary<string, byte[]> { ["0"] = Floats(1, 2, 3, 4) })),
            "Negative size or stride");
        Refused<CheckpointFormatException>(ZipWithPickle("list.bin", new Pickle().Proto().Op((byte)']', (byte)'.').Bytes), "not a dict");
        // {"model": {"w": tensor}}: a training checkpoint, not a state dict.
        var nested = new Pickle().Proto().Op((byte)'}').Str("model").Op((byte)'}').Str("w")
            .Tensor("FloatStorage", "0", 4, 0, new[] { 4 }, new[] { 1 }).Op((byte)'s', (byte)'s', (byte)'.').Bytes;
        Refused<CheckpointFormatException>(ZipWithPickle("nested.bin", nested), "'model' hold nested dicts");
    }

    private string ZipWithPickle(string name, byte[] pkl) =>
        Write(name, TorchZip(pkl, new Dictionary<string, byte[]> { ["0"] = Floats(1, 2, 3, 4) }));

    [Fact]
    public void UnknownOpcode() =>
        Refused<CheckpointFormatException>(ZipWithPickle("op.bin", new Pickle().Proto().Op(0xff).Bytes), "unsupported opcode 0xff");

    [Fact]
    public void CodeConstructingOpcodesAreUnsafe()
    {
        // INST 'os system' would import and call; NEWOBJ builds arbitrary objects.
        Refused<UnsafeCheckpointException>(ZipWithPickle("inst.bin", new Pickle().Proto().Mark().Op((byte)'i').Op("os\nsystem\n"u8.ToArray()).Bytes), "opcode 0x69");
        Refused<UnsafeCheckpointException>(ZipWithPickle("newobj.bin", new Pickle().Proto().Op((byte)')', (byte)')', 0x81).Bytes), "opcode 0x81");
    }

    [Fact]
    public void StackGlobalOutsideTheAllowListIsUnsafe() =>
        Refused<UnsafeCheckpointException>(
            ZipWithPickle("sg.bin", new Pickle().Op(0x80, 4).Str("subprocess").Str("Popen").Op(0x93).Bytes), "'subprocess Popen'");

    [Fact]
    public void CallingAStorageTypeOrBuildingAnythingButAnOrderedDictIsUnsafe()
    {
        Refused<UnsafeCheckpointException>(
            ZipWithPickle("call.bin", new Pickle().Proto().Global("torch", "FloatStorage").Op((byte)')', (byte)'R').Bytes), "storage type");
        Refused<UnsafeCheckpointException>(
            ZipWithPickle("build.bin", new Pickle().Proto().Op((byte)']', (byte)'}', (byte)'b').Bytes), "BUILD");
    }

    [Fact]
    public void DeepNestingIsBounded()
    {
        var p = new Pickle().Proto();
        for (int i = 0; i < 100_000; i++) p.Mark();
        Refused<CheckpointFormatException>(ZipWithPickle("deep.bin", p.Bytes), "nesting deeper");
    }

    [Fact]
    public void HugeStringLengthIsCheckedBeforeAllocating() =>
        Refused<CheckpointFormatException>(
            ZipWithPickle("huge.bin", new Pickle().Proto().Op((byte)'X', 0xf0, 0xff, 0xff, 0xff).Op("abc"u8.ToArray()).Bytes),
            "BINUNICODE claims 4294967280 bytes");

    [Fact]
    public void MemoIndexOutOfRange() =>
        Refused<CheckpointFormatException>(
            ZipWithPickle("memo.bin", new Pickle().Proto().Op((byte)'}', (byte)'q', 0, (byte)'h', 7).Bytes), "memo index 7");

    [Fact]
    public void TruncatedPickle() =>
        Refused<CheckpointFormatException>(ZipWithPickle("trunc.bin", OneTensorPickle()[..40]), "truncated");

    [Fact]
    public void MissingStorageRecordNamesTheTensor()
    {
        var path = Write("missing.bin", TorchZip(OneTensorPickle(key: "5"), new Dictionary<string, byte[]> { ["0"] = Floats(1, 2, 3, 4) }));
        var e = Refused<CheckpointFormatException>(path, "data/5", "missing");
        Assert.Equal("w", e.TensorName);
    }

    [Fact]
    public void ViewBeyondItsStorageNamesTheTensor()
    {
        // size 10 over a 4-element storage, and a strided view that reaches one element too far.
        var e = Refused<CheckpointFormatException>(
            Write("extent.bin", TorchZip(OneTensorPickle(size: new[] { 10 }), new Dictionary<string, byte[]> { ["0"] = Floats(1, 2, 3, 4) })),
            "reaches element 9");
        Assert.Equal("w", e.TensorName);
        Refused<CheckpointFormatException>(
            Write("extent2.bin", TorchZip(OneTensorPickle(offset: 1, size: new[] { 2, 2 }, stride: new[] { 2, 1 }), new Dictionary<string, byte[]> { ["0"] = Floats(1, 2, 3, 4) })),
            "reaches element 4");
        // The pickle promises 4 elements but the record holds 3.
        Refused<CheckpointFormatException>(
            Write("short.bin", TorchZip(OneTensorPickle(), new Dictionary<string, byte[]> { ["0"] = Floats(1, 2, 3) })),
            "its record has 12 bytes");
    }

    [Fact]
    public void BigEndianByteOrderIsRefused() =>
        Refused<CheckpointFormatException>(
            Write("big.bin", TorchZip(OneTensorPickle(), new Dictionary<string, byte[]> { ["0"] = Floats(1, 2, 3, 4) }, byteorder: "big")),
            "byteorder 'big'");

    [Fact]
    public void CompressedRecordsAreRefused() =>
        Refused<CheckpointFormatException>(
            Write("deflate.bin", TorchZip(OneTensorPickle(), new Dictionary<string, byte[]> { ["0"] = Floats(1, 2, 3, 4) }, method: 8)),
            "compressed");

    [Fact]
    public void BadCentralDirectoryOffset()
    {
        var ok = TorchZip(OneTensorPickle(), new Dictionary<string, byte[]> { ["0"] = Floats(1, 2, 3, 4) });
        var bad = Zip(new[] { ("ckpt/data.pkl", OneTensorPickle()), ("ckpt/data/0", Floats(1, 2, 3, 4)) }, centralDirOffsetOverride: 0x7fff_0000);
        Refused<CheckpointFormatException>(Write("cd.bin", bad), "Central directory");
        Assert.True(ok.Length > 0);
    }

    [Fact]
    public void NotACheckpointAtAll() =>
        Refused<CheckpointFormatException>(Write("text.bin", "hello world"u8.ToArray()), "Not a PyTorch checkpoint");

    [Fact]
    public void TruncatedLegacyStream()
    {
        var legacy = File.ReadAllBytes(Fixtures.Path("oracle/dtype_bin/dtype_legacy.bin"));
        Refused<CheckpointFormatException>(Write("legacy_cut.bin", legacy[..(legacy.Length - 100)]), "truncated");
        Refused<CheckpointFormatException>(Write("legacy_cut2.bin", legacy[..500]), "truncated");
    }

    [Fact]
    public void RandomTruncationsNeverCrash()
    {
        // Every prefix of a real zip checkpoint is refused with a typed error or (never here) opens cleanly.
        var bytes = File.ReadAllBytes(Fixtures.Path("oracle/dtype_bin/dtype_zip.bin"));
        var rng = new Random(1234);
        for (int i = 0; i < 40; i++)
        {
            int n = rng.Next(0, bytes.Length - 1);
            var p = Write($"cut{i}.bin", bytes[..n]);
            Assert.ThrowsAny<CheckpointFormatException>(() => { using var r = PyTorchCheckpointReader.Open(p); });
        }
        // And random single-byte corruption inside data.pkl: either refused with a typed error or loads.
        for (int i = 0; i < 200; i++)
        {
            var copy = (byte[])bytes.Clone();
            copy[64 + rng.Next(0, 1500)] ^= (byte)rng.Next(1, 256);
            var p = Write($"flip{i}.bin", copy);
            try
            {
                using var r = PyTorchCheckpointReader.Open(p);
                foreach (var name in r.Names) { using var t = r.Load(name); }
            }
            catch (CheckpointFormatException) { }
        }
        Assert.False(File.Exists(Pwned));
    }

    [Theory]
    [InlineData("oracle/dtype_bin/dtype_legacy.bin", 20, 2000)]
    [InlineData("oracle/llava_tiny336_bin/clip-vit-tiny-336/pytorch_model.bin", 64, 8000)]
    public void ByteFlipsInOtherPicklesAreRefusedOrLoadCleanly(string fixture, int from, int span)
    {
        var bytes = File.ReadAllBytes(Fixtures.Path(fixture));
        var rng = new Random(99);
        for (int i = 0; i < 150; i++)
        {
            var copy = (byte[])bytes.Clone();
            copy[from + rng.Next(0, span)] ^= (byte)rng.Next(1, 256);
            var p = Write($"flip{i}.bin", copy);
            try
            {
                using var r = PyTorchCheckpointReader.Open(p);
                foreach (var name in r.Names) { using var t = r.Load(name); }
            }
            catch (CheckpointFormatException) { }
        }
        Assert.False(File.Exists(Pwned));
    }

    [Fact]
    public void LoadedTensorsOutliveTheReader()
    {
        torch.Tensor t;
        using (var r = PyTorchCheckpointReader.Open(Fixtures.Path("oracle/dtype_bin/dtype_zip.bin")))
            t = r.Load("fp32");
        using (t)
            Assert.Equal(6, t.contiguous().data<float>().ToArray().Length);
        var disposed = PyTorchCheckpointReader.Open(Fixtures.Path("oracle/dtype_bin/dtype_zip.bin"));
        disposed.Dispose();
        Assert.Throws<ObjectDisposedException>(() => disposed.Load("fp32"));
    }
}
