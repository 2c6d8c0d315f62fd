using ShareGPT4V.Checkpoints;
using ShareGPT4V.Checkpoints.PyTorch;
using Xunit;

namespace ShareGPT4V.Tests.Safety;

/// <summary>
/// A checkpoint validated when opened may change before its tensors are read (a download still running, a copy
/// over it). Through the memory mapping, a page wholly past the new end of the file kills the process with SIGBUS
/// and the rest of the last page reads as zeros (without the check, these tests read zeros: a silent wrong answer).
/// The readers check the file before every tensor and refuse instead.
/// </summary>
public sealed class CheckpointLifetimeTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("sgpt4v-life-").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Copy(string fixture)
    {
        var path = Path.Combine(_dir, Path.GetFileName(fixture));
        File.Copy(Fixtures.Path(fixture), path);
        return path;
    }

    public static TheoryData<string> Files => new()
    {
        "oracle/dtype_bin/dtype.safetensors",
        "oracle/dtype_bin/dtype_zip.bin",
        "oracle/dtype_bin/dtype_legacy.bin",
    };

    private static ITensorReader Open(string path) =>
        path.EndsWith(".safetensors", StringComparison.Ordinal) ? SafeTensorsFile.Open(path) : PyTorchCheckpointReader.Open(path);

    [Theory]
    [MemberData(nameof(Files))]
    public void AFileTruncatedAfterOpeningIsRefusedNotMapped(string fixture)
    {
        var path = Copy(fixture);
        using var reader = Open(path);
        using (var first = reader.Load(reader.Names[0])) _ = first.to_type(TorchSharp.torch.ScalarType.Float64).sum().item<double>(); // the file is mapped now
        using (var f = new FileStream(path, FileMode.Open, FileAccess.Write)) f.SetLength(f.Length / 3);
        foreach (var name in reader.Names)
        {
            var e = Assert.Throws<CheckpointFormatException>(() => { using var t = reader.Load(name); _ = t.to_type(TorchSharp.torch.ScalarType.Float64).sum().item<double>(); });
            Assert.Contains("changed after it was opened", e.Message);
            Assert.Equal(name, e.TensorName);
        }
    }

    [Theory]
    [MemberData(nameof(Files))]
    public void AFileRemovedAfterOpeningIsRefused(string fixture)
    {
        var path = Copy(fixture);
        using var reader = Open(path);
        File.Delete(path);
        var e = Assert.Throws<CheckpointFormatException>(() => reader.Load(reader.Names[^1]));
        Assert.Contains("removed after it was opened", e.Message);
    }
}
