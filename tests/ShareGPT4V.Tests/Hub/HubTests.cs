using ShareGPT4V.Configuration;
using ShareGPT4V.Hub;
using ShareGPT4V.Tests.Oracle;
using Xunit;

namespace ShareGPT4V.Tests.Hub;

public sealed class HubTests : IDisposable
{
    private readonly FakeHub _hub = new();
    private readonly string _cache = Directory.CreateTempSubdirectory("sharegpt4v-hubcache-").FullName;

    public void Dispose()
    {
        _hub.Dispose();
        try { Directory.Delete(_cache, recursive: true); } catch (IOException) { }
    }

    private HubOptions Options(bool offline = false, string? token = null, IProgress<HubDownloadProgress>? progress = null) =>
        new() { Endpoint = _hub.Endpoint, CacheDirectory = _cache, Offline = offline, Token = token, Progress = progress };

    private static Dictionary<string, byte[]> FolderFiles(string dir, params string[] skip) =>
        Directory.GetFiles(dir).Where(f => !skip.Contains(Path.GetFileName(f)))
            .ToDictionary(f => Path.GetFileName(f), File.ReadAllBytes);

    private static Dictionary<string, byte[]> TinyModel() =>
        FolderFiles(Fixtures.Path("oracle/hf_llama2vocab"), "golden.json", "logits.safetensors", "pixel_values.safetensors",
            "projector_out.safetensors", "vision_hidden_minus2.safetensors", "vision_hidden_states_all.safetensors", "image1.png", "image2.png");

    private static byte[] Bytes(int n, int seed)
    {
        var b = new byte[n];
        new Random(seed).NextBytes(b);
        return b;
    }

    [Fact]
    public async Task HubIdLoadsThroughTheCacheAndCaptionsAsTheLocalFolder()
    {
        var commit = _hub.AddRepo("tiny/llava-hf", TinyModel());
        var reports = new List<HubDownloadProgress>();
        var c = GoldenCase.Get("hf_llama2vocab");
        using var pipeline = await MultimodalPipeline.LoadAsync(new PipelineOptions
        {
            ModelPath = "tiny/llava-hf", Template = "llava_v1", Hub = Options(progress: new SyncProgress(reports.Add)),
            Generation = new Generation.GenerationOptions { MaxNewTokens = 12 },
        });
        var snapshot = Path.Combine(_cache, "models--tiny--llava-hf", "snapshots", commit);
        Assert.Equal(snapshot, pipeline.Folder.ModelPath);
        var result = await pipeline.CaptionAsync(ImageInput.FromFile(Path.Combine(c.Dir, "image1.png")));
        var expected = c.Prompt("main").GetProperty("generated_ids").EnumerateArray().Select(x => x.GetInt32()).ToArray();
        Assert.Equal(expected, result.TokenIds.Select(x => (int)x).ToArray());

        // The layout huggingface_hub reads: refs/main -> commit, snapshot entries as relative links into blobs/<etag>.
        Assert.Equal(commit, File.ReadAllText(Path.Combine(_cache, "models--tiny--llava-hf", "refs", "main")));
        var weights = new FileInfo(Path.Combine(snapshot, "model.safetensors"));
        var sha = FakeHub.Sha256(File.ReadAllBytes(weights.FullName));
        Assert.Equal(Path.Combine("..", "..", "blobs", sha), weights.LinkTarget);
        var config = new FileInfo(Path.Combine(snapshot, "config.json"));
        Assert.Equal(Path.Combine("..", "..", "blobs", FakeHub.GitBlobId(File.ReadAllBytes(config.FullName))), config.LinkTarget);
        Assert.Contains(reports, r => r.FileName == "model.safetensors" && r.BytesDone == r.TotalBytes);
        Assert.DoesNotContain(_hub.Log, r => r.Path.StartsWith("/cdn") && r.HadAuthorization);
    }

    [Fact]
    public async Task FilesAlreadyInTheCacheAreReusedWithoutDownloading()
    {
        // Laid out as Python leaves it: a blob, a relative link in the snapshot, and refs/main.
        var files = new Dictionary<string, byte[]> { ["config.json"] = "{\"a\":1}"u8.ToArray(), ["model.safetensors"] = Bytes(5000, 1) };
        var commit = _hub.AddRepo("py/model", files);
        var repo = Path.Combine(_cache, "models--py--model");
        Directory.CreateDirectory(Path.Combine(repo, "blobs"));
        Directory.CreateDirectory(Path.Combine(repo, "snapshots", commit));
        foreach (var (name, bytes) in files)
        {
            var etag = FakeHub.IsLfs(name) ? FakeHub.Sha256(bytes) : FakeHub.GitBlobId(bytes);
            File.WriteAllBytes(Path.Combine(repo, "blobs", etag), bytes);
            File.CreateSymbolicLink(Path.Combine(repo, "snapshots", commit, name), Path.Combine("..", "..", "blobs", etag));
        }
        using var hub = new HuggingFaceHub(Options());
        var folder = await hub.SnapshotAsync("py/model");
        Assert.Equal(Path.Combine(repo, "snapshots", commit), folder);
        Assert.DoesNotContain(_hub.Log, r => r.Path.Contains("/resolve/") || r.Path.StartsWith("/cdn"));
    }

