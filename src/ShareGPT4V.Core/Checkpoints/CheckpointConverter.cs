namespace ShareGPT4V.Checkpoints;

/// <summary>Converts any checkpoint the library can read (e.g. PyTorch <c>.bin</c> shards) into safetensors.</summary>
internal static class CheckpointConverter
{
    /// <summary>transformers' default shard size for <c>save_pretrained</c> (5 GB).</summary>
    public const long DefaultMaxShardBytes = 5_000_000_000;

    /// <summary>
    /// Streams every tensor of <paramref name="source"/> (optionally renamed; a null name drops the tensor) into a
    /// safetensors checkpoint in <paramref name="outDir"/>, one tensor in memory at a time, bit-identical and in the
    /// stored dtype. See <see cref="SafeTensorsWriter.WriteSharded"/> for the file layout.
    /// </summary>
    public static SafeTensorsWriteResult Convert(ITensorReader source, string outDir, Func<string, string?>? rename = null,
        long maxShardBytes = DefaultMaxShardBytes, IProgress<CheckpointWriteProgress>? progress = null) =>
        SafeTensorsWriter.WriteSharded(outDir, source, maxShardBytes, rename, progress);

    /// <summary>Converts the checkpoint <see cref="CheckpointDiscovery"/> finds in <paramref name="sourceFolder"/>.</summary>
    public static SafeTensorsWriteResult Convert(string sourceFolder, string outDir, Func<string, string?>? rename = null,
        long maxShardBytes = DefaultMaxShardBytes, IProgress<CheckpointWriteProgress>? progress = null)
    {
        if (Path.GetFullPath(sourceFolder).TrimEnd('/') == Path.GetFullPath(outDir).TrimEnd('/'))
            throw new ArgumentException("Convert into another folder than the source one (the output could replace files being read)");
        using var source = CheckpointDiscovery.Open(sourceFolder);
        return Convert(source, outDir, rename, maxShardBytes, progress);
    }
}
