using ShareGPT4V.Hub;

namespace ShareGPT4V.Cli;

/// <summary><c>download</c>: a hub repository into the hub cache (shared with Python) or into a folder.</summary>
internal static class DownloadCommand
{
    public static VerbSpec Verb => new("download", "fetch a Hugging Face hub repository into the hub cache (or a folder), with its vision tower")
    {
        Details = """
        usage: sharegpt4v download REPO [--revision R] [--include GLOB]... [--local-dir DIR]

        Downloads a Hugging Face hub repository (e.g. Lin-Chen/ShareGPT4V-7B) into the hub cache that transformers and
        huggingface_hub use (files they downloaded are reused, and they reuse ours), or into a folder, and prints the
        folder on standard output. An interrupted download resumes where it stopped; every file's size and sha256 are
        checked before it becomes visible. For a ShareGPT4V / LLaVA LLM repository, the vision tower repository its
        config names (mm_vision_tower) is downloaded too, and its folder printed on a second line.

        Environment: HF_ENDPOINT (hub address), HF_TOKEN (gated or private repositories), HF_HOME / HF_HUB_CACHE (cache
        location, default ~/.cache/huggingface/hub), HF_HUB_OFFLINE=1 (cache only: print the cached folder or fail).
        """,
        Options =
        [
            new("revision", "R", "branch, tag or commit (default main)"),
            new("include", "GLOB", "only files matching GLOB (repeatable; * also crosses folders, e.g. \"*.json\")", Repeatable: true),
            new("local-dir", "DIR", "plain files in DIR instead of the cache (a tower goes beside DIR, named as its repository)"),
            OptionSpec.Flag("no-tower", "do not fetch the vision tower repository"),
        ],
        Arguments = [new("REPO", "the hub repository id (owner/name), e.g. Lin-Chen/ShareGPT4V-7B")],
        Run = RunAsync,
    };

    public static async Task<int> RunAsync(CommandLine cl, CancellationToken cancellationToken)
    {
        var repo = cl.Argument(0) ?? throw new UsageException("download needs a repository id (owner/name)");
        if (!HuggingFaceHub.IsRepoId(repo)) throw new UsageException($"'{repo}' is not a hub repository id (owner/name)");
        var include = cl.All("include");
        var localDir = cl.Value("local-dir");
        using var hub = new HuggingFaceHub(new HubOptions { Revision = cl.Value("revision"), Progress = ProgressBar() });
        var folder = localDir is null
            ? await hub.SnapshotAsync(repo, include.Count > 0 ? include.ToList() : null, null, cancellationToken)
            : await hub.DownloadToFolderAsync(repo, localDir, include.Count > 0 ? include.ToList() : null, null, cancellationToken);
        Console.Out.WriteLine(folder);
        if (!cl.Flag("no-tower") && HuggingFaceHub.VisionTowerRepoOf(folder) is { } tower)
        {
            // The tower at its default revision, model files only (a full CLIP repository also holds TF and Flax weights).
            using var towerHub = new HuggingFaceHub(new HubOptions { Progress = ProgressBar() });
            var towerFolder = localDir is null
                ? await towerHub.SnapshotAsync(tower, HuggingFaceHub.SelectModelFiles, null, cancellationToken)
                : await towerHub.DownloadToFolderAsync(tower, Path.Combine(Path.GetDirectoryName(Path.GetFullPath(localDir))!, tower.Split('/')[1]),
                    HuggingFaceHub.SelectModelFiles, null, cancellationToken);
            Console.Out.WriteLine(towerFolder);
        }
        return 0;
    }

    /// <summary>One bar per file on standard error.</summary>
    public static IProgress<HubDownloadProgress> ProgressBar()
    {
        ConsoleProgress? bar = null;
        string? current = null;
        return new SyncProgress<HubDownloadProgress>(p =>
        {
            if (p.FileName != current) { bar?.Done(); current = p.FileName; bar = new ConsoleProgress($"{p.FileName} ({p.FileIndex}/{p.FileCount})"); }
            bar!.Report(p.BytesDone, p.TotalBytes, $"{p.BytesDone / 1048576.0:F1}/{p.TotalBytes / 1048576.0:F1} MiB");
        });
    }
}
