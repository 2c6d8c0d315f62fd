using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace ShareGPT4V.Hub;

/// <summary>
/// Downloads model repositories from the Hugging Face hub into the hub cache that huggingface_hub (and so transformers)
/// uses: <c>models--owner--name/blobs/&lt;etag&gt;</c>, <c>snapshots/&lt;commit&gt;/&lt;file&gt;</c> (relative links to the
/// blobs) and <c>refs/&lt;revision&gt;</c>. Files Python downloaded are reused, and Python reuses ours. A download goes to
/// <c>blobs/&lt;etag&gt;.incomplete</c>, resumes from there after an interruption, and becomes visible only after its size
/// and hash (sha256 for LFS files, the git blob id for others) match what the hub announced.
/// </summary>
public sealed partial class HuggingFaceHub : IDisposable
{
    private const int MaxRedirects = 10;
    private const int CopyBufferBytes = 1 << 20;
    private readonly ResolvedHubOptions _o;
    private readonly HttpClient _http;

    /// <summary>Creates a client; unset options come from the environment (HF_ENDPOINT, HF_TOKEN, HF_HOME, HF_HUB_OFFLINE ...).</summary>
    public HuggingFaceHub(HubOptions? options = null) : this((options ?? new HubOptions()).Resolve()) { }

    internal HuggingFaceHub(ResolvedHubOptions options)
    {
        _o = options;
        // Redirects are followed by hand: the token goes only to the hub itself, never to the CDN it redirects to.
        var handler = new SocketsHttpHandler { AllowAutoRedirect = false, ConnectTimeout = TimeSpan.FromSeconds(30) };
        _http = new HttpClient(handler) { Timeout = Timeout.InfiniteTimeSpan };
        _http.DefaultRequestHeaders.UserAgent.Add(new ProductInfoHeaderValue("sharegpt4v-dotnet", typeof(HuggingFaceHub).Assembly.GetName().Version?.ToString(3) ?? "0"));
    }

    /// <summary>The hub cache folder in use.</summary>
    public string CacheDirectory => _o.CacheDirectory;
    /// <summary>Whether only the cache is used.</summary>
    public bool Offline => _o.Offline;
    /// <summary>The revision fetched when a call names none.</summary>
    public string DefaultRevision => _o.Revision;
    /// <summary>Tries per file when a transfer breaks off; each try resumes where the last one stopped.</summary>
    internal int MaxAttempts { get; init; } = 5;

    /// <summary>
    /// Whether <paramref name="value"/> has the form of a hub repository id (<c>owner/name</c>). A string that is an existing
    /// folder is a folder, whatever its form; callers check that first.
    /// </summary>
    public static bool IsRepoId(string? value) => value is not null && RepoIdPattern().IsMatch(value) && !value.Contains("..", StringComparison.Ordinal);

    [GeneratedRegex(@"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}$")]
    private static partial Regex RepoIdPattern();

    /// <summary>
    /// Makes the files of <paramref name="repoId"/> at a revision present in the cache and returns the snapshot folder
    /// (<c>.../snapshots/&lt;commit&gt;</c>). <paramref name="include"/> (glob patterns as huggingface_hub's
    /// <c>allow_patterns</c>, <c>*</c> also crossing <c>/</c>) limits the files; null takes every file.
    /// </summary>
    // RS0026: the two overloads differ in the type of their file filter (patterns or a function), never by arity.
#pragma warning disable RS0026
    public Task<string> SnapshotAsync(string repoId, IReadOnlyList<string>? include = null, string? revision = null,
        CancellationToken cancellationToken = default) =>
        SnapshotAsync(repoId, names => include is { Count: > 0 } ? names.Where(n => Glob.MatchesAny(include, n)).ToList() : names,
            revision, cancellationToken);

