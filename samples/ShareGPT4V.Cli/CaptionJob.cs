using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using ShareGPT4V.Conversation;

namespace ShareGPT4V.Cli;

/// <summary>One image of a bulk run: its position in the whole input (the merge order), its key and its prompt.</summary>
internal sealed record CaptionItem(int Index, string Image, string FilePath, string? Prompt);

/// <summary>
/// Bulk captioning as JSON lines: resumable (images already in the output are skipped; a partial last line left by a
/// killed run is dropped first), sharded (<c>--shard i/N</c> or a Kubernetes Indexed Job's environment; shard i takes
/// the items whose index is i mod N) and batched over the pipeline. Every batch's lines are written in one write and
/// flushed to disk, so a kill leaves whole lines, at most one partial last line.
/// </summary>
internal static class CaptionJob
{
    private static readonly JsonSerializerOptions LineJson = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    public const string IndexVariable = "JOB_COMPLETION_INDEX";
    public const string CountVariable = "JOB_COMPLETIONS";

    /// <summary>Reads a JSONL manifest: one object per line with <c>image</c> (a path, relative to the manifest's folder) and optional <c>prompt</c>.</summary>
    public static List<CaptionItem> ReadManifest(string path)
    {
        if (!File.Exists(path)) throw new UsageException($"The manifest '{path}' does not exist");
        var folder = Path.GetDirectoryName(Path.GetFullPath(path))!;
        var items = new List<CaptionItem>();
        int lineNo = 0;
        foreach (var line in File.ReadLines(path))
        {
            lineNo++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            JsonElement e;
            try { e = JsonDocument.Parse(line).RootElement; }
            catch (JsonException x) { throw new InvalidDataException($"{path}:{lineNo}: not a JSON object ({x.Message})"); }
            if (e.ValueKind != JsonValueKind.Object || !e.TryGetProperty("image", out var image) || image.ValueKind != JsonValueKind.String || image.GetString() is not { Length: > 0 } name)
                throw new InvalidDataException($"{path}:{lineNo}: each line needs an \"image\" string");
            string? prompt = e.TryGetProperty("prompt", out var p) && p.ValueKind == JsonValueKind.String ? p.GetString() : null;
            items.Add(new CaptionItem(items.Count, name, Path.IsPathRooted(name) ? name : Path.Combine(folder, name), prompt));
        }
        if (items.Count == 0) throw new UsageException($"The manifest '{path}' lists no images");
        return items;
    }

    /// <summary>The shard to run: <c>--shard i/N</c>, else the Indexed Job's variables, else the whole input (0/1).</summary>
    public static (int Index, int Count) Shard(string? option)
    {
        if (option is not null)
        {
            var parts = option.Split('/');
            if (parts.Length != 2 || !int.TryParse(parts[0], out int i) || !int.TryParse(parts[1], out int n) || n < 1 || i < 0 || i >= n)
                throw new UsageException($"--shard must be i/N with 0 <= i < N, got '{option}'");
            return (i, n);
        }
        var index = Environment.GetEnvironmentVariable(IndexVariable);
        if (string.IsNullOrEmpty(index)) return (0, 1);
        var count = Environment.GetEnvironmentVariable(CountVariable);
        if (!int.TryParse(index, out int ei) || !int.TryParse(count, out int en) || en < 1 || ei < 0 || ei >= en)
            throw new UsageException($"{IndexVariable}={index} and {CountVariable}={count ?? "(unset)"} do not name a shard (0 <= index < completions)");
        return (ei, en);
    }

    /// <summary>
    /// Makes <paramref name="path"/> ready to append to: drops a partial last line, and returns the images it already
    /// holds (error lines included: an image is attempted once; delete its line to try again).
    /// </summary>
    public static HashSet<string> PrepareOutput(string path, bool overwrite)
    {
        var done = new HashSet<string>(StringComparer.Ordinal);
        if (overwrite || !File.Exists(path)) { File.WriteAllBytes(path, Array.Empty<byte>()); return done; }
        using (var fs = new FileStream(path, FileMode.Open, FileAccess.ReadWrite))
        {
            long keep = LengthOfWholeLines(fs);
            if (keep < fs.Length)
            {
                Console.Error.WriteLine($"{path}: dropped a partial last line ({fs.Length - keep} bytes) left by an interrupted run");
                fs.SetLength(keep);
            }
        }
        int lineNo = 0;
        foreach (var line in File.ReadLines(path))
        {
            lineNo++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            try
            {
                using var doc = JsonDocument.Parse(line);
                if (doc.RootElement.TryGetProperty("image", out var image) && image.GetString() is { } name) done.Add(name);
            }
            catch (JsonException e) { throw new InvalidDataException($"{path}:{lineNo}: not a JSON line ({e.Message}); fix or remove it to resume"); }
        }
        return done;
    }

