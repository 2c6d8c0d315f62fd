using ShareGPT4V.Checkpoints;
using ShareGPT4V.Configuration;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace ShareGPT4V.Tests.Checkpoints;

/// <summary>A reader that hides, renames, reshapes or adds tensors of a real one, to test the loader's checks.</summary>
internal sealed class EditedReader : ITensorReader
{
    private readonly ITensorReader _inner;
    public HashSet<string> Hidden { get; } = new();
    public Dictionary<string, string> Renamed { get; } = new(); // new name -> inner name
    public Dictionary<string, long[]> Reshaped { get; } = new();
    public Dictionary<string, TensorInfo> Extra { get; } = new();
    public int Loads;

    public EditedReader(ITensorReader inner) => _inner = inner;
    public string Source => _inner.Source;
    public IReadOnlyList<string> Names =>
        _inner.Names.Where(n => !Hidden.Contains(n) && !Renamed.ContainsValue(n)).Concat(Renamed.Keys).Concat(Extra.Keys).ToList();
    public bool Contains(string name) => Names.Contains(name);
    private string Inner(string name) => Renamed.TryGetValue(name, out var n) ? n : name;
    public TensorInfo GetInfo(string name)
    {
        if (Extra.TryGetValue(name, out var e)) return e;
        var i = _inner.GetInfo(Inner(name));
        return Reshaped.TryGetValue(name, out var s) ? i with { Name = name, Shape = s } : i with { Name = name };
    }
    public Tensor Load(string name, ScalarType? dtype = null, Device? device = null)
    {
        Loads++;
        if (Extra.ContainsKey(name)) throw new InvalidOperationException("extra tensors must never be read");
        return _inner.Load(Inner(name), dtype, device);
    }
    public void Dispose() => _inner.Dispose();
}

public class ModelLoaderTests
{
    private static (LlavaConfig, EditedReader) HfTiny()
    {
        var folder = ModelFolder.Open(Fixtures.Path("oracle/hf_tiny"));
        return (folder.Config, new EditedReader(SafeTensorsFile.Open(Fixtures.Path("oracle/hf_tiny/model.safetensors"))));
    }

    [Fact]
    public void MissingTensorFailsBeforeAnythingIsRead()
    {
        var (config, reader) = HfTiny();
        using var _ = reader;
        reader.Hidden.Add("language_model.model.layers.1.mlp.up_proj.weight");
        var e = Assert.Throws<CheckpointFormatException>(() => ModelLoader.Load(config, new[] { ((ITensorReader)reader, CheckpointPart.LlavaHf) }, new LoadOptions()));
        Assert.Contains("missing tensor 'language_model.model.layers.1.mlp.up_proj.weight'", e.Message);
        Assert.Contains("expected shape [128, 64]", e.Message);
        Assert.Contains("model.safetensors", e.Message);
        Assert.Equal(0, reader.Loads);
    }

    [Fact]
    public void MisShapedTensorNamesBothShapesAndTheFile()
    {
        var (config, reader) = HfTiny();
        using var _ = reader;
        reader.Reshaped["multi_modal_projector.linear_1.weight"] = new long[] { 64, 31 };
        var e = Assert.Throws<CheckpointFormatException>(() => ModelLoader.Load(config, new[] { ((ITensorReader)reader, CheckpointPart.LlavaHf) }, new LoadOptions()));
        Assert.Contains("'multi_modal_projector.linear_1.weight'", e.Message);
        Assert.Contains("has shape [64, 31], expected [64, 32]", e.Message);
        Assert.Contains("model.safetensors", e.Message);
        Assert.Equal(0, reader.Loads);
    }

    [Fact]
    public void UnexpectedTensorIsReported()
    {
        var (config, reader) = HfTiny();
        using var _ = reader;
        reader.Extra["language_model.model.layers.7.mlp.up_proj.weight"] = new TensorInfo("x", ScalarType.Float32, new long[] { 1 }, "x");
        var e = Assert.Throws<CheckpointFormatException>(() => ModelLoader.Load(config, new[] { ((ITensorReader)reader, CheckpointPart.LlavaHf) }, new LoadOptions()));
        Assert.Contains("unexpected tensor 'language_model.model.layers.7.mlp.up_proj.weight'", e.Message);
    }

