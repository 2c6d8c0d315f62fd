using System.Text.Json;
using TorchSharp;

namespace ShareGPT4V.Checkpoints;

/// <summary>
/// Several tensor files presented as one checkpoint: either a sharded checkpoint described by an index
/// (<c>model.safetensors.index.json</c> / <c>pytorch_model.bin.index.json</c>: <c>weight_map</c> name → shard file),
/// or a plain list of files (e.g. the LLM folder and a separate vision-tower folder). Names must be unique.
/// </summary>
internal sealed class ShardedTensorReader : ITensorReader
{
    private readonly List<ITensorReader> _readers;
    private readonly Dictionary<string, ITensorReader> _byName = new(StringComparer.Ordinal);
    private readonly List<string> _names = new();

    public string Source { get; }
    public IReadOnlyList<string> Names => _names;
    public IReadOnlyList<ITensorReader> Parts => _readers;

    /// <summary>Takes ownership of <paramref name="readers"/>.</summary>
    public ShardedTensorReader(string source, IEnumerable<ITensorReader> readers)
    {
        Source = source;
        _readers = readers.ToList();
        foreach (var r in _readers)
            foreach (var n in r.Names)
            {
                if (!_byName.TryAdd(n, r))
                {
                    Dispose();
                    throw new CheckpointFormatException($"Tensor appears in two files ('{_byName[n].Source}' and '{r.Source}')", r.Source, n);
                }
                _names.Add(n);
            }
    }

    /// <summary>
    /// Opens a sharded checkpoint from its index file. Every shard named in the index must exist and hold exactly
    /// the tensors the index assigns to it. <paramref name="openShard"/> opens one shard file (safetensors or .bin).
    /// </summary>
    public static ShardedTensorReader OpenIndex(string indexPath, Func<string, ITensorReader> openShard)
    {
        var full = Path.GetFullPath(indexPath);
        var weightMap = ReadWeightMap(full);

        var dir = Path.GetDirectoryName(full)!;
        // Tensor names per shard, grouped once (a hostile index may name many shards and many tensors).
        var byShard = weightMap.GroupBy(kv => kv.Value, StringComparer.Ordinal)
            .OrderBy(g => g.Key, StringComparer.Ordinal)
            .Select(g => (File: g.Key, Names: g.Select(kv => kv.Key).ToHashSet(StringComparer.Ordinal)))
            .ToList();
        foreach (var (f, _) in byShard)
            if (!File.Exists(Path.Combine(dir, f)))
                throw new CheckpointFormatException($"Shard '{f}' named in the index is missing", full);

        var readers = new List<ITensorReader>();
        try
        {
            foreach (var (f, expected) in byShard)
            {
                var r = openShard(Path.Combine(dir, f));
                readers.Add(r);
                foreach (var name in expected)
                    if (!r.Contains(name))
                        throw new CheckpointFormatException($"Index assigns this tensor to '{f}' but the shard does not contain it", r.Source, name);
                foreach (var name in r.Names)
                    if (!expected.Contains(name))
                        throw new CheckpointFormatException($"Shard '{f}' holds a tensor the index does not list (or assigns to another shard)", r.Source, name);
            }
        }
        catch
        {
            foreach (var r in readers) r.Dispose();
            throw;
        }
        return new ShardedTensorReader(full, readers);
    }

    /// <summary>
    /// Reads and validates the <c>weight_map</c> of an index file (tensor name → shard file name). Shard names must be
    /// plain file names, so an index can never point outside its folder.
    /// </summary>
    internal static Dictionary<string, string> ReadWeightMap(string full)
    {
        if (!File.Exists(full))
            throw new CheckpointFormatException("Index file not found", full);
        var info = new FileInfo(full);
        if (info.Length > 64L * 1024 * 1024)
            throw new CheckpointFormatException($"Index file is {info.Length} bytes, larger than the 64 MiB accepted", full);
        Dictionary<string, string> weightMap = new(StringComparer.Ordinal);
        try
        {
            var bytes = File.ReadAllBytes(full);
            // Invalid UTF-8 inside JSON strings only surfaces (as InvalidOperationException) when a string is read.
            if (!System.Text.Unicode.Utf8.IsValid(bytes))
                throw new CheckpointFormatException("Index is not valid UTF-8 JSON", full);
            using var doc = JsonDocument.Parse(bytes, new JsonDocumentOptions { MaxDepth = 16 });
            if (Configuration.JsonText.FindUndecodableString(doc.RootElement) is { } where)
                throw new CheckpointFormatException("Index: " + Configuration.JsonText.UndecodableMessage(where), full);
            if (doc.RootElement.ValueKind != JsonValueKind.Object
                || !doc.RootElement.TryGetProperty("weight_map", out var wm) || wm.ValueKind != JsonValueKind.Object)
                throw new CheckpointFormatException("Index has no 'weight_map' object", full);
            foreach (var p in wm.EnumerateObject())
            {
                if (p.Value.ValueKind != JsonValueKind.String)
                    throw new CheckpointFormatException("weight_map value is not a file name", full, p.Name);
                var file = p.Value.GetString()!;
                if (file.Length == 0 || Path.IsPathRooted(file) || file.Contains("..") || file.Contains('/') || file.Contains('\\') || file.Contains('\0'))
                    throw new CheckpointFormatException($"weight_map names '{file}', which is not a plain file name in the checkpoint folder", full, p.Name);
                weightMap[p.Name] = file;
            }
        }
        catch (JsonException e)
        {
            throw new CheckpointFormatException($"Index is not valid JSON: {e.Message}", full, inner: e);
        }
        return weightMap;
    }

    public bool Contains(string name) => _byName.ContainsKey(name);

    public TensorInfo GetInfo(string name) =>
        _byName.TryGetValue(name, out var r) ? r.GetInfo(name) : throw new CheckpointFormatException("Tensor not found", Source, name);

    public torch.Tensor Load(string name, torch.ScalarType? dtype = null, torch.Device? device = null) =>
        _byName.TryGetValue(name, out var r) ? r.Load(name, dtype, device) : throw new CheckpointFormatException("Tensor not found", Source, name);

    public void Dispose()
    {
        foreach (var r in _readers) r.Dispose();
    }
}
