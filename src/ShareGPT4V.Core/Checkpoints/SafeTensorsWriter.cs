using System.Text;
using System.Text.Json;
using TorchSharp;

namespace ShareGPT4V.Checkpoints;

/// <summary>Progress of a conversion or sharded write, reported after each tensor.</summary>
public sealed record CheckpointWriteProgress(int TensorsDone, int TensorCount, long BytesDone, long TotalBytes, string Tensor, string File);

/// <summary>What a sharded write produced.</summary>
/// <param name="Files">The safetensors files written, in shard order (full paths).</param>
/// <param name="IndexFile">The <c>model.safetensors.index.json</c> written, or null for a single-file checkpoint.</param>
/// <param name="TensorCount">Tensors written.</param>
/// <param name="TotalBytes">Sum of the tensors' data bytes (the index's <c>metadata.total_size</c>).</param>
internal sealed record SafeTensorsWriteResult(IReadOnlyList<string> Files, string? IndexFile, int TensorCount, long TotalBytes);

/// <summary>
/// Writes safetensors files: an 8-byte little-endian header length, a JSON header (<c>__metadata__</c> first, then each
/// tensor's dtype, shape and data offsets, padded with spaces to a multiple of 8 bytes), then the tensor bytes.
/// Data is ordered by element size (largest first) then name, as the reference writer does, so every tensor starts
/// on an element-aligned offset and readers can memory-map it. Tensors are written one at a time: when streaming from
/// an <see cref="ITensorReader"/>, only the tensor being written is in memory. Files are written to a temporary name
/// and renamed when complete.
/// </summary>
internal static class SafeTensorsWriter
{
    /// <summary>The metadata transformers writes and expects (<c>{"format": "pt"}</c>).</summary>
    public static IReadOnlyDictionary<string, string> DefaultMetadata { get; } = new Dictionary<string, string> { ["format"] = "pt" };

    /// <summary>One tensor to write: its name in the output, its dtype and shape, and how to get its data.</summary>
    private sealed record Planned(string Name, torch.ScalarType DType, long[] Shape, long Bytes, Func<torch.Tensor> Fetch, bool OwnsFetched);

    /// <summary>Writes in-memory tensors (any device, any layout) to one safetensors file.</summary>
    public static void Write(string path, IEnumerable<KeyValuePair<string, torch.Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var planned = tensors.Select(kv => Plan(kv.Key, kv.Value.dtype, kv.Value.shape, () => kv.Value, owns: false)).ToList();
        WriteFile(path, planned, metadata ?? DefaultMetadata, null);
    }

    /// <summary>
    /// Streams tensors from <paramref name="source"/> into one safetensors file, one tensor in memory at a time.
    /// <paramref name="rename"/> maps a source name to the output name, or null to leave the tensor out.
    /// </summary>
    public static void Write(string path, ITensorReader source, Func<string, string?>? rename = null, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var planned = PlanFromReader(source, rename);
        WriteFile(path, planned, metadata ?? DefaultMetadata, null);
    }

    /// <summary>
    /// Streams <paramref name="source"/> into a sharded safetensors checkpoint in <paramref name="outDir"/>: tensors are
    /// packed in source order into shards of at most <paramref name="maxShardBytes"/> data bytes (a larger tensor gets a
    /// shard of its own) named <c>model-0000N-of-0000M.safetensors</c>, plus <c>model.safetensors.index.json</c>
    /// (<c>metadata.total_size</c>, <c>weight_map</c>). When everything fits in one shard, a single
    /// <c>model.safetensors</c> is written and no index, as transformers does. Every shard's <c>__metadata__</c> is
    /// <c>metadata</c> (default: <see cref="DefaultMetadata"/>).
    /// </summary>
    public static SafeTensorsWriteResult WriteSharded(string outDir, ITensorReader source, long maxShardBytes,
        Func<string, string?>? rename = null, IProgress<CheckpointWriteProgress>? progress = null, IReadOnlyDictionary<string, string>? metadata = null)
    {
        if (maxShardBytes <= 0) throw new ArgumentOutOfRangeException(nameof(maxShardBytes), "must be positive");
        Directory.CreateDirectory(outDir);
        var planned = PlanFromReader(source, rename);

        var shards = new List<List<Planned>>();
        long current = 0;
        foreach (var p in planned)
        {
            if (shards.Count == 0 || (current + p.Bytes > maxShardBytes && shards[^1].Count > 0))
            {
                shards.Add(new List<Planned>());
                current = 0;
            }
            shards[^1].Add(p);
            current += p.Bytes;
        }
        if (shards.Count == 0) shards.Add(new List<Planned>());

        long total = planned.Sum(p => p.Bytes);
        var files = new List<string>();
        var weightMap = new SortedDictionary<string, string>(StringComparer.Ordinal);
        var counter = new ProgressCounter(planned.Count, total, progress);
        for (int i = 0; i < shards.Count; i++)
        {
            string file = shards.Count == 1 ? "model.safetensors" : $"model-{i + 1:D5}-of-{shards.Count:D5}.safetensors";
            var path = Path.Combine(outDir, file);
            WriteFile(path, shards[i], metadata ?? DefaultMetadata, counter);
            files.Add(Path.GetFullPath(path));
            foreach (var p in shards[i]) weightMap[p.Name] = file;
        }

        string? indexPath = null;
        if (shards.Count > 1)
        {
            indexPath = Path.GetFullPath(Path.Combine(outDir, "model.safetensors.index.json"));
            var index = new Dictionary<string, object>
            {
                ["metadata"] = new Dictionary<string, long> { ["total_size"] = total },
                ["weight_map"] = weightMap,
            };
            var json = JsonSerializer.Serialize(index, new JsonSerializerOptions { WriteIndented = true });
            WriteAtomically(indexPath, s => s.Write(Encoding.UTF8.GetBytes(json + "\n")));
        }
        return new SafeTensorsWriteResult(files, indexPath, planned.Count, total);
    }

