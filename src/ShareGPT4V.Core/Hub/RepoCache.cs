namespace ShareGPT4V.Hub;

/// <summary>
/// One repository's folder in the hub cache, laid out as huggingface_hub lays it out so both share it:
/// <c>models--owner--name/{blobs/&lt;etag&gt;, snapshots/&lt;commit&gt;/&lt;path&gt;, refs/&lt;revision&gt;}</c> and lock files in
/// <c>.locks/models--owner--name/&lt;etag&gt;.lock</c>.
/// </summary>
internal sealed class RepoCache
{
    private readonly string _cacheRoot;

    public RepoCache(string cacheRoot, string repoId)
    {
        _cacheRoot = cacheRoot;
        FolderName = "models--" + repoId.Replace("/", "--", StringComparison.Ordinal);
        RepoFolder = Path.Combine(cacheRoot, FolderName);
    }

    public string FolderName { get; }
    public string RepoFolder { get; }

    public string BlobPath(string etag) => Path.Combine(RepoFolder, "blobs", etag);
    public string SnapshotFolder(string commit) => Path.Combine(RepoFolder, "snapshots", commit);
    private string RefPath(string revision) => Path.Combine(new[] { RepoFolder, "refs" }.Concat(revision.Split('/')).ToArray());

    /// <summary>The snapshot a revision (branch, tag or commit) points at in the cache, or null.</summary>
    public string? CachedSnapshot(string revision)
    {
        if (HuggingFaceHub.IsHex(revision, 40) && Directory.Exists(SnapshotFolder(revision))) return SnapshotFolder(revision);
        if (!IsSafeRevision(revision)) return null;
        var refFile = RefPath(revision);
        if (!File.Exists(refFile)) return null;
        var commit = File.ReadAllText(refFile).Trim();
        return HuggingFaceHub.IsHex(commit, 40) && Directory.Exists(SnapshotFolder(commit)) ? SnapshotFolder(commit) : null;
    }

    /// <summary>Records which commit a branch or tag points at (refs/pr/1 nests, as in huggingface_hub).</summary>
    public void WriteRef(string revision, string commit)
    {
        if (!IsSafeRevision(revision)) return;
        var path = RefPath(revision);
        if (File.Exists(path) && File.ReadAllText(path).Trim() == commit) return;
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        WriteAtomically(path, commit);
    }

    private static bool IsSafeRevision(string revision) => HuggingFaceHub.IsSafeRelativePath(revision);

    /// <summary>An exclusive lock per blob, so two processes (ours or Python's) never write the same blob at once.</summary>
    public async Task<IDisposable> LockAsync(string etag, CancellationToken cancellationToken)
    {
        var dir = Path.Combine(_cacheRoot, ".locks", FolderName);
        Directory.CreateDirectory(dir);
        var path = Path.Combine(dir, etag + ".lock");
        while (true)
        {
            try { return new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None); }
            catch (IOException) { await Task.Delay(500, cancellationToken).ConfigureAwait(false); }
        }
    }

    /// <summary>
    /// Makes <paramref name="target"/> (a snapshot entry) point at <paramref name="blob"/> with a relative link, as
    /// huggingface_hub does; where links cannot be made (Windows without the privilege), the blob is copied.
    /// </summary>
    public static void Link(string target, string blob)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(target)!);
        if (File.Exists(target) || new FileInfo(target).LinkTarget is not null) File.Delete(target); // a dangling link
        var relative = Path.GetRelativePath(Path.GetDirectoryName(target)!, blob);
        try
        {
            File.CreateSymbolicLink(target, relative);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or PlatformNotSupportedException)
        {
            var tmp = target + ".tmp" + Environment.ProcessId;
            File.Copy(blob, tmp, overwrite: true);
            File.Move(tmp, target, overwrite: true);
        }
    }

    /// <summary>Writes a small file through a temporary one and a rename, so readers never see half of it.</summary>
    public static void WriteAtomically(string path, string text)
    {
        var tmp = path + ".tmp" + Environment.ProcessId;
        File.WriteAllText(tmp, text);
        File.Move(tmp, path, overwrite: true);
    }
}