    [Fact]
    public async Task GatedRepositoryNeedsTheTokenAndTheTokenNeverReachesTheCdn()
    {
        _hub.Token = "hf_secret";
        _hub.AddRepo("org/gated", new Dictionary<string, byte[]> { ["config.json"] = "{}"u8.ToArray(), ["model.safetensors"] = Bytes(3000, 2) }, gated: true);
        using (var anonymous = new HuggingFaceHub(Options()))
        {
            var e = await Assert.ThrowsAsync<HubAuthenticationException>(() => anonymous.SnapshotAsync("org/gated"));
            Assert.Equal(401, e.StatusCode);
            Assert.Contains("HF_TOKEN", e.Message);
            Assert.Contains("org/gated", e.Message);
        }
        using var hub = new HuggingFaceHub(Options(token: "hf_secret"));
        var folder = await hub.SnapshotAsync("org/gated");
        Assert.Equal(Bytes(3000, 2), File.ReadAllBytes(Path.Combine(folder, "model.safetensors")));
        Assert.Contains(_hub.Log, r => r.Path.Contains("/raw/") && r.HadAuthorization);   // relative redirect: same host, token kept
        Assert.Contains(_hub.Log, r => r.Path.StartsWith("/cdn/") && !r.HadAuthorization); // absolute redirect: other host, token dropped
    }

    [Fact]
    public async Task InterruptedDownloadResumesWithTheSameBytesAndHash()
    {
        var weights = Bytes(1 << 20, 3);
        _hub.AddRepo("big/model", new Dictionary<string, byte[]> { ["model.safetensors"] = weights });
        _hub.TruncateTransfers = 1000; // every try breaks off half-way
        using (var failing = new HuggingFaceHub(Options()) { MaxAttempts = 2 })
        {
            var e = await Assert.ThrowsAsync<HubException>(() => failing.SnapshotAsync("big/model"));
            Assert.Contains("run again to resume", e.Message);
        }
        var incomplete = Path.Combine(_cache, "models--big--model", "blobs", FakeHub.Sha256(weights) + ".incomplete");
        long kept = new FileInfo(incomplete).Length;
        Assert.InRange(kept, (1 << 19) + 1, (1 << 20) - 1); // half, then half of the rest: resumed once already
        Assert.False(File.Exists(Path.Combine(_cache, "models--big--model", "blobs", FakeHub.Sha256(weights))));

        _hub.TruncateTransfers = 0;
        using var hub = new HuggingFaceHub(Options());
        var folder = await hub.SnapshotAsync("big/model");
        var got = File.ReadAllBytes(Path.Combine(folder, "model.safetensors"));
        Assert.Equal(FakeHub.Sha256(weights), FakeHub.Sha256(got));
        Assert.Equal(weights, got);
        Assert.Contains(_hub.Log, r => r.Range == $"bytes={kept}-");
        Assert.False(File.Exists(incomplete));
    }

    [Fact]
    public async Task WrongHashIsRefusedAndNothingBecomesVisible()
    {
        _hub.AddRepo("bad/model", new Dictionary<string, byte[]> { ["config.json"] = "{}"u8.ToArray(), ["model.safetensors"] = Bytes(4096, 4) });
        _hub.Corrupt.Add("model.safetensors");
        using var hub = new HuggingFaceHub(Options());
        var e = await Assert.ThrowsAsync<HubIntegrityException>(() => hub.SnapshotAsync("bad/model"));
        Assert.Contains("sha256", e.Message);
        Assert.Equal("model.safetensors", e.FileName);
        var repo = Path.Combine(_cache, "models--bad--model");
        Assert.DoesNotContain(Directory.GetFiles(Path.Combine(repo, "blobs")), f => new FileInfo(f).Length == 4096);
        Assert.False(Directory.GetFiles(Path.Combine(repo, "snapshots"), "model.safetensors", SearchOption.AllDirectories).Any());
    }

    [Fact]
    public async Task OfflineModeUsesOnlyTheCache()
    {
        var commit = _hub.AddRepo("off/model", new Dictionary<string, byte[]> { ["config.json"] = "{}"u8.ToArray() });
        using (var offline = new HuggingFaceHub(Options(offline: true)))
        {
            var e = await Assert.ThrowsAsync<HubException>(() => offline.SnapshotAsync("off/model"));
            Assert.Contains("HF_HUB_OFFLINE", e.Message);
        }
        Assert.Empty(_hub.Log);
        using (var online = new HuggingFaceHub(Options())) await online.SnapshotAsync("off/model");
        int requests = _hub.Log.Count;
        using var again = new HuggingFaceHub(Options(offline: true));
        Assert.Equal(Path.Combine(_cache, "models--off--model", "snapshots", commit), await again.SnapshotAsync("off/model"));
        Assert.Equal(requests, _hub.Log.Count);
    }

