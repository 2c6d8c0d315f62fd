using System.Text.Json;

namespace ShareGPT4V.Training;

/// <summary>A dataset record, its images or its conversation cannot be used. The message names the record.</summary>
public sealed class TrainingDataException : ShareGPT4VException
{
    /// <summary>The id of the record at fault (its position when it has no id), or null for a file-level problem.</summary>
    public string? RecordId { get; }

    /// <summary>Creates the error for record <paramref name="recordId"/>.</summary>
    public TrainingDataException(string message, string? recordId = null, Exception? inner = null)
        : base(recordId is null ? message : $"Record '{recordId}': {message}", inner) => RecordId = recordId;
}

/// <summary>One turn of a LLaVA-format conversation: <c>from</c> is <c>human</c> or <c>gpt</c>.</summary>
/// <param name="From">Who speaks (<c>human</c> / <c>gpt</c>).</param>
/// <param name="Value">What is said; <c>&lt;image&gt;</c> marks an image.</param>
internal sealed record ConversationTurn(string From, string Value);

/// <summary>
/// One record of a LLaVA / ShareGPT4V training file: <c>{"id", "image"?, "conversations": [{"from", "value"}]}</c>.
/// <c>image</c> may be one path or a list (several images, one <c>&lt;image&gt;</c> each); records without it are text-only.
/// </summary>
/// <param name="Id">The record's id (its index in the file when it has none).</param>
/// <param name="Images">Image paths relative to the image folder, in order.</param>
/// <param name="Conversations">The turns.</param>
internal sealed record TrainingRecord(string Id, IReadOnlyList<string> Images, IReadOnlyList<ConversationTurn> Conversations)
{
    /// <summary>
    /// The record's <c>patch_labels</c>: one label image per image (same order and size, 8-bit class ids, 0 =
    /// background), read only by the auxiliary patch loss (<see cref="TrainerOptions.AuxPatchLossWeight"/>). Empty when absent.
    /// </summary>
    public IReadOnlyList<string> PatchLabels { get; init; } = Array.Empty<string>();
}

/// <summary>Reads LLaVA-format training files: a JSON array of records, or JSON lines (one record per line).</summary>
internal static class TrainingDataFile
{
    /// <summary>Largest data file read (2 GiB: ShareGPT4V's 1.2M-caption file is about 1.3 GB).</summary>
    public const long MaxFileBytes = 2L << 30;

    /// <summary>
    /// Reads every record of <paramref name="path"/>. A record that is not an object with a conversation list is
    /// reported through <paramref name="onBadRecord"/> (then skipped) or, when that is null, fails the read.
    /// </summary>
    /// <exception cref="TrainingDataException">The file is not JSON / JSON lines, or a record is malformed and no handler is given.</exception>
    public static IReadOnlyList<TrainingRecord> Read(string path, Action<TrainingDataException>? onBadRecord = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (!File.Exists(path)) throw new TrainingDataException($"Data file '{path}' not found");
        var length = new FileInfo(path).Length;
        if (length > MaxFileBytes) throw new TrainingDataException($"Data file '{path}' is {length} bytes, over the {MaxFileBytes} byte limit");
        var bytes = File.ReadAllBytes(path);
        int first = 0;
        if (bytes.Length >= 3 && bytes[0] == 0xEF && bytes[1] == 0xBB && bytes[2] == 0xBF) first = 3;
        while (first < bytes.Length && bytes[first] is (byte)' ' or (byte)'\t' or (byte)'\r' or (byte)'\n') first++;
        var records = new List<TrainingRecord>();
        var options = new JsonDocumentOptions { MaxDepth = 64 };
        if (first < bytes.Length && bytes[first] == (byte)'[')
        {
            JsonDocument doc;
            try { doc = JsonDocument.Parse(bytes.AsMemory(first), options); }
            catch (JsonException e) { throw new TrainingDataException($"Data file '{path}' is not valid JSON: {e.Message}", null, e); }
            using (doc)
            {
                int i = 0;
                foreach (var e in doc.RootElement.EnumerateArray())
                    Add(e, i++);
            }
        }
        else
        {
            int line = 0, index = 0;
            foreach (var text in File.ReadLines(path))
            {
                line++;
                if (string.IsNullOrWhiteSpace(text)) continue;
                try
                {
                    using var doc = JsonDocument.Parse(text, options);
                    Add(doc.RootElement, index++);
                }
                catch (JsonException e)
                {
                    Report(new TrainingDataException($"line {line} of '{path}' is not valid JSON: {e.Message}", $"#{index++}", e));
                }
            }
        }
        return records;

        void Add(JsonElement e, int index)
        {
            try { records.Add(Parse(e, index)); }
            catch (TrainingDataException ex) { Report(ex); }
        }

        void Report(TrainingDataException e)
        {
            if (onBadRecord is null) throw e;
            onBadRecord(e);
        }
    }

    /// <summary>One record from its JSON object; <paramref name="index"/> names it when it has no id.</summary>
    public static TrainingRecord Parse(JsonElement e, int index)
    {
        string id = $"#{index}";
        if (e.ValueKind != JsonValueKind.Object) throw new TrainingDataException("is not a JSON object", id);
        if (e.TryGetProperty("id", out var idEl))
            id = idEl.ValueKind == JsonValueKind.String ? idEl.GetString()! : idEl.GetRawText();
        var images = Paths(e, "image", id);
        if (!e.TryGetProperty("conversations", out var conv) || conv.ValueKind != JsonValueKind.Array)
            throw new TrainingDataException("has no 'conversations' list", id);
        var turns = new List<ConversationTurn>();
        foreach (var t in conv.EnumerateArray())
        {
            if (t.ValueKind != JsonValueKind.Object || !t.TryGetProperty("from", out var f) || f.ValueKind != JsonValueKind.String
                || !t.TryGetProperty("value", out var v) || v.ValueKind != JsonValueKind.String)
                throw new TrainingDataException("a conversation turn is not {\"from\": string, \"value\": string}", id);
            turns.Add(new ConversationTurn(f.GetString()!, v.GetString()!));
        }
        if (turns.Count == 0) throw new TrainingDataException("the conversation is empty", id);
        var labels = Paths(e, "patch_labels", id);
        if (labels.Count > 0 && labels.Count != images.Count)
            throw new TrainingDataException($"'patch_labels' names {labels.Count} label image(s) for {images.Count} image(s)", id);
        return new TrainingRecord(id, images, turns) { PatchLabels = labels };
    }

    /// <summary>A key holding one path or a list of paths (absent or null: none).</summary>
    private static List<string> Paths(JsonElement e, string key, string id)
    {
        var paths = new List<string>();
        if (!e.TryGetProperty(key, out var v) || v.ValueKind == JsonValueKind.Null) return paths;
        if (v.ValueKind == JsonValueKind.String) paths.Add(v.GetString()!);
        else if (v.ValueKind == JsonValueKind.Array)
            foreach (var x in v.EnumerateArray())
            {
                if (x.ValueKind != JsonValueKind.String) throw new TrainingDataException($"'{key}' holds a value that is not a path", id);
                paths.Add(x.GetString()!);
            }
        else throw new TrainingDataException($"'{key}' is neither a path nor a list of paths", id);
        return paths;
    }
}
