using TorchSharp;

namespace ShareGPT4V.Checkpoints;

/// <summary>What a checkpoint says about one tensor before it is read.</summary>
/// <param name="Name">The key in the checkpoint.</param>
/// <param name="DType">The element type as stored.</param>
/// <param name="Shape">The shape as stored.</param>
/// <param name="FilePath">The file that holds the tensor's data.</param>
internal sealed record TensorInfo(string Name, torch.ScalarType DType, long[] Shape, string FilePath)
{
    public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);
    /// <summary>The block format of a quantized matrix (<see cref="DType"/> is then what it dequantizes to); null for plain tensors.</summary>
    public ShareGPT4V.Modeling.QuantizationFormat? Format { get; init; }
    public override string ToString() => $"{Name} {DType} [{string.Join(", ", Shape)}] in {FilePath}";
}

/// <summary>
/// Read access to the tensors of a checkpoint (one file or a sharded set). Implementations validate the whole
/// layout when opened, so a load that starts never fails half-way because of a malformed header.
/// </summary>
internal interface ITensorReader : IDisposable
{
    /// <summary>A short description of where the tensors come from (file or index path), for messages.</summary>
    string Source { get; }

    /// <summary>All tensor names, in checkpoint order.</summary>
    IReadOnlyList<string> Names { get; }

    bool Contains(string name);

    /// <summary>Dtype, shape and file of a tensor. Throws <see cref="CheckpointFormatException"/> for an unknown name.</summary>
    TensorInfo GetInfo(string name);

    /// <summary>
    /// Reads one tensor, converted to <paramref name="dtype"/> (default: as stored) and placed on <paramref name="device"/>
    /// (default: CPU). The caller owns the result. Where the stored layout allows, a CPU tensor in the stored dtype
    /// is a view of the memory-mapped file (no copy).
    /// </summary>
    torch.Tensor Load(string name, torch.ScalarType? dtype = null, torch.Device? device = null);
}
