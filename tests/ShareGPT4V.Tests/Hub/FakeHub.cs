using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;

namespace ShareGPT4V.Tests.Hub;

/// <summary>
/// A Hugging Face hub on the loopback interface, answering as the real one does for downloads: the model-info endpoint
/// with blob metadata, <c>resolve</c> answering small files through a relative redirect and LFS files through an
/// absolute redirect to another host (the "CDN", reached as localhost), Range requests, 401 for gated repositories
/// without the token. Faults on demand: transfers cut off half-way, bytes that do not match the announced hash.
/// </summary>
internal sealed class FakeHub : IDisposable
{
    private readonly HttpListener _listener = new();
    private readonly Task _loop;
    private readonly Dictionary<string, Repo> _repos = new(StringComparer.Ordinal);
    private readonly Dictionary<string, byte[]> _blobs = new(StringComparer.Ordinal);

    public sealed record Request(string Method, string Path, string? Range, bool HadAuthorization);
    public ConcurrentQueue<Request> Log { get; } = new();
    public string Endpoint { get; }
    public int Port { get; }
    public string? Token { get; set; }
    /// <summary>How many file transfers (cdn or raw) to cut off after half their bytes.</summary>
    public int TruncateTransfers;
    /// <summary>Serve these files (by path) with one byte flipped, same length.</summary>
    public HashSet<string> Corrupt { get; } = new(StringComparer.Ordinal);

    private sealed record Repo(string Commit, Dictionary<string, byte[]> Files, bool Gated);

    public FakeHub()
    {
        for (int attempt = 0; ; attempt++)
        {
            var probe = new TcpListener(IPAddress.Loopback, 0);
            probe.Start();
            Port = ((IPEndPoint)probe.LocalEndpoint).Port;
            probe.Stop();
            _listener.Prefixes.Clear();
            _listener.Prefixes.Add($"http://127.0.0.1:{Port}/");
            _listener.Prefixes.Add($"http://localhost:{Port}/");
            try { _listener.Start(); break; }
            catch (HttpListenerException) when (attempt < 5) { }
        }
        Endpoint = $"http://127.0.0.1:{Port}";
        _loop = Task.Run(LoopAsync);
    }

    /// <summary>Publishes a repository; files ending in .safetensors, .bin or .model are LFS files. Returns the commit.</summary>
    public string AddRepo(string repoId, IReadOnlyDictionary<string, byte[]> files, bool gated = false)
    {
        var commit = Convert.ToHexString(SHA1.HashData(Encoding.UTF8.GetBytes(repoId + files.Count + string.Join(",", files.Keys)))).ToLowerInvariant();
        _repos[repoId] = new Repo(commit, new Dictionary<string, byte[]>(files), gated);
        foreach (var (_, bytes) in files) _blobs[Sha256(bytes)] = bytes;
        return commit;
    }

    public static bool IsLfs(string path) => path.EndsWith(".safetensors") || path.EndsWith(".bin") || path.EndsWith(".model");
    public static string Sha256(byte[] b) => Convert.ToHexString(SHA256.HashData(b)).ToLowerInvariant();
    public static string GitBlobId(byte[] b) =>
        Convert.ToHexString(SHA1.HashData(Encoding.ASCII.GetBytes($"blob {b.Length}\0").Concat(b).ToArray())).ToLowerInvariant();

    private async Task LoopAsync()
    {
        while (_listener.IsListening)
        {
            HttpListenerContext ctx;
            try { ctx = await _listener.GetContextAsync(); }
            catch (Exception) { return; }
            _ = Task.Run(() => Handle(ctx));
        }
    }

