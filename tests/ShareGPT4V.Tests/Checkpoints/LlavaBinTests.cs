using System.Diagnostics;
using System.Text.Json;
using ShareGPT4V.Checkpoints;
using ShareGPT4V.Checkpoints.PyTorch;
using TorchSharp;
using Xunit;
using Xunit.Abstractions;

namespace ShareGPT4V.Tests.Checkpoints;

/// <summary>llava_tiny336_bin (sharded .bin LLM + OrderedDict CLIP tower) against llava_tiny336's safetensors, and conversion.</summary>
public sealed class LlavaBinTests : IDisposable
{
    private readonly ITestOutputHelper _out;
    private readonly string _dir = Directory.CreateTempSubdirectory("sgpt4v-conv-").FullName;

    public LlavaBinTests(ITestOutputHelper output) => _out = output;
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static string Bin(string sub) => Fixtures.Path("oracle/llava_tiny336_bin/" + sub);
    private static string Safe(string sub) => Fixtures.Path("oracle/llava_tiny336/" + sub);

    private static void AssertSameTensors(ITensorReader expected, ITensorReader actual)
    {
        Assert.Equal(expected.Names.OrderBy(n => n, StringComparer.Ordinal), actual.Names.OrderBy(n => n, StringComparer.Ordinal));
        foreach (var name in expected.Names)
        {
            using var a = expected.Load(name);
            using var b = actual.Load(name);
            Assert.Equal(expected.GetInfo(name).DType, actual.GetInfo(name).DType);
            Assert.Equal(expected.GetInfo(name).Shape, actual.GetInfo(name).Shape);
            Assert.True(TensorAssert.BitEqual(a, b), $"{name} differs");
            Assert.True(a.eq(b).all().item<bool>(), name); // torch.equal semantics (TorchSharp's equal is elementwise)
        }
    }

    [Fact]
    public void ShardedIndexOpensAndEveryTensorIsBitIdentical()
    {
        var sw = Stopwatch.StartNew();
        using var bin = PyTorchCheckpointReader.OpenIndex(Bin("model/pytorch_model.bin.index.json"));
        _out.WriteLine($"open index: {sw.Elapsed.TotalMilliseconds:F1} ms");
        Assert.Equal(25, bin.Names.Count);
        Assert.Equal(2, bin.Parts.Count);
        using var safe = SafeTensorsFile.Open(Safe("model/model.safetensors"));
        AssertSameTensors(safe, bin);

        // The index's total_size is the sum of the tensor bytes.
        using var index = JsonDocument.Parse(File.ReadAllBytes(Bin("model/pytorch_model.bin.index.json")));
        long total = bin.Names.Sum(n => bin.GetInfo(n).ElementCount * SafeTensorsFile.ElementSize(bin.GetInfo(n).DType));
        Assert.Equal(index.RootElement.GetProperty("metadata").GetProperty("total_size").GetInt64(), total);
    }

    [Fact]
    public void OrderedDictVisionTowerWithMetadataLoads()
    {
        using var bin = PyTorchCheckpointReader.Open(Bin("clip-vit-tiny-336/pytorch_model.bin"));
        using var safe = SafeTensorsFile.Open(Safe("clip-vit-tiny-336/model.safetensors"));
        AssertSameTensors(safe, bin);
    }

    [Fact]
    public void DiscoveryPicksTheBinIndexAndTheSafetensors()
    {
        using (var r = CheckpointDiscovery.Open(Bin("model"), out var picked))
        {
            Assert.Equal(CheckpointFormat.PyTorchIndex, picked.Format);
            Assert.Equal(2, picked.Files.Count);
            Assert.EndsWith("pytorch_model-00002-of-00002.bin", picked.Files[1]);
            Assert.Equal(25, r.Names.Count);
        }
        Assert.Equal(CheckpointFormat.PyTorch, CheckpointDiscovery.Find(Bin("clip-vit-tiny-336")).Format);
        Assert.Equal(CheckpointFormat.SafeTensors, CheckpointDiscovery.Find(Safe("model")).Format);
    }

    [Fact]
    public void ConvertingTheBinCheckpointGivesBitIdenticalSafetensors()
    {
        using var bin = PyTorchCheckpointReader.OpenIndex(Bin("model/pytorch_model.bin.index.json"));
        var reports = new List<CheckpointWriteProgress>();
        var progress = new SyncProgress(reports.Add);
        var result = CheckpointConverter.Convert(bin, _dir, rename: null, maxShardBytes: 300_000, progress: progress);
        Assert.True(result.Files.Count >= 3, $"{result.Files.Count} shards");
        Assert.NotNull(result.IndexFile);
        Assert.Equal(25, result.TensorCount);
        Assert.Equal(878336, result.TotalBytes);
        Assert.Equal(25, reports.Count);
        Assert.Equal(878336, reports[^1].BytesDone);
        for (int i = 0; i < result.Files.Count; i++)
            Assert.Equal($"model-{i + 1:D5}-of-{result.Files.Count:D5}.safetensors", Path.GetFileName(result.Files[i]));

        using var index = JsonDocument.Parse(File.ReadAllBytes(result.IndexFile!));
        Assert.Equal(878336, index.RootElement.GetProperty("metadata").GetProperty("total_size").GetInt64());
        Assert.Equal(25, index.RootElement.GetProperty("weight_map").EnumerateObject().Count());

        using var converted = CheckpointDiscovery.Open(_dir, out var picked);
        Assert.Equal(CheckpointFormat.SafeTensorsIndex, picked.Format);
        using var original = SafeTensorsFile.Open(Safe("model/model.safetensors"));
        AssertSameTensors(original, converted);

        foreach (var f in result.Files)
        {
            using var shard = SafeTensorsFile.Open(f);
            Assert.Equal("pt", shard.Metadata["format"]);
            var bytes = File.ReadAllBytes(f);
            Assert.Equal(0, (8 + (long)BitConverter.ToUInt64(bytes, 0)) % 8); // data section 8-byte aligned
        }
    }

