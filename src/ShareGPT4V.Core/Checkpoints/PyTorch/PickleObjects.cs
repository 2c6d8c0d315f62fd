using TorchSharp;

namespace ShareGPT4V.Checkpoints.PyTorch;

// The values the restricted unpickler builds. They are plain data: nothing here can run code, and none of them
// has a recursive ToString (a hostile pickle may nest containers arbitrarily deep).

/// <summary>A module-level name the pickle referred to with GLOBAL / STACK_GLOBAL (only allow-listed ones are ever created).</summary>
internal sealed record PickleGlobal(string Module, string Name)
{
    public override string ToString() => $"{Module}.{Name}";
}

/// <summary>A Python tuple.</summary>
internal sealed class PickleTuple
{
    public PickleTuple(object?[] items) => Items = items;
    public object?[] Items { get; }
    public int Count => Items.Length;
    public object? this[int i] => Items[i];
    public override string ToString() => $"tuple of {Items.Length}";
}

/// <summary>A Python list.</summary>
internal sealed class PickleList
{
    public List<object?> Items { get; } = new();
    public override string ToString() => $"list of {Items.Count}";
}

/// <summary>A Python dict or collections.OrderedDict, in insertion order (string keys replace earlier values as in Python).</summary>
internal sealed class PickleDict
{
    private readonly Dictionary<string, int> _stringKeys = new(StringComparer.Ordinal);
    public List<KeyValuePair<object?, object?>> Items { get; } = new();
    public bool IsOrderedDict { get; init; }

    public void Set(object? key, object? value)
    {
        if (key is string s)
        {
            if (_stringKeys.TryGetValue(s, out int i)) { Items[i] = new(key, value); return; }
            _stringKeys[s] = Items.Count;
        }
        Items.Add(new(key, value));
    }

    public override string ToString() => $"dict of {Items.Count}";
}

/// <summary>A storage named by a persistent id: <c>('storage', torch.&lt;T&gt;Storage, key, location, numel[, view_metadata])</c>.</summary>
/// <param name="Key">The storage key: the zip record <c>data/&lt;key&gt;</c>, or the legacy stream's key.</param>
/// <param name="DType">The element type of the storage type.</param>
/// <param name="Numel">Elements in the storage.</param>
/// <param name="Location">Where it was saved from ("cpu", "cuda:0"); informational only.</param>
internal sealed record StorageRef(string Key, torch.ScalarType DType, long Numel, string Location);

/// <summary>A tensor the pickle rebuilds from a storage: a strided view of it.</summary>
internal sealed record TensorRef(StorageRef Storage, long StorageOffset, long[] Shape, long[] Strides, bool RequiresGrad);
