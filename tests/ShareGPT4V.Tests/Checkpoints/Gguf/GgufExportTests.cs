using ShareGPT4V.Checkpoints.Gguf;
using Xunit;

namespace ShareGPT4V.Tests.Checkpoints.Gguf;

/// <summary><c>convert --format gguf</c> against the files llama.cpp's own converter and quantizer wrote from the same checkpoint.</summary>
public sealed class GgufExportTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("sgpt4v-gguf-export-").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    // Keys that only name the model (the converter derives them from the folder name).
    private static readonly HashSet<string> Descriptive = new() { "general.name", "general.size_label", "general.description" };

    private static void AssertSameFile(string ours, string llamaCpp)
    {
        using var a = GgufFile.Open(ours);
        using var b = GgufFile.Open(llamaCpp);
        Assert.Equal(b.Tensors.Select(t => t.Name).OrderBy(n => n), a.Tensors.Select(t => t.Name).OrderBy(n => n));
        foreach (var t in b.Tensors)
        {
            Assert.True(a.TryGetTensor(t.Name, out var mine));
            Assert.Equal(t.Type, mine.Type);
            Assert.Equal(t.Ne, mine.Ne);
            using var x = a.Bytes(mine);
            using var y = b.Bytes(t);
            Assert.True(x.data<byte>().ToArray().AsSpan().SequenceEqual(y.data<byte>().ToArray()), $"{t.Name} bytes differ");
        }
        foreach (var (key, value) in b.Metadata)
        {
            if (Descriptive.Contains(key)) continue;
            Assert.True(a.Metadata.TryGetValue(key, out var v), $"missing key {key}");
            if (value is GgufArray arr)
            {
                var mine = Assert.IsType<GgufArray>(v);
                Assert.Equal(arr.ElementType, mine.ElementType);
                Assert.Equal(arr.Items.Cast<object>(), mine.Items.Cast<object>());
            }
            else Assert.Equal(value, v);
        }
        Assert.Empty(a.Metadata.Keys.Except(b.Metadata.Keys));
    }

    [Fact]
    public void F32ExportIsLlamaCppsFile()
    {
        var r = GgufExporter.Export(Fixtures.Path("oracle/hf_llama2vocab"), _dir, GgufTensorType.F32);
        AssertSameFile(r.LlmPath, GgufFixtures.File("llm-f32.gguf"));
        AssertSameFile(r.MmprojPath, GgufFixtures.File("mmproj-f32.gguf"));
    }

    [Fact]
    public void Q4_0ExportIsLlamaCppsQuantizedFile()
    {
        var r = GgufExporter.Export(Fixtures.Path("oracle/hf_llama2vocab"), _dir, GgufTensorType.Q4_0);
        AssertSameFile(r.LlmPath, GgufFixtures.File("llm-q4_0.gguf"));
        AssertSameFile(r.MmprojPath, GgufFixtures.File("mmproj-f16.gguf"));
    }
}