    /// <summary>
    /// As <see cref="SnapshotAsync(string, IReadOnlyList{string}?, string?, CancellationToken)"/>, with the files chosen by
    /// <paramref name="select"/> from the repository's file list (e.g. <see cref="SelectModelFiles"/>).
    /// </summary>
    public async Task<string> SnapshotAsync(string repoId, Func<IReadOnlyList<string>, IReadOnlyList<string>> select, string? revision = null,
        CancellationToken cancellationToken = default)
#pragma warning restore RS0026
    {
        CheckRepoId(repoId);
        revision ??= _o.Revision;
        var cache = new RepoCache(_o.CacheDirectory, repoId);
        if (_o.Offline)
            return cache.CachedSnapshot(revision)
                ?? throw new HubException($"Revision '{revision}' is not in the hub cache ({cache.RepoFolder}) and offline mode is on (HF_HUB_OFFLINE); download it first without HF_HUB_OFFLINE", repoId);

        RepoInfo info;
        try
        {
            info = await GetRepoInfoAsync(repoId, revision, cancellationToken).ConfigureAwait(false);
        }
        catch (HttpRequestException e) when (cache.CachedSnapshot(revision) is { } cached)
        {
            _ = e; // unreachable hub, but this revision was fetched before: use the cache, as huggingface_hub does
            return cached;
        }
        catch (HttpRequestException e)
        {
            throw new HubException($"Could not reach the hub at {_o.Endpoint} ({e.Message}) and revision '{revision}' is not in the cache ({cache.RepoFolder})", repoId, inner: e);
        }
        var wanted = select(info.Files.Select(f => f.Path).ToList()).ToHashSet(StringComparer.Ordinal);
        var files = info.Files.Where(f => wanted.Contains(f.Path)).ToList();
        var snapshot = cache.SnapshotFolder(info.Commit);
        Directory.CreateDirectory(snapshot);
        if (!string.Equals(revision, info.Commit, StringComparison.Ordinal)) cache.WriteRef(revision, info.Commit);
        for (int i = 0; i < files.Count; i++)
        {
            var f = files[i];
            var target = Path.Combine(snapshot, f.Path);
            if (File.Exists(target)) continue; // present already (ours or Python's): the snapshot is immutable
            var blob = cache.BlobPath(f.Etag);
            if (!(File.Exists(blob) && new FileInfo(blob).Length == f.Size))
            {
                Directory.CreateDirectory(Path.GetDirectoryName(blob)!);
                using var lease = await cache.LockAsync(f.Etag, cancellationToken).ConfigureAwait(false);
                if (!(File.Exists(blob) && new FileInfo(blob).Length == f.Size))
                    await FetchAsync(repoId, f, ResolveUrl(repoId, info.Commit, f.Path), blob + ".incomplete", blob, i + 1, files.Count, cancellationToken).ConfigureAwait(false);
            }
            RepoCache.Link(target, blob);
        }
        return snapshot;
    }

    /// <summary>
    /// Downloads the files of <paramref name="repoId"/> into <paramref name="localDir"/> as plain files (not through the
    /// cache), keeping each file's commit and etag in <c>.cache/huggingface/download/</c> so a second run skips what is
    /// current and resumes what is partial. Returns the folder.
    /// </summary>
#pragma warning disable RS0026 // as SnapshotAsync: the overloads differ in the type of the file filter
    public Task<string> DownloadToFolderAsync(string repoId, string localDir, IReadOnlyList<string>? include = null,
        string? revision = null, CancellationToken cancellationToken = default) =>
        DownloadToFolderAsync(repoId, localDir, names => include is { Count: > 0 } ? names.Where(n => Glob.MatchesAny(include, n)).ToList() : names,
            revision, cancellationToken);

    /// <summary>As <see cref="DownloadToFolderAsync(string, string, IReadOnlyList{string}?, string?, CancellationToken)"/>, with the files chosen by <paramref name="select"/>.</summary>
    public async Task<string> DownloadToFolderAsync(string repoId, string localDir, Func<IReadOnlyList<string>, IReadOnlyList<string>> select,
        string? revision = null, CancellationToken cancellationToken = default)
#pragma warning restore RS0026
    {
        CheckRepoId(repoId);
        revision ??= _o.Revision;
        var dir = Path.GetFullPath(localDir);
        if (_o.Offline)
            return Directory.Exists(dir) ? dir : throw new HubException($"Folder '{dir}' does not exist and offline mode is on (HF_HUB_OFFLINE)", repoId);
        var info = await GetRepoInfoAsync(repoId, revision, cancellationToken).ConfigureAwait(false);
        var chosen = select(info.Files.Select(f => f.Path).ToList()).ToHashSet(StringComparer.Ordinal);
        var files = info.Files.Where(f => chosen.Contains(f.Path)).ToList();
        var meta = Path.Combine(dir, ".cache", "huggingface", "download");
        for (int i = 0; i < files.Count; i++)
        {
            var f = files[i];
            var target = Path.Combine(dir, f.Path);
            var metaFile = Path.Combine(meta, f.Path + ".metadata");
            if (File.Exists(target) && new FileInfo(target).Length == f.Size && File.Exists(metaFile)
                && File.ReadLines(metaFile).Skip(1).FirstOrDefault() == f.Etag)
                continue;
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            Directory.CreateDirectory(Path.GetDirectoryName(metaFile)!);
            await FetchAsync(repoId, f, ResolveUrl(repoId, info.Commit, f.Path), Path.Combine(meta, f.Path + "." + f.Etag + ".incomplete"), target,
                i + 1, files.Count, cancellationToken).ConfigureAwait(false);
            RepoCache.WriteAtomically(metaFile, $"{info.Commit}\n{f.Etag}\n{DateTimeOffset.UtcNow.ToUnixTimeSeconds()}\n");
        }
        return dir;
    }