    /// <summary>The length of the stream up to and including its last newline.</summary>
    internal static long LengthOfWholeLines(Stream s)
    {
        var buffer = new byte[64 * 1024];
        long end = s.Length;
        while (end > 0)
        {
            int n = (int)Math.Min(buffer.Length, end);
            s.Position = end - n;
            s.ReadExactly(buffer, 0, n);
            int nl = Array.LastIndexOf(buffer, (byte)'\n', n - 1);
            if (nl >= 0) return end - n + nl + 1;
            end -= n;
        }
        return 0;
    }

    /// <summary>Captions <paramref name="items"/> in batches, writing one line per image; returns how many failed.</summary>
    public static async Task<int> RunAsync(MultimodalPipeline pipeline, IReadOnlyList<CaptionItem> items, string? defaultPrompt,
        TextWriter? console, string? outputPath, CancellationToken ct)
    {
        using var file = outputPath is null ? null : new FileStream(outputPath, FileMode.Append, FileAccess.Write, FileShare.Read);
        var bar = new ConsoleProgress("captioning");
        int done = 0, failed = 0;
        // Beam search runs one prompt at a time (its cache rows are the beams).
        foreach (var chunk in items.Chunk(pipeline.Options.Generation.IsBeamSearch ? 1 : pipeline.Options.MaxBatchSize))
        {
            ct.ThrowIfCancellationRequested();
            bar.Report(done, items.Count, $"{done}/{items.Count} images");
            var lines = new StringBuilder();
            foreach (var (item, result, error) in await CaptionChunkAsync(pipeline, chunk, defaultPrompt, ct))
            {
                if (error is not null)
                {
                    failed++;
                    Console.Error.WriteLine($"{item.Image}: {error.Message}");
                }
                var json = JsonNode.Parse(result is not null ? Shared.ToJson(result, item.Image) : Shared.ErrorJson(item.Image, error!))!.AsObject();
                var line = new JsonObject { ["index"] = item.Index };
                foreach (var (k, v) in json.ToList()) { json.Remove(k); line[k] = v; }
                lines.Append(line.ToJsonString(LineJson)).Append('\n');
            }
            if (file is not null)
            {
                // One write per batch, flushed to disk: a kill leaves whole lines (and at most one partial last line).
                file.Write(Encoding.UTF8.GetBytes(lines.ToString()));
                file.Flush(flushToDisk: true);
            }
            else
            {
                console!.Write(lines.ToString());
                console.Flush();
            }
            done += chunk.Length;
        }
        bar.Report(done, items.Count, $"{done}/{items.Count} images");
        return failed;
    }

    private static async Task<List<(CaptionItem, Generation.GenerationResult?, Exception?)>> CaptionChunkAsync(MultimodalPipeline pipeline,
        CaptionItem[] chunk, string? defaultPrompt, CancellationToken ct)
    {
        PromptRequest Request(CaptionItem i) => new(
            pipeline.BuildPrompt(new[] { new ConversationMessage(ConversationRole.User, i.Prompt ?? defaultPrompt ?? MultimodalPipeline.DefaultCaptionPrompt, 1) }),
            new[] { ImageInput.FromFile(i.FilePath) });
        try
        {
            var results = await pipeline.GenerateBatchAsync(chunk.Select(Request).ToList(), null, null, ct);
            return chunk.Select((item, k) => (item, (Generation.GenerationResult?)results[k], (Exception?)null)).ToList();
        }
        catch (ShareGPT4VException) when (chunk.Length > 1)
        {
            // One bad image fails its whole batch: run the batch one by one to report just the bad ones.
            var one = new List<(CaptionItem, Generation.GenerationResult?, Exception?)>();
            foreach (var item in chunk)
            {
                try { one.Add((item, (await pipeline.GenerateBatchAsync(new[] { Request(item) }, null, null, ct))[0], null)); }
                catch (ShareGPT4VException e) { one.Add((item, null, e)); }
            }
            return one;
        }
        catch (ShareGPT4VException e)
        {
            return new() { (chunk[0], null, e) };
        }
    }
}
