namespace ShareGPT4V.Hub;

/// <summary>
/// Where and how Hugging Face hub repositories are fetched. Every setting left null is read from the environment
/// variables that huggingface_hub reads, so a cache shared with Python works as it is.
/// </summary>
public sealed record HubOptions
{
    /// <summary>The hub's address; null = <c>HF_ENDPOINT</c>, else https://huggingface.co.</summary>
    public string? Endpoint { get; init; }
    /// <summary>Access token for gated or private repositories; null = <c>HF_TOKEN</c>, else the token file in <c>HF_HOME</c>.</summary>
    public string? Token { get; init; }
    /// <summary>The hub cache; null = <c>HF_HUB_CACHE</c>, else <c>HF_HOME/hub</c>, else <c>~/.cache/huggingface/hub</c>.</summary>
    public string? CacheDirectory { get; init; }
    /// <summary>Use only the cache, never the network; null = <c>HF_HUB_OFFLINE</c> (1, true, yes, on).</summary>
    public bool? Offline { get; init; }
    /// <summary>Branch, tag or commit to fetch; null = <c>main</c>.</summary>
    public string? Revision { get; init; }
    /// <summary>Download progress, reported as bytes arrive (at most a few times a second per file).</summary>
    public IProgress<HubDownloadProgress>? Progress { get; init; }
    /// <summary>How long one request may go without receiving data before it is abandoned (default 60 s).</summary>
    public TimeSpan ReadTimeout { get; init; } = TimeSpan.FromSeconds(60);

    internal const string DefaultEndpoint = "https://huggingface.co";
    internal const string DefaultRevision = "main";

    /// <summary>These options with every unset value taken from <paramref name="env"/> (the process environment by default).</summary>
    internal ResolvedHubOptions Resolve(Func<string, string?>? env = null)
    {
        env ??= Environment.GetEnvironmentVariable;
        string? Env(string name) => env(name) is { Length: > 0 } v ? v : null;
        var home = Env("HF_HOME") ?? Path.Combine(
            Env("XDG_CACHE_HOME") ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache"), "huggingface");
        var token = Token;
        if (token is null)
        {
            token = Env("HF_TOKEN");
            var tokenFile = Env("HF_TOKEN_PATH") ?? Path.Combine(home, "token");
            if (token is null && File.Exists(tokenFile))
                token = File.ReadAllText(tokenFile).Trim() is { Length: > 0 } t ? t : null;
        }
        return new ResolvedHubOptions(
            (Endpoint ?? Env("HF_ENDPOINT") ?? DefaultEndpoint).TrimEnd('/'),
            token,
            Path.GetFullPath(CacheDirectory ?? Env("HF_HUB_CACHE") ?? Path.Combine(home, "hub")),
            Offline ?? IsTrue(Env("HF_HUB_OFFLINE")),
            Revision ?? DefaultRevision,
            Progress,
            ReadTimeout);
    }

    private static bool IsTrue(string? v) => v?.Trim().ToUpperInvariant() is "1" or "ON" or "YES" or "TRUE";
}

/// <summary>Settings with every default filled in.</summary>
internal sealed record ResolvedHubOptions(string Endpoint, string? Token, string CacheDirectory, bool Offline, string Revision,
    IProgress<HubDownloadProgress>? Progress, TimeSpan ReadTimeout);

/// <summary>One progress report of a hub download.</summary>
/// <param name="RepoId">The repository.</param>
/// <param name="FileName">The file being downloaded (path inside the repository).</param>
/// <param name="BytesDone">Bytes of this file on disk so far (a resumed download starts above zero).</param>
/// <param name="TotalBytes">The file's size.</param>
/// <param name="FileIndex">Which file of this request (1-based).</param>
/// <param name="FileCount">How many files this request downloads.</param>
public sealed record HubDownloadProgress(string RepoId, string FileName, long BytesDone, long TotalBytes, int FileIndex, int FileCount);