    private void Handle(HttpListenerContext ctx)
    {
        var req = ctx.Request;
        var res = ctx.Response;
        var path = Uri.UnescapeDataString(req.Url!.AbsolutePath);
        Log.Enqueue(new Request(req.HttpMethod, path, req.Headers["Range"], req.Headers["Authorization"] is not null));
        try
        {
            var parts = path.Trim('/').Split('/');
            if (parts.Length >= 2 && parts[0] == "cdn")
            {
                // The CDN is another host: it must never see the hub token.
                if (req.Headers["Authorization"] is not null) { res.StatusCode = 400; res.Close(); return; }
                Serve(ctx, _blobs[parts[1]], null);
                return;
            }
            if (parts.Length >= 6 && parts[0] == "api" && parts[1] == "models" && parts[4] == "revision")
            {
                var repo = Find(ctx, parts[2] + "/" + parts[3]);
                if (repo is null) return;
                var rev = string.Join('/', parts.Skip(5));
                if (rev != "main" && rev != repo.Commit) { Error(res, 404, "RevisionNotFound"); return; }
                var json = JsonSerializer.Serialize(new
                {
                    id = parts[2] + "/" + parts[3],
                    sha = repo.Commit,
                    siblings = repo.Files.Select(f => IsLfs(f.Key)
                        ? (object)new { rfilename = f.Key, size = f.Value.Length, blobId = GitBlobId(f.Value), lfs = new { sha256 = Sha256(f.Value), size = f.Value.Length, pointerSize = 134 } }
                        : new { rfilename = f.Key, size = f.Value.Length, blobId = GitBlobId(f.Value) }),
                });
                var body = Encoding.UTF8.GetBytes(json);
                res.ContentType = "application/json";
                res.ContentLength64 = body.Length;
                res.OutputStream.Write(body);
                res.Close();
                return;
            }
            if (parts.Length >= 5 && (parts[2] == "resolve" || parts[2] == "raw"))
            {
                var repo = Find(ctx, parts[0] + "/" + parts[1]);
                if (repo is null) return;
                var file = string.Join('/', parts.Skip(4));
                if (!repo.Files.TryGetValue(file, out var bytes)) { Error(res, 404, "EntryNotFound"); return; }
                if (parts[2] == "resolve")
                {
                    res.StatusCode = IsLfs(file) ? 302 : 307;
                    res.Headers["X-Repo-Commit"] = repo.Commit;
                    res.RedirectLocation = IsLfs(file)
                        ? $"http://localhost:{Port}/cdn/{Sha256(bytes)}"              // absolute, another host
                        : $"/{parts[0]}/{parts[1]}/raw/{repo.Commit}/{file}";          // relative, same host
                    res.Close();
                    return;
                }
                Serve(ctx, bytes, file);
                return;
            }
            Error(res, 404, "RepoNotFound");
        }
        catch (Exception)
        {
            try { res.Abort(); } catch (Exception) { }
        }
    }

    private Repo? Find(HttpListenerContext ctx, string repoId)
    {
        if (!_repos.TryGetValue(repoId, out var repo)) { Error(ctx.Response, 401, "RepoNotFound"); return null; } // as the hub: 401 without a token
        if (repo.Gated && ctx.Request.Headers["Authorization"] != $"Bearer {Token}") { Error(ctx.Response, 401, "GatedRepo"); return null; }
        return repo;
    }

    private void Serve(HttpListenerContext ctx, byte[] bytes, string? file)
    {
        var res = ctx.Response;
        if (file is null) file = _repos.Values.SelectMany(r => r.Files).First(f => ReferenceEquals(f.Value, bytes)).Key;
        if (Corrupt.Contains(file)) { bytes = (byte[])bytes.Clone(); bytes[bytes.Length / 2] ^= 0x5A; }
        long start = 0;
        if (ctx.Request.Headers["Range"] is { } range && range.StartsWith("bytes=") && range.EndsWith("-"))
        {
            start = long.Parse(range[6..^1]);
            res.StatusCode = 206;
            res.Headers["Content-Range"] = $"bytes {start}-{bytes.Length - 1}/{bytes.Length}";
        }
        res.ContentLength64 = bytes.Length - start;
        bool truncate = Interlocked.Decrement(ref TruncateTransfers) >= 0;
        int count = (int)(bytes.Length - start);
        if (truncate)
        {
            res.OutputStream.Write(bytes, (int)start, count / 2);
            res.OutputStream.Flush();
            res.Abort(); // the connection drops with half the body sent
            return;
        }
        res.OutputStream.Write(bytes, (int)start, count);
        res.Close();
    }

    private static void Error(HttpListenerResponse res, int status, string code)
    {
        res.StatusCode = status;
        res.Headers["X-Error-Code"] = code;
        res.Close();
    }

    public void Dispose()
    {
        _listener.Stop();
        _listener.Close();
        try { _loop.Wait(TimeSpan.FromSeconds(5)); } catch (AggregateException) { }
    }
}