    [Fact]
    public void KnownUnusedBuffersAndTextTowerAreSkippedWithoutReading()
    {
        var (config, reader) = HfTiny();
        using var _ = reader;
        reader.Extra["language_model.model.layers.0.self_attn.rotary_emb.inv_freq"] = new TensorInfo("x", ScalarType.Float32, new long[] { 8 }, "x");
        reader.Extra["vision_tower.vision_model.embeddings.position_ids"] = new TensorInfo("x", ScalarType.Int64, new long[] { 1, 17 }, "x");
        using var model = ModelLoader.Load(config, new[] { ((ITensorReader)reader, CheckpointPart.LlavaHf) }, new LoadOptions());
        Assert.NotNull(model);
    }

    [Fact]
    public void Transformers452NamesLoadToo()
    {
        var (config, reader) = HfTiny();
        using var _ = reader;
        foreach (var n in reader.Names.ToList())
        {
            string renamed = n.StartsWith("language_model.model.") ? "model.language_model." + n["language_model.model.".Length..]
                : n == "language_model.lm_head.weight" ? "lm_head.weight"
                : "model." + n;
            reader.Renamed[renamed] = n;
        }
        using var model = ModelLoader.Load(config, new[] { ((ITensorReader)reader, CheckpointPart.LlavaHf) }, new LoadOptions());
        Assert.Equal(reader.Names.Count, reader.Loads);
    }

    [Fact]
    public void FullClipModelTowerIgnoresTheTextTower()
    {
        var folder = ModelFolder.Open(Fixtures.Path("oracle/llava_tiny336/model"));
        using var llm = SafeTensorsFile.Open(Fixtures.Path("oracle/llava_tiny336/model/model.safetensors"));
        var tower = new EditedReader(SafeTensorsFile.Open(Fixtures.Path("oracle/llava_tiny336/clip-vit-tiny-336/model.safetensors")));
        using var _ = tower;
        tower.Extra["text_model.embeddings.token_embedding.weight"] = new TensorInfo("t", ScalarType.Float32, new long[] { 10, 4 }, "t");
        tower.Extra["text_projection.weight"] = new TensorInfo("t", ScalarType.Float32, new long[] { 4, 4 }, "t");
        tower.Extra["logit_scale"] = new TensorInfo("t", ScalarType.Float32, Array.Empty<long>(), "t");
        using var model = ModelLoader.Load(folder.Config, new (ITensorReader, CheckpointPart)[] { (llm, CheckpointPart.OriginalLanguageModel), (tower, CheckpointPart.VisionTower) }, new LoadOptions());
        Assert.NotNull(model);
    }

    [Fact]
    public void CancelledLoadThrowsAndReturnsNothing()
    {
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        Assert.Throws<OperationCanceledException>(() => ModelLoader.Load(Fixtures.Path("oracle/hf_tiny"), cancellationToken: cts.Token));
    }

    [Fact]
    public void ProgressIsReportedUpToTheLastTensor()
    {
        var reports = new List<LoadProgress>();
        using var model = ModelLoader.Load(Fixtures.Path("oracle/hf_tiny"), progress: new SyncProgress<LoadProgress>(reports.Add));
        Assert.NotEmpty(reports);
        var last = reports[^1];
        Assert.Equal(last.TensorsTotal, last.TensorsLoaded);
        Assert.Equal(last.BytesTotal, last.BytesLoaded);
    }

    [Fact]
    public void LoadedWeightsAreViewsOfTheMappedFileNotCopies()
    {
        // A float32 checkpoint loaded as float32 on CPU must not be copied: parameters share the file mapping.
        using var model = ModelLoader.Load(Fixtures.Path("oracle/hf_tiny"));
        var w = model.named_parameters().First(p => p.name == "language_model.model.embed_tokens.weight").parameter;
        using var f = SafeTensorsFile.Open(Fixtures.Path("oracle/hf_tiny/model.safetensors"));
        var (offset, _) = f.GetByteRange("language_model.model.embed_tokens.weight");
        Assert.Equal(offset / 4, w.storage_offset());
    }
}

/// <summary>IProgress that reports on the caller's thread (Progress&lt;T&gt; posts to the thread pool).</summary>
internal sealed class SyncProgress<T> : IProgress<T>
{
    private readonly Action<T> _a;
    public SyncProgress(Action<T> a) => _a = a;
    public void Report(T value) => _a(value);
}