    [Fact]
    public async Task OriginalLayoutModelFetchesTheTowerItsConfigNames()
    {
        var llm = FolderFiles(Fixtures.Path("oracle/llava_tiny336/model"));
        llm["config.json"] = System.Text.Encoding.UTF8.GetBytes(File.ReadAllText(Fixtures.Path("oracle/llava_tiny336/model/config.json"))
            .Replace("\"clip-vit-tiny-336\"", "\"towers/clip-vit-tiny-336\""));
        _hub.AddRepo("tiny/llava-original", llm);
        var towerCommit = _hub.AddRepo("towers/clip-vit-tiny-336", FolderFiles(Fixtures.Path("oracle/llava_tiny336/clip-vit-tiny-336")));
        var (model, tower) = await ModelSource.ResolveAsync("tiny/llava-original", null, Options(), CancellationToken.None);
        Assert.Equal(Path.Combine(_cache, "models--towers--clip-vit-tiny-336", "snapshots", towerCommit), tower);
        var folder = ModelFolder.Open(model, tower);
        Assert.Equal(ModelFolder.Open(Fixtures.Path("oracle/llava_tiny336/model")).Config.Vision, folder.Config.Vision);
    }

    [Fact]
    public async Task LocalDirDownloadIncludesOnlyMatchingFilesAndSkipsCurrentOnes()
    {
        _hub.AddRepo("dir/model", new Dictionary<string, byte[]>
        {
            ["config.json"] = "{}"u8.ToArray(), ["model.safetensors"] = Bytes(2048, 5), ["README.md"] = "hi"u8.ToArray(), ["sub/extra.json"] = "[]"u8.ToArray(),
        });
        var dir = Path.Combine(_cache, "local");
        using var hub = new HuggingFaceHub(Options());
        await hub.DownloadToFolderAsync("dir/model", dir, new[] { "*.json", "*.safetensors" });
        Assert.True(File.Exists(Path.Combine(dir, "sub", "extra.json")));
        Assert.False(File.Exists(Path.Combine(dir, "README.md")));
        Assert.Equal(Bytes(2048, 5), File.ReadAllBytes(Path.Combine(dir, "model.safetensors")));
        int before = _hub.Log.Count(r => r.Path.Contains("/resolve/"));
        await hub.DownloadToFolderAsync("dir/model", dir, new[] { "*.json", "*.safetensors" });
        Assert.Equal(before, _hub.Log.Count(r => r.Path.Contains("/resolve/")));
    }

    [Fact]
    public void EnvironmentDecidesUnsetOptionsAsHuggingFaceHubDoes()
    {
        var home = Path.Combine(_cache, "hfhome");
        Directory.CreateDirectory(home);
        File.WriteAllText(Path.Combine(home, "token"), "hf_fromfile\n");
        var env = new Dictionary<string, string> { ["HF_HOME"] = home, ["HF_ENDPOINT"] = "http://mirror.test/", ["HF_HUB_OFFLINE"] = "1" };
        var r = new HubOptions().Resolve(n => env.GetValueOrDefault(n));
        Assert.Equal("http://mirror.test", r.Endpoint);
        Assert.Equal(Path.Combine(home, "hub"), r.CacheDirectory);
        Assert.Equal("hf_fromfile", r.Token);
        Assert.True(r.Offline);
        Assert.Equal("main", r.Revision);
        env["HF_TOKEN"] = "hf_env";
        env["HF_HUB_CACHE"] = Path.Combine(home, "elsewhere");
        r = new HubOptions { Revision = "v1" }.Resolve(n => env.GetValueOrDefault(n));
        Assert.Equal("hf_env", r.Token);
        Assert.Equal(Path.Combine(home, "elsewhere"), r.CacheDirectory);
        Assert.Equal("v1", r.Revision);

        Assert.True(HuggingFaceHub.IsRepoId("Lin-Chen/ShareGPT4V-7B"));
        Assert.False(HuggingFaceHub.IsRepoId("../x"));
        Assert.False(HuggingFaceHub.IsRepoId("/models/x"));
        Assert.False(HuggingFaceHub.IsRepoId("a/b/c"));
        Assert.Equal(new[] { "config.json", "model-00001-of-00002.safetensors", "tokenizer.model" },
            HuggingFaceHub.SelectModelFiles(new[] { "README.md", "config.json", "model-00001-of-00002.safetensors", "pytorch_model.bin", "tf_model.h5", "tokenizer.model", "sub/x.json" }));
    }

    private sealed class SyncProgress(Action<HubDownloadProgress> report) : IProgress<HubDownloadProgress>
    {
        public void Report(HubDownloadProgress value) { lock (this) report(value); }
    }
}
