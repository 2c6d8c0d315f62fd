using System.Text.Json;

namespace ShareGPT4V.Hub;

/// <summary>
/// Turns a model reference into folders, as transformers' from_pretrained does: an existing folder is used as it is; an
/// <c>owner/name</c> that is not a folder is a hub repository, fetched into (or found in) the hub cache. An original
/// LLaVA / ShareGPT4V LLM names its CLIP tower in <c>mm_vision_tower</c>; when that is a hub id not found next to the
/// model, the tower repository is fetched too.
/// </summary>
internal static class ModelSource
{
    /// <summary>The files a model load needs: configs, tokenizer files and one weight format (safetensors when present).</summary>
    public static IReadOnlyList<string> SelectModelFiles(IReadOnlyList<string> names)
    {
        var root = names.Where(n => !n.Contains('/')).ToList();
        bool safetensors = root.Any(n => n.EndsWith(".safetensors", StringComparison.Ordinal));
        return root.Where(n =>
            n.EndsWith(".json", StringComparison.Ordinal)
            || n is "tokenizer.model"
            || (safetensors ? n.EndsWith(".safetensors", StringComparison.Ordinal)
                            : n.EndsWith(".bin", StringComparison.Ordinal) && n.StartsWith("pytorch_model", StringComparison.Ordinal)))
            .ToList();
    }

    public static async Task<(string ModelPath, string? VisionTowerPath)> ResolveAsync(string modelPath, string? visionTowerPath,
        HubOptions? hubOptions, CancellationToken cancellationToken)
    {
        HuggingFaceHub? hub = null;
        try
        {
            var model = await ResolveOneAsync(modelPath, "ModelPath", () => hub ??= new HuggingFaceHub(hubOptions), cancellationToken).ConfigureAwait(false);
            string? tower = visionTowerPath is null ? null
                : await ResolveOneAsync(visionTowerPath, "VisionTowerPath", () => hub ??= new HuggingFaceHub(hubOptions), cancellationToken).ConfigureAwait(false);
            if (tower is null && TowerToFetch(model) is { } towerId)
                tower = await FetchAsync(() => hub ??= new HuggingFaceHub(hubOptions), towerId, "mm_vision_tower", cancellationToken).ConfigureAwait(false);
            return (model, tower);
        }
        finally
        {
            hub?.Dispose();
        }
    }

    private static async Task<string> ResolveOneAsync(string path, string option, Func<HuggingFaceHub> hub, CancellationToken cancellationToken)
    {
        if (Directory.Exists(path) || !HuggingFaceHub.IsRepoId(path)) return path; // a missing folder is reported by the loader
        return await FetchAsync(hub, path, option, cancellationToken).ConfigureAwait(false);
    }

    private static async Task<string> FetchAsync(Func<HuggingFaceHub> hub, string repoId, string option, CancellationToken cancellationToken)
    {
        try
        {
            return await hub().SnapshotAsync(repoId, SelectModelFiles, null, cancellationToken).ConfigureAwait(false);
        }
        catch (HubException e)
        {
            throw new HubException($"{option} '{repoId}' is not a local folder, and fetching it from the hub failed: {e.Message}", repoId, e.FileName, e.StatusCode, e);
        }
    }

    /// <summary>
    /// The hub id of the tower an original-layout config names, when it is a hub id and no folder of that name exists
    /// beside the model (where the loader looks first); otherwise null and the loader resolves the tower itself.
    /// </summary>
    internal static string? TowerToFetch(string modelDir)
    {
        var config = Path.Combine(modelDir, "config.json");
        if (!File.Exists(config) || new FileInfo(config).Length > 16 << 20) return null;
        string? tower;
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(config));
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object || root.TryGetProperty("text_config", out _) || root.TryGetProperty("vision_config", out _))
                return null; // llava-hf: the tower is inside the model
            tower = root.TryGetProperty("mm_vision_tower", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()
                  : root.TryGetProperty("vision_tower", out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;
        }
        catch (JsonException)
        {
            return null; // the loader reports a broken config with its own message
        }
        if (!HuggingFaceHub.IsRepoId(tower)) return null;
        var parent = Path.GetDirectoryName(Path.GetFullPath(modelDir)) ?? modelDir;
        if (Directory.Exists(Path.Combine(parent, tower!)) || Directory.Exists(Path.Combine(parent, tower!.Split('/')[1]))) return null;
        return tower;
    }
}
