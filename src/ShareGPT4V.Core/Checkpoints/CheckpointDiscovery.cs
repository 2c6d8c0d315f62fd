using ShareGPT4V.Checkpoints.PyTorch;

namespace ShareGPT4V.Checkpoints;

/// <summary>The kinds of checkpoint layout <see cref="CheckpointDiscovery"/> recognises, in order of preference.</summary>
internal enum CheckpointFormat
{
    /// <summary><c>model.safetensors.index.json</c> + shards.</summary>
    SafeTensorsIndex,
    /// <summary><c>model.safetensors</c>.</summary>
    SafeTensors,
    /// <summary>The only <c>*.safetensors</c> file of the folder, whatever its name.</summary>
    SingleSafeTensors,
    /// <summary><c>pytorch_model.bin.index.json</c> + <c>.bin</c> shards.</summary>
    PyTorchIndex,
    /// <summary><c>pytorch_model.bin</c>.</summary>
    PyTorch,
}

/// <summary>The checkpoint found in a folder.</summary>
/// <param name="Folder">The folder searched.</param>
/// <param name="Format">Which layout was picked.</param>
/// <param name="EntryFile">The file opened: the index, or the single weights file.</param>
internal sealed record DiscoveredCheckpoint(string Folder, CheckpointFormat Format, string EntryFile)
{
    /// <summary>Opens the tensors (validating every file).</summary>
    public ITensorReader Open() => Format switch
    {
        CheckpointFormat.SafeTensorsIndex => ShardedTensorReader.OpenIndex(EntryFile, p => SafeTensorsFile.Open(p)),
        CheckpointFormat.SafeTensors or CheckpointFormat.SingleSafeTensors => SafeTensorsFile.Open(EntryFile),
        CheckpointFormat.PyTorchIndex => PyTorchCheckpointReader.OpenIndex(EntryFile),
        CheckpointFormat.PyTorch => PyTorchCheckpointReader.Open(EntryFile),
        _ => throw new InvalidOperationException(Format.ToString()),
    };

    /// <summary>
    /// The weight files this checkpoint consists of: the shards an index names (sorted), or the single file.
    /// Read from the index without validating it; <see cref="Open"/> validates.
    /// </summary>
    public IReadOnlyList<string> Files => Format is CheckpointFormat.SafeTensorsIndex or CheckpointFormat.PyTorchIndex
        ? ShardFiles()
        : new[] { EntryFile };

    private List<string> ShardFiles() =>
        ShardedTensorReader.ReadWeightMap(EntryFile).Values.Distinct().OrderBy(x => x, StringComparer.Ordinal)
            .Select(f => Path.Combine(Folder, f)).ToList();

    public override string ToString() => $"{Format}: {EntryFile}";
}

/// <summary>
/// Finds the weights in a model folder the way the hub's loaders do: a safetensors index, then
/// <c>model.safetensors</c>, then a lone <c>*.safetensors</c>, then a PyTorch index, then <c>pytorch_model.bin</c>.
/// safetensors wins whenever present, since it needs no unpickling.
/// </summary>
internal static class CheckpointDiscovery
{
    /// <summary>Picks the checkpoint of <paramref name="folder"/> without opening it.</summary>
    public static DiscoveredCheckpoint Find(string folder)
    {
        var dir = Path.GetFullPath(folder);
        if (!Directory.Exists(dir))
            throw new CheckpointFormatException("Checkpoint folder not found", dir);
        string In(string name) => Path.Combine(dir, name);

        if (File.Exists(In("model.safetensors.index.json")))
            return new(dir, CheckpointFormat.SafeTensorsIndex, In("model.safetensors.index.json"));
        if (File.Exists(In("model.safetensors")))
            return new(dir, CheckpointFormat.SafeTensors, In("model.safetensors"));
        var safetensors = Directory.GetFiles(dir, "*.safetensors");
        if (safetensors.Length == 1)
            return new(dir, CheckpointFormat.SingleSafeTensors, safetensors[0]);
        if (File.Exists(In("pytorch_model.bin.index.json")))
            return new(dir, CheckpointFormat.PyTorchIndex, In("pytorch_model.bin.index.json"));
        if (File.Exists(In("pytorch_model.bin")))
            return new(dir, CheckpointFormat.PyTorch, In("pytorch_model.bin"));

        var found = Directory.GetFiles(dir).Select(Path.GetFileName).OrderBy(n => n, StringComparer.Ordinal).ToList();
        var listing = found.Count == 0 ? "the folder is empty" : "found: " + string.Join(", ", found.Take(50)) + (found.Count > 50 ? ", ..." : "");
        var why = safetensors.Length > 1 ? $" ({safetensors.Length} *.safetensors files but no model.safetensors.index.json to tie them together)" : "";
        throw new CheckpointFormatException(
            "No checkpoint found: expected model.safetensors.index.json, model.safetensors, a single *.safetensors, " +
            $"pytorch_model.bin.index.json or pytorch_model.bin{why}; {listing}", dir);
    }

    /// <summary>Finds and opens the checkpoint of <paramref name="folder"/>.</summary>
    public static ITensorReader Open(string folder) => Find(folder).Open();

    /// <summary>Finds and opens the checkpoint of <paramref name="folder"/>, also returning what was picked.</summary>
    public static ITensorReader Open(string folder, out DiscoveredCheckpoint picked)
    {
        picked = Find(folder);
        return picked.Open();
    }
}