    private sealed class ProgressCounter(int count, long total, IProgress<CheckpointWriteProgress>? progress)
    {
        private int _done;
        private long _bytes;
        public void Report(string tensor, long bytes, string file)
        {
            _done++;
            _bytes += bytes;
            progress?.Report(new CheckpointWriteProgress(_done, count, _bytes, total, tensor, file));
        }
    }

    private static Planned Plan(string name, torch.ScalarType dtype, long[] shape, Func<torch.Tensor> fetch, bool owns)
    {
        SafeTensorsFile.DTypeName(dtype); // throws for dtypes safetensors cannot hold
        long count = shape.Aggregate(1L, (a, b) => checked(a * b));
        return new Planned(name, dtype, shape, checked(count * SafeTensorsFile.ElementSize(dtype)), fetch, owns);
    }

    private static List<Planned> PlanFromReader(ITensorReader source, Func<string, string?>? rename)
    {
        var planned = new List<Planned>();
        var seen = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var name in source.Names)
        {
            var outName = rename is null ? name : rename(name);
            if (outName is null) continue;
            if (outName.Length == 0 || outName == "__metadata__")
                throw new ArgumentException($"Tensor '{name}' would be renamed to the reserved or empty name '{outName}'");
            if (!seen.TryAdd(outName, name))
                throw new ArgumentException($"Tensors '{seen[outName]}' and '{name}' would both be written as '{outName}'");
            var info = source.GetInfo(name);
            planned.Add(Plan(outName, info.DType, info.Shape, () => source.Load(name), owns: true));
        }
        return planned;
    }

    private static void WriteFile(string path, List<Planned> tensors, IReadOnlyDictionary<string, string> metadata, ProgressCounter? counter)
    {
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var t in tensors)
            if (!names.Add(t.Name)) throw new ArgumentException($"Tensor name '{t.Name}' appears twice");
        var ordered = tensors.OrderByDescending(t => SafeTensorsFile.ElementSize(t.DType))
                             .ThenBy(t => t.Name, StringComparer.Ordinal).ToList();
        var header = Header(ordered, metadata);
        WriteAtomically(path, s =>
        {
            Span<byte> len = stackalloc byte[8];
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)header.Length);
            s.Write(len);
            s.Write(header);
            foreach (var p in ordered)
            {
                var t = p.Fetch();
                try { WriteData(s, p, t); }
                finally { if (p.OwnsFetched) t.Dispose(); }
                counter?.Report(p.Name, p.Bytes, Path.GetFileName(path));
            }
        });
    }

    private static byte[] Header(List<Planned> ordered, IReadOnlyDictionary<string, string> metadata)
    {
        var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms))
        {
            w.WriteStartObject();
            if (metadata.Count > 0)
            {
                w.WriteStartObject("__metadata__");
                foreach (var kv in metadata.OrderBy(k => k.Key, StringComparer.Ordinal)) w.WriteString(kv.Key, kv.Value);
                w.WriteEndObject();
            }
            long offset = 0;
            foreach (var p in ordered)
            {
                w.WriteStartObject(p.Name);
                w.WriteString("dtype", SafeTensorsFile.DTypeName(p.DType));
                w.WriteStartArray("shape");
                foreach (var d in p.Shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + p.Bytes);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += p.Bytes;
            }
            w.WriteEndObject();
        }
        // Pad with spaces so the data section starts on an 8-byte boundary (8-byte prefix + header).
        int pad = (int)((8 - ms.Length % 8) % 8);
        for (int i = 0; i < pad; i++) ms.WriteByte((byte)' ');
        return ms.ToArray();
    }

    private static void WriteData(Stream s, Planned p, torch.Tensor t)
    {
        if (t.dtype != p.DType || !t.shape.SequenceEqual(p.Shape))
            throw new CheckpointFormatException(
                $"Source tensor is {t.dtype} [{string.Join(", ", t.shape)}] but its metadata said {p.DType} [{string.Join(", ", p.Shape)}]", null, p.Name);
        if (p.Bytes == 0) return;
        using var scope = torch.NewDisposeScope();
        var flat = t.device_type == DeviceType.CPU ? t : t.cpu();
        flat = flat.contiguous().reshape(-1);
        // Chunks keep each span under 2 GiB and let the OS page the source in and out as we go.
        long chunk = Math.Max(1, (64L << 20) / SafeTensorsFile.ElementSize(p.DType));
        long n = flat.shape[0];
        for (long start = 0; start < n; start += chunk)
        {
            using var part = flat.narrow(0, start, Math.Min(chunk, n - start));
            s.Write(part.bytes);
        }
    }

    private static void WriteAtomically(string path, Action<Stream> write)
    {
        var full = Path.GetFullPath(path);
        var tmp = full + ".tmp-" + Environment.ProcessId;
        try
        {
            using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
                write(fs);
            File.Move(tmp, full, overwrite: true);
        }
        catch
        {
            try { File.Delete(tmp); } catch (IOException) { }
            throw;
        }
    }
}