    /// <summary>
    /// The files a model load needs out of a repository's file list: configs, tokenizer files and one weight format
    /// (safetensors when the repository has them, else PyTorch .bin), at the repository's top level.
    /// </summary>
    public static IReadOnlyList<string> SelectModelFiles(IReadOnlyList<string> fileNames) => ModelSource.SelectModelFiles(fileNames);

    /// <summary>
    /// The hub id of the CLIP tower that an original LLaVA / ShareGPT4V model folder names in <c>mm_vision_tower</c>, when
    /// it is a hub id and no folder of that name lies beside the model; otherwise null.
    /// </summary>
    public static string? VisionTowerRepoOf(string modelFolder) => ModelSource.TowerToFetch(modelFolder);

    /// <summary>
    /// Resolves a model reference as <see cref="MultimodalPipeline.Load"/> does: folders stay folders; hub ids are fetched
    /// (model files only) into the cache, and so is the CLIP tower repository an original-layout config names when no
    /// folder of that name lies beside the model. Returns the local model folder and tower folder (null: found by the loader).
    /// </summary>
    public static async Task<(string ModelPath, string? VisionTowerPath)> ResolveModelAsync(string modelPath, string? visionTowerPath = null,
        HubOptions? options = null, CancellationToken cancellationToken = default) =>
        await ModelSource.ResolveAsync(modelPath, visionTowerPath, options, cancellationToken).ConfigureAwait(false);

    private static void CheckRepoId(string repoId)
    {
        if (!IsRepoId(repoId))
            throw new ArgumentException($"'{repoId}' is not a hub repository id (owner/name)", nameof(repoId));
    }

    private string ResolveUrl(string repoId, string commit, string file) =>
        $"{_o.Endpoint}/{repoId}/resolve/{commit}/{string.Join('/', file.Split('/').Select(Uri.EscapeDataString))}";

    // ---------------------------------------------------------------- repository listing

    internal sealed record RemoteFile(string Path, long Size, string Etag, bool IsLfs);
    internal sealed record RepoInfo(string Commit, IReadOnlyList<RemoteFile> Files);

    /// <summary>The model-info endpoint with blob metadata: the commit a revision points at, and every file's size and etag.</summary>
    internal async Task<RepoInfo> GetRepoInfoAsync(string repoId, string revision, CancellationToken cancellationToken)
    {
        var url = $"{_o.Endpoint}/api/models/{repoId}/revision/{Uri.EscapeDataString(revision)}?blobs=true";
        using var response = await SendAsync(url, null, repoId, null, cancellationToken).ConfigureAwait(false);
        const int MaxListingBytes = 64 << 20;
        if (response.Content.Headers.ContentLength is > MaxListingBytes)
            throw new HubException("The hub's repository listing is larger than 64 MiB", repoId);
        using var listing = new MemoryStream();
        await using (var stream = await response.Content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false))
        {
            var chunk = new byte[81920];
            int n;
            while ((n = await stream.ReadAsync(chunk, cancellationToken).ConfigureAwait(false)) > 0)
            {
                if (listing.Length + n > MaxListingBytes) throw new HubException("The hub's repository listing is larger than 64 MiB", repoId);
                listing.Write(chunk, 0, n);
            }
        }
        var body = listing.ToArray();
        try
        {
            using var doc = JsonDocument.Parse(body);
            var root = doc.RootElement;
            var commit = root.GetProperty("sha").GetString() ?? "";
            if (!IsHex(commit, 40))
                throw new HubException($"The hub answered commit '{commit}' for revision '{revision}', not a 40-digit hash", repoId);
            var files = new List<RemoteFile>();
            foreach (var s in root.GetProperty("siblings").EnumerateArray())
            {
                var name = s.GetProperty("rfilename").GetString() ?? "";
                if (!IsSafeRelativePath(name))
                    throw new HubException($"The hub listed a file name that is not a plain relative path: '{name}'", repoId);
                bool lfs = s.TryGetProperty("lfs", out var l) && l.ValueKind == JsonValueKind.Object;
                var etag = lfs ? l.GetProperty("sha256").GetString() : s.TryGetProperty("blobId", out var b) ? b.GetString() : null;
                long size = lfs ? l.GetProperty("size").GetInt64() : s.TryGetProperty("size", out var z) ? z.GetInt64() : -1;
                if (etag is null || size < 0 || !(IsHex(etag, 64) || IsHex(etag, 40)))
                    throw new HubException($"The hub gave no usable size and hash for '{name}'", repoId, name);
                files.Add(new RemoteFile(name, size, etag.ToLowerInvariant(), lfs));
            }
            return new RepoInfo(commit.ToLowerInvariant(), files);
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
        {
            throw new HubException($"The hub's repository listing could not be read: {e.Message}", repoId, inner: e);
        }
    }