    [Fact]
    public void ConvertWithRenameAndDropIntoOneFile()
    {
        using var clip = PyTorchCheckpointReader.Open(Bin("clip-vit-tiny-336/pytorch_model.bin"));
        var result = CheckpointConverter.Convert(clip, _dir,
            rename: n => n.Contains("post_layernorm") ? null : "vision_tower." + n, maxShardBytes: long.MaxValue);
        Assert.Null(result.IndexFile);
        Assert.Equal("model.safetensors", Path.GetFileName(Assert.Single(result.Files)));
        using var written = SafeTensorsFile.Open(result.Files[0]);
        Assert.DoesNotContain(written.Names, n => n.Contains("post_layernorm"));
        foreach (var n in clip.Names.Where(n => !n.Contains("post_layernorm")))
        {
            using var a = clip.Load(n);
            using var b = written.Load("vision_tower." + n);
            Assert.True(TensorAssert.BitEqual(a, b), n);
        }
    }

    [Fact]
    public void WriterRoundTripsEveryDtypeFromMemory()
    {
        using var src = PyTorchCheckpointReader.Open(Fixtures.Path("oracle/dtype_bin/dtype_zip.bin"));
        var tensors = src.Names.ToDictionary(n => n, n => src.Load(n));
        var path = Path.Combine(_dir, "all.safetensors");
        SafeTensorsWriter.Write(path, tensors);
        using var back = SafeTensorsFile.Open(path);
        foreach (var (n, t) in tensors)
        {
            using var b = back.Load(n);
            Assert.True(TensorAssert.BitEqual(t, b), n);
            t.Dispose();
        }
        // Data order: larger elements first, so every tensor is aligned to its element size.
        foreach (var n in back.Names)
            Assert.Equal(0, back.GetByteRange(n).Offset % SafeTensorsFile.ElementSize(back.GetInfo(n).DType));
    }

    [Fact]
    public void StreamingWriteFromAReaderAndFolderConversion()
    {
        // Every dtype and layout of the legacy file (views, shared and expanded storages) streamed into one file.
        using var src = PyTorchCheckpointReader.Open(Fixtures.Path("oracle/dtype_bin/dtype_legacy.bin"));
        var path = Path.Combine(_dir, "legacy.safetensors");
        SafeTensorsWriter.Write(path, src);
        using (var back = SafeTensorsFile.Open(path))
        {
            Assert.Equal("pt", back.Metadata["format"]);
            foreach (var n in src.Names)
            {
                using var a = src.Load(n);
                using var b = back.Load(n);
                Assert.True(TensorAssert.BitEqual(a, b), n);
            }
        }

        var outDir = Path.Combine(_dir, "clip");
        var result = CheckpointConverter.Convert(Bin("clip-vit-tiny-336"), outDir);
        Assert.Equal(Path.Combine(outDir, "model.safetensors"), Assert.Single(result.Files));
        using var converted = CheckpointDiscovery.Open(outDir);
        using var original = SafeTensorsFile.Open(Safe("clip-vit-tiny-336/model.safetensors"));
        AssertSameTensors(original, converted);
        Assert.Throws<ArgumentException>(() => CheckpointConverter.Convert(outDir, outDir));
    }

    [Fact]
    public void LoadTimeOfTheLargestBinFixture()
    {
        // Timing is reported, not asserted (shared machine); the largest .bin fixture is shard 1 (497 kB).
        var path = Bin("model/pytorch_model-00001-of-00002.bin");
        var sw = Stopwatch.StartNew();
        using var r = PyTorchCheckpointReader.Open(path);
        var open = sw.Elapsed;
        foreach (var n in r.Names) { using var t = r.Load(n); }
        var all = sw.Elapsed;
        foreach (var n in r.Names) { using var t = r.Load(n, torch.ScalarType.BFloat16); }
        _out.WriteLine($"{Path.GetFileName(path)}: open {open.TotalMilliseconds:F2} ms, open + load all {all.TotalMilliseconds:F2} ms, " +
                       $"load all as bf16 {(sw.Elapsed - all).TotalMilliseconds:F2} ms");
    }

    private sealed class SyncProgress(Action<CheckpointWriteProgress> report) : IProgress<CheckpointWriteProgress>
    {
        public void Report(CheckpointWriteProgress value) => report(value);
    }
}
