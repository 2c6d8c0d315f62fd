using System.Buffers.Binary;
using System.Text;
using ShareGPT4V.Checkpoints;
using ShareGPT4V.Checkpoints.PyTorch;
using ShareGPT4V.Configuration;
using ShareGPT4V.Preprocessing;
using ShareGPT4V.Tokenization;
using Xunit;
using static ShareGPT4V.Tests.Checkpoints.CheckpointBytes;

namespace ShareGPT4V.Tests.Safety;

/// <summary>
/// Inputs the mutation fuzz found that escaped as untyped exceptions, reduced to their cause. Each is now refused
/// with the library's own exception, naming the file.
/// </summary>
public sealed class FuzzFindingTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("sgpt4v-finding-").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Write(string name, byte[] bytes)
    {
        var p = Path.Combine(_dir, name);
        Directory.CreateDirectory(Path.GetDirectoryName(p)!);
        File.WriteAllBytes(p, bytes);
        return p;
    }

    private string Write(string name, string text) => Write(name, Encoding.UTF8.GetBytes(text));

    // System.Text.Json parses "\ud800" (a lone surrogate) and raw invalid UTF-8 inside strings, then throws
    // InvalidOperationException when the string is read. Each reader now checks every string up front.
    private const string LoneSurrogate = "\\ud800";

    [Fact]
    public void IndexWithALoneSurrogateEscape()
    {
        var index = Write("model.safetensors.index.json", $$$"""{"weight_map":{"a{{{LoneSurrogate}}}":"model-00001-of-00001.safetensors"}}""");
        var e = Assert.Throws<CheckpointFormatException>(() => ShardedTensorReader.OpenIndex(index, SafeTensorsFile.Open));
        Assert.Contains("not valid text", e.Message);
        Assert.Contains("model.safetensors.index.json", e.Message);
        // DiscoveredCheckpoint.Files reads the index on its own path; same refusal.
        var picked = CheckpointDiscovery.Find(_dir);
        Assert.Throws<CheckpointFormatException>(() => picked.Files);
    }

    [Fact]
    public void DiscoveredFilesNeverPointOutsideTheFolder()
    {
        Write("model.safetensors.index.json", """{"weight_map":{"a":"../../outside.safetensors"}}""");
        var e = Assert.Throws<CheckpointFormatException>(() => CheckpointDiscovery.Find(_dir).Files);
        Assert.Contains("not a plain file name", e.Message);
    }

    [Fact]
    public void SafetensorsHeaderWithALoneSurrogateEscape()
    {
        var header = Encoding.UTF8.GetBytes($$$"""{"a{{{LoneSurrogate}}}":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""");
        var bytes = new byte[8 + header.Length + 4];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, (ulong)header.Length);
        header.CopyTo(bytes, 8);
        var path = Write("model.safetensors", bytes);
        var e = Assert.Throws<CheckpointFormatException>(() => SafeTensorsFile.Open(path));
        Assert.Contains("not valid text", e.Message);
        Assert.Contains("model.safetensors", e.Message);
    }

    [Fact]
    public void ConfigWithInvalidStrings()
    {
        Write("m1/config.json", $$$"""{"model_type":"llava{{{LoneSurrogate}}}"}""");
        var e = Assert.Throws<ModelConfigurationException>(() => ModelFolder.Open(Path.Combine(_dir, "m1")));
        Assert.Contains("$.model_type", e.Message);
        Assert.Contains("config.json", e.Message);
        var bytes = Encoding.UTF8.GetBytes("""{"model_type":"llava","text_config":{"hidden_act":"XX"}}""");
        bytes[Array.IndexOf(bytes, (byte)'X')] = 0xff;
        Write("m2/config.json", bytes);
        e = Assert.Throws<ModelConfigurationException>(() => ModelFolder.Open(Path.Combine(_dir, "m2")));
        Assert.Contains("$.text_config.hidden_act", e.Message);
    }

    [Fact]
    public void TokenizerJsonWithInvalidUtf8()
    {
        var json = File.ReadAllBytes(Fixtures.Path("oracle/hf_llama2vocab/tokenizer.json"));
        int at = json.AsSpan().IndexOf("\"<unk>\""u8);
        json[at + 2] = 0xfe; // inside a vocabulary key
        Write("tok/tokenizer.json", json);
        var e = Assert.Throws<ModelConfigurationException>(() => LlavaTokenizer.Load(Path.Combine(_dir, "tok"), TokenizerFileKind.TokenizerJson));
        Assert.Contains("not valid text", e.Message);
        Assert.Contains("tokenizer.json", e.Message);
    }

    [Fact]
    public void PreprocessorConfigWithALoneSurrogateKey()
    {
        var path = Write("preprocessor_config.json", $$$"""{"crop_size":336,"x{{{LoneSurrogate}}}":1}""");
        var e = Assert.Throws<ModelConfigurationException>(() => PreprocessorConfig.Load(path));
        Assert.Contains("not valid text", e.Message);
    }

    [Fact]
    public void Zip64LocatorOffsetBeyondLongRange()
    {
        // A zip64 locator whose end-record offset is 2^64 - 1 used to overflow a checked cast.
        var zip = TorchZip(OneTensorPickle(), new Dictionary<string, byte[]> { ["0"] = Floats(1, 2, 3, 4) }, zip64: true);
        int locator = zip.AsSpan().LastIndexOf(new byte[] { 0x50, 0x4b, 0x06, 0x07 });
        BinaryPrimitives.WriteUInt64LittleEndian(zip.AsSpan(locator + 8), ulong.MaxValue);
        var path = Write("z64.bin", zip);
        var e = Assert.Throws<CheckpointFormatException>(() => PyTorchCheckpointReader.Open(path));
        Assert.Contains("zip64 end record offset", e.Message);
        Assert.Contains("z64.bin", e.Message);
    }

    [Fact]
    public void JpegWithoutAFrameHeader()
    {
        // SOI, a JFIF APP0 segment, EOI: ImageSharp's Identify throws NullReferenceException on it.
        byte[] jpeg = [0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, .. "JFIF\0"u8, 0x01, 0x01, 0x01, 0x00, 0x60, 0x00, 0x60, 0x00, 0x00, 0xff, 0xd9];
        var e = Assert.Throws<ImageInputException>(() => ImageLoader.Load(jpeg, "noframe.jpg"));
        Assert.Contains("corrupt", e.Message);
        Assert.Equal("noframe.jpg", e.ImageName);
    }

    [Fact]
    public void WebpWithAnAbsurdChunkSize()
    {
        var body = new List<byte>();
        body.AddRange("WEBPVP8L"u8.ToArray());
        body.AddRange(BitConverter.GetBytes(0xF7F6F5F4u));
        body.AddRange(Enumerable.Range(0, 20).Select(i => (byte)i));
        var webp = "RIFF"u8.ToArray().Concat(BitConverter.GetBytes(body.Count)).Concat(body).ToArray();
        var e = Assert.Throws<ImageInputException>(() => ImageLoader.Load(webp, "chunk.webp"));
        Assert.Equal("chunk.webp", e.ImageName);
    }
}