    // ---------------------------------------------------------------- transfers

    /// <summary>
    /// Brings <paramref name="final"/> into existence from <paramref name="url"/>: appends to <paramref name="incomplete"/>
    /// (resuming with a Range request), retries a broken transfer, checks size and hash, then renames.
    /// </summary>
    private async Task FetchAsync(string repoId, RemoteFile f, string url, string incomplete, string final, int index, int count,
        CancellationToken cancellationToken)
    {
        for (int attempt = 1; ; attempt++)
        {
            long have = File.Exists(incomplete) ? new FileInfo(incomplete).Length : 0;
            if (have > f.Size) { File.Delete(incomplete); have = 0; }
            try
            {
                if (have < f.Size) await TransferAsync(repoId, f, url, incomplete, have, index, count, cancellationToken).ConfigureAwait(false);
                break;
            }
            catch (Exception e) when (attempt < MaxAttempts && !cancellationToken.IsCancellationRequested
                                      && e is IOException or HttpRequestException or TimeoutException)
            {
                await Task.Delay(TimeSpan.FromMilliseconds(200 * attempt), cancellationToken).ConfigureAwait(false);
            }
            catch (Exception e) when (!cancellationToken.IsCancellationRequested && e is IOException or HttpRequestException or TimeoutException)
            {
                long now = File.Exists(incomplete) ? new FileInfo(incomplete).Length : 0;
                throw new HubException($"The transfer broke off after {attempt} tries ({now} of {f.Size} bytes kept in '{incomplete}'; run again to resume): {e.Message}",
                    repoId, f.Path, inner: e);
            }
        }
        var length = new FileInfo(incomplete).Length;
        if (length != f.Size)
            throw new HubIntegrityException($"Downloaded {length} bytes but the hub announced {f.Size}", repoId, f.Path);
        var actual = await HashFileAsync(incomplete, f, cancellationToken).ConfigureAwait(false);
        if (actual != f.Etag)
        {
            File.Delete(incomplete); // a wrong file must not be resumed either
            throw new HubIntegrityException($"The downloaded file's {(f.Etag.Length == 64 ? "sha256" : "git blob id")} is {actual}, not the announced {f.Etag}; it was discarded", repoId, f.Path);
        }
        File.Move(incomplete, final, overwrite: true);
    }

    private async Task TransferAsync(string repoId, RemoteFile f, string url, string incomplete, long have, int index, int count,
        CancellationToken cancellationToken)
    {
        using var response = await SendAsync(url, have > 0 ? new RangeHeaderValue(have, null) : null, repoId, f.Path, cancellationToken).ConfigureAwait(false);
        if (have > 0 && response.StatusCode != HttpStatusCode.PartialContent) have = 0; // the server sent the whole file
        await using var output = new FileStream(incomplete, have > 0 ? FileMode.Append : FileMode.Create, FileAccess.Write, FileShare.Read, 1 << 16, useAsync: true);
        await using var input = await response.Content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false);
        var buffer = new byte[CopyBufferBytes];
        var sw = Stopwatch.StartNew();
        long done = have, lastReport = -1;
        _o.Progress?.Report(new HubDownloadProgress(repoId, f.Path, done, f.Size, index, count));
        using var stall = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        while (true)
        {
            stall.CancelAfter(_o.ReadTimeout);
            int n;
            try { n = await input.ReadAsync(buffer, stall.Token).ConfigureAwait(false); }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
                throw new TimeoutException($"No data for {_o.ReadTimeout.TotalSeconds:F0} s");
            }
            if (n == 0) break;
            if (done + n > f.Size) throw new IOException($"The server sent more than the announced {f.Size} bytes");
            await output.WriteAsync(buffer.AsMemory(0, n), cancellationToken).ConfigureAwait(false);
            done += n;
            if (sw.ElapsedMilliseconds - lastReport >= 200) { lastReport = sw.ElapsedMilliseconds; _o.Progress?.Report(new HubDownloadProgress(repoId, f.Path, done, f.Size, index, count)); }
        }
        await output.FlushAsync(cancellationToken).ConfigureAwait(false);
        _o.Progress?.Report(new HubDownloadProgress(repoId, f.Path, done, f.Size, index, count));
        if (done != f.Size) throw new IOException($"The transfer ended after {done} of {f.Size} bytes");
    }

    /// <summary>sha256 for LFS files; for the others the git blob id (sha1 of "blob &lt;size&gt;\0" + content), which the hub uses as their etag.</summary>
    private static async Task<string> HashFileAsync(string path, RemoteFile f, CancellationToken cancellationToken)
    {
        using var hash = IncrementalHash.CreateHash(f.Etag.Length == 64 ? HashAlgorithmName.SHA256 : HashAlgorithmName.SHA1);
        if (f.Etag.Length != 64) hash.AppendData(Encoding.ASCII.GetBytes($"blob {f.Size}\0"));
        await using var s = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, useAsync: true);
        var buffer = new byte[CopyBufferBytes];
        int n;
        while ((n = await s.ReadAsync(buffer, cancellationToken).ConfigureAwait(false)) > 0) hash.AppendData(buffer, 0, n);
        return Convert.ToHexString(hash.GetHashAndReset()).ToLowerInvariant();
    }

    /// <summary>
    /// GET with redirects followed by hand (the token is sent only to the hub's own host) and the hub's errors turned into
    /// <see cref="HubException"/>s.
    /// </summary>
    private async Task<HttpResponseMessage> SendAsync(string url, RangeHeaderValue? range, string repoId, string? file, CancellationToken cancellationToken)
    {
        var hubHost = new Uri(_o.Endpoint);
        var uri = new Uri(url);
        for (int hop = 0; ; hop++)
        {
            using var request = new HttpRequestMessage(HttpMethod.Get, uri);
            request.Headers.Range = range;
            request.Headers.AcceptEncoding.Add(new StringWithQualityHeaderValue("identity")); // sizes and ranges are of the stored bytes
            if (_o.Token is { } token && Uri.Compare(uri, hubHost, UriComponents.SchemeAndServer, UriFormat.Unescaped, StringComparison.OrdinalIgnoreCase) == 0)
                request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
            var response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancellationToken).ConfigureAwait(false);
            int status = (int)response.StatusCode;
            if (status is >= 300 and < 400 && response.Headers.Location is { } location)
            {
                response.Dispose();
                if (hop >= MaxRedirects) throw new HubException($"More than {MaxRedirects} redirects", repoId, file);
                uri = location.IsAbsoluteUri ? location : new Uri(uri, location);
                continue;
            }
            if (response.IsSuccessStatusCode) return response;
            var code = response.Headers.TryGetValues("X-Error-Code", out var codes) ? codes.FirstOrDefault() : null;
            var text = response.Headers.TryGetValues("X-Error-Message", out var msgs) ? msgs.FirstOrDefault() : null;
            response.Dispose();
            throw status switch
            {
                401 or 403 => new HubAuthenticationException(
                    (_o.Token is null
                        ? "The hub refused access without a token: the repository is gated or private (or does not exist); set HF_TOKEN to a token that has access"
                        : "The hub refused access with the token given (HF_TOKEN): request access to the gated repository or use a token that has it")
                    + (code is null ? "" : $" [{code}]"), repoId, file, status),
                404 => new HubException((code switch
                {
                    "RevisionNotFound" => "Revision not found",
                    "EntryNotFound" => "File not found in the repository",
                    "RepoNotFound" => "Repository not found",
                    _ => "Not found on the hub",
                }) + (text is null ? "" : $": {text}"), repoId, file, status),
                _ => new HubException($"The hub answered {status} {response.ReasonPhrase}" + (text is null ? "" : $": {text}"), repoId, file, status),
            };
        }
    }

    internal static bool IsHex(string s, int length) => s.Length == length && s.All(Uri.IsHexDigit);

    internal static bool IsSafeRelativePath(string name) =>
        name.Length is > 0 and < 1024 && !name.Contains('\\') && !name.Contains('\0') && !Path.IsPathRooted(name) && !name.StartsWith('/')
        && name.Split('/').All(part => part.Length > 0 && part != "." && part != "..");

    /// <summary>Releases the HTTP connections.</summary>
    public void Dispose() => _http.Dispose();
}
