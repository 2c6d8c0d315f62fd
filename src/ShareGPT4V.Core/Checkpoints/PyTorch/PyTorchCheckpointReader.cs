using System.Buffers.Binary;
using System.Numerics;
using System.Text;
using TorchSharp;

namespace ShareGPT4V.Checkpoints.PyTorch;

/// <summary>Which of torch.save's two containers a <c>.bin</c> file uses.</summary>
internal enum PyTorchContainer
{
    /// <summary>The zip container (torch &gt;= 1.6 default): <c>&lt;folder&gt;/data.pkl</c> + <c>&lt;folder&gt;/data/&lt;key&gt;</c> records.</summary>
    Zip,
    /// <summary>The pre-1.6 stream: five pickles followed by the raw storages.</summary>
    Legacy,
}

/// <summary>
/// Reads a PyTorch <c>torch.save</c> state dict (<c>pytorch_model.bin</c>) without executing its pickle: the pickle is
/// interpreted by <see cref="RestrictedUnpickler"/>, every tensor's storage, offset, shape and strides are checked
/// against the file when it is opened, and tensor data is read only on <see cref="Load"/>. Tensors whose storage
/// starts at an element-aligned file offset are strided views of one memory mapping of the file (no copy when the
/// stored dtype is asked for and the view is contiguous); others are copied one tensor at a time.
/// </summary>
internal sealed class PyTorchCheckpointReader : ITensorReader
{
    /// <summary>The largest <c>data.pkl</c> accepted (real ones are well under a megabyte per thousand tensors).</summary>
    public const long MaxPickleBytes = 1L << 30;

    // The legacy stream opens with this pickled magic number (torch.serialization's MAGIC_NUMBER).
    private static readonly BigInteger LegacyMagic = BigInteger.Parse("119547037146038801333356");
    private const long LegacyProtocolVersion = 1001;

    /// <summary>Where one storage's bytes lie in the file.</summary>
    private sealed record StorageRecord(string Key, long Offset, long Length);

    private sealed record Entry(TensorInfo Info, TensorRef Ref, StorageRecord Record);

    private readonly Dictionary<string, Entry> _entries;
    private readonly List<string> _names;
    private bool _disposed;

    public string FilePath { get; }
    public string Source => FilePath;
    public long FileLength { get; }
    private readonly FileMapping _mapping;
    public PyTorchContainer Container { get; }
    public IReadOnlyList<string> Names => _names;

    private PyTorchCheckpointReader(string path, long length, PyTorchContainer container, Dictionary<string, Entry> entries, List<string> names)
    {
        FilePath = path;
        FileLength = length;
        _mapping = new FileMapping(path, length);
        Container = container;
        _entries = entries;
        _names = names;
    }

    /// <summary>
    /// Opens and validates a <c>torch.save</c> file (zip or legacy). Throws <see cref="UnsafeCheckpointException"/>
    /// when the pickle reaches outside the allow-list and <see cref="CheckpointFormatException"/> for anything malformed.
    /// </summary>
    public static PyTorchCheckpointReader Open(string path)
    {
        var full = Path.GetFullPath(path);
        if (!File.Exists(full))
            throw new CheckpointFormatException("PyTorch checkpoint file not found", full);
        using var fs = new FileStream(full, FileMode.Open, FileAccess.Read, FileShare.Read, 4096, FileOptions.RandomAccess);
        if (ZipArchiveReader.LooksLikeZip(fs))
            return OpenZip(fs, full);
        Span<byte> head = stackalloc byte[2];
        if (fs.Length >= 2)
        {
            fs.ReadExactly(head);
            fs.Seek(0, SeekOrigin.Begin);
            if (head[0] == 0x80 && head[1] <= 5)
                return OpenLegacy(fs, full);
        }
        throw new CheckpointFormatException("Not a PyTorch checkpoint: neither a torch.save zip nor a legacy pickle stream", full);
    }

    /// <summary>Opens a sharded checkpoint from <c>pytorch_model.bin.index.json</c>.</summary>
    public static ShardedTensorReader OpenIndex(string indexPath) => ShardedTensorReader.OpenIndex(indexPath, p => Open(p));

    private static PyTorchCheckpointReader OpenZip(FileStream fs, string path)
    {
        var zip = ZipArchiveReader.Read(fs, path);

        // torch names the top folder after the file (or "archive"); find it through the one "<folder>/data.pkl".
        var pkls = zip.Entries.Where(e => e.Name.EndsWith("/data.pkl", StringComparison.Ordinal)
                                          && e.Name.IndexOf('/') == e.Name.Length - "/data.pkl".Length).ToList();
        if (pkls.Count != 1)
            throw new CheckpointFormatException(
                pkls.Count == 0 ? "Zip archive has no '<folder>/data.pkl' record: not a torch.save checkpoint"
                                : $"Zip archive has {pkls.Count} '<folder>/data.pkl' records", path);
        var pkl = pkls[0];
        string prefix = pkl.Name[..^"data.pkl".Length];

        if (zip.Find(prefix + "byteorder") is { } bo)
        {
            var order = Encoding.ASCII.GetString(ReadRecord(fs, path, bo, 64)).Trim();
            if (order != "little")
                throw new CheckpointFormatException($"Checkpoint was saved with byteorder '{order}'; only 'little' is supported", path);
        }

        var pickle = ReadRecord(fs, path, pkl, MaxPickleBytes);
        var root = RestrictedUnpickler.Load(pickle, path, pid => PersistentStorage(pid, path, legacy: false));

        StorageRecord Resolve(string key, string tensor)
        {
            var e = zip.Find(prefix + "data/" + key)
                ?? throw new CheckpointFormatException($"Storage record 'data/{key}' is missing from the archive", path, tensor);
            if (!e.IsStored)
                throw new CheckpointFormatException($"Storage record 'data/{key}' is compressed (method {e.Method}); only STORED records are supported", path, tensor);
            return new StorageRecord(key, e.DataOffset, e.Size);
        }
        return Build(path, fs.Length, PyTorchContainer.Zip, root, Resolve);
    }

    private static byte[] ReadRecord(FileStream fs, string path, ZipEntry e, long maxBytes)
    {
        if (!e.IsStored)
            throw new CheckpointFormatException($"Record '{e.Name}' is compressed (method {e.Method}); torch.save writes STORED records only", path);
        if (e.Size > maxBytes)
            throw new CheckpointFormatException($"Record '{e.Name}' has {e.Size} bytes, more than the {maxBytes} accepted", path);
        return ZipArchiveReader.ReadAt(fs, e.DataOffset, (int)e.Size);
    }

    private static PyTorchCheckpointReader OpenLegacy(FileStream fs, string path)
    {
        // Not disposed: disposing would seek the shared FileStream back over its read-ahead.
        var bs = new BufferedStream(fs, 1 << 16);
        long end = fs.Length;
        var magic = RestrictedUnpickler.Load(bs, end, path, null);
        if (!(magic is BigInteger bi && bi == LegacyMagic))
            throw new CheckpointFormatException("Not a PyTorch checkpoint: the legacy stream's magic number is wrong", path);
        var version = RestrictedUnpickler.Load(bs, end, path, null);
        if (version is not LegacyProtocolVersion)
            throw new CheckpointFormatException($"Unsupported legacy protocol version {version}", path);
        var sysInfo = RestrictedUnpickler.Load(bs, end, path, null) as PickleDict
            ?? throw new CheckpointFormatException("Legacy stream's sys_info is not a dict", path);
        var little = sysInfo.Items.FirstOrDefault(kv => kv.Key as string == "little_endian").Value;
        if (little is not true)
            throw new CheckpointFormatException("Checkpoint was saved on a big-endian machine; only little-endian data is supported", path);

        var storages = new Dictionary<string, StorageRef>(StringComparer.Ordinal);
        var root = RestrictedUnpickler.Load(bs, end, path, pid =>
        {
            var s = PersistentStorage(pid, path, legacy: true);
            if (storages.TryGetValue(s.Key, out var prev) && SafeTensorsFile.ElementSize(prev.DType) * prev.Numel != SafeTensorsFile.ElementSize(s.DType) * s.Numel)
                throw new CheckpointFormatException($"Storage '{s.Key}' is described with two different sizes", path);
            storages[s.Key] = s;
            return s;
        });
        var keys = RestrictedUnpickler.Load(bs, end, path, null) as PickleList
            ?? throw new CheckpointFormatException("Legacy stream's storage key list is not a list", path);

        // The raw storages follow, in key-list order: int64 element count, then count * itemsize bytes.
        var records = new Dictionary<string, StorageRecord>(StringComparer.Ordinal);
        long pos = bs.Position;
        Span<byte> count = stackalloc byte[8];
        foreach (var k in keys.Items)
        {
            var key = k as string ?? throw new CheckpointFormatException("Legacy storage key is not a string", path);
            if (!storages.TryGetValue(key, out var s))
                throw new CheckpointFormatException($"Legacy storage '{key}' is listed but no tensor uses it (its element size is unknown)", path);
            if (pos > end - 8)
                throw new CheckpointFormatException($"File is truncated: storage '{key}' starts past the end", path);
            fs.Seek(pos, SeekOrigin.Begin);
            fs.ReadExactly(count);
            long n = BinaryPrimitives.ReadInt64LittleEndian(count);
            int item = SafeTensorsFile.ElementSize(s.DType);
            if (n < 0 || n > (end - pos - 8) / item)
                throw new CheckpointFormatException($"Storage '{key}' claims {n} elements, more than the file holds after offset {pos + 8}: the file is truncated", path);
            records[key] = new StorageRecord(key, pos + 8, n * item);
            pos += 8 + n * item;
        }

        StorageRecord Resolve(string key, string tensor) => records.TryGetValue(key, out var r) ? r
            : throw new CheckpointFormatException($"Storage '{key}' is not in the legacy stream's storage list", path, tensor);
        return Build(path, end, PyTorchContainer.Legacy, root, Resolve);
    }

    /// <summary>Turns a persistent id <c>('storage', torch.&lt;T&gt;Storage, key, location, numel[, None])</c> into a <see cref="StorageRef"/>.</summary>
    private static StorageRef PersistentStorage(PickleTuple pid, string path, bool legacy)
    {
        int expected = legacy ? 6 : 5;
        if (pid.Count != expected || pid[0] is not "storage")
            throw new CheckpointFormatException($"Persistent id is not a ('storage', ...) {expected}-tuple", path);
        if (pid[1] is not PickleGlobal g || RestrictedUnpickler.StorageDType(g) is not { } dtype)
            throw new CheckpointFormatException("Persistent id does not name a supported storage type", path);
        string key = pid[2] switch
        {
            string s when s.Length is > 0 and <= 256 => s,
            long l => l.ToString(System.Globalization.CultureInfo.InvariantCulture),
            _ => throw new CheckpointFormatException("Persistent id has an invalid storage key", path),
        };
        if (key.Contains('/') || key.Contains('\\') || key.Contains(".."))
            throw new CheckpointFormatException($"Storage key '{key}' is not a plain name", path);
        if (pid[3] is not string location)
            throw new CheckpointFormatException("Persistent id's location is not a string", path);
        if (pid[4] is not long numel || numel < 0)
            throw new CheckpointFormatException("Persistent id's element count is not a non-negative integer", path);
        if (legacy && pid[5] is not null)
            throw new CheckpointFormatException("Legacy storage views (view_metadata) are not supported", path);
        return new StorageRef(key, dtype, numel, location);
    }

    private static PyTorchCheckpointReader Build(string path, long fileLength, PyTorchContainer container, object? root,
        Func<string, string, StorageRecord> resolve)
    {
        if (root is not PickleDict dict)
            throw new CheckpointFormatException("Checkpoint's top-level object is not a dict (state dict)", path);
        var entries = new Dictionary<string, Entry>(StringComparer.Ordinal);
        var names = new List<string>();
        foreach (var kv in dict.Items)
        {
            // Non-tensor values (e.g. an epoch counter) are not weights; skip them.
            if (kv.Key is not string name || kv.Value is not TensorRef t) continue;
            var record = resolve(t.Storage.Key, name);
            Validate(path, name, t, record, fileLength);
            entries[name] = new Entry(new TensorInfo(name, t.Storage.DType, t.Shape, path), t, record);
            names.Add(name);
        }
        if (names.Count == 0)
        {
            // A training checkpoint ({"model": state_dict, "optimizer": ...}) is a common mistake; say so.
            var nested = dict.Items.Where(kv => kv.Key is string && kv.Value is PickleDict).Select(kv => $"'{kv.Key}'").Take(10).ToList();
            if (nested.Count > 0)
                throw new CheckpointFormatException(
                    $"Checkpoint holds no tensors at the top level; the keys {string.Join(", ", nested)} hold nested dicts (a training checkpoint rather than a state dict?)", path);
        }
        return new PyTorchCheckpointReader(path, fileLength, container, entries, names);
    }

    private static void Validate(string path, string name, TensorRef t, StorageRecord record, long fileLength)
    {
        int item = SafeTensorsFile.ElementSize(t.Storage.DType);
        if (record.Offset < 0 || record.Length < 0 || record.Offset > fileLength || record.Length > fileLength - record.Offset)
            throw new CheckpointFormatException($"Storage record '{record.Key}' lies outside the file", path, name);
        long storageBytes;
        try { storageBytes = checked(t.Storage.Numel * item); }
        catch (OverflowException) { throw new CheckpointFormatException("Storage size overflows", path, name); }
        if (storageBytes > record.Length)
            throw new CheckpointFormatException(
                $"Storage '{record.Key}' should hold {t.Storage.Numel} {t.Storage.DType} elements ({storageBytes} bytes) but its record has {record.Length} bytes",
                path, name);
        if (t.StorageOffset < 0)
            throw new CheckpointFormatException($"Negative storage offset {t.StorageOffset}", path, name);
        long count = 1, last = t.StorageOffset;
        try
        {
            for (int i = 0; i < t.Shape.Length; i++)
            {
                if (t.Shape[i] < 0 || t.Strides[i] < 0)
                    throw new CheckpointFormatException($"Negative size or stride in [{string.Join(", ", t.Shape)}] / ({string.Join(", ", t.Strides)})", path, name);
                count = checked(count * t.Shape[i]);
                if (t.Shape[i] > 0) last = checked(last + (t.Shape[i] - 1) * t.Strides[i]);
            }
        }
        catch (OverflowException) { throw new CheckpointFormatException("Tensor extent overflows", path, name); }
        if (count > 0 && last >= t.Storage.Numel)
            throw new CheckpointFormatException(
                $"View (offset {t.StorageOffset}, size [{string.Join(", ", t.Shape)}], stride ({string.Join(", ", t.Strides)})) reaches element {last} but storage '{record.Key}' has only {t.Storage.Numel} elements",
                path, name);
    }

    public bool Contains(string name) => _entries.ContainsKey(name);

    public TensorInfo GetInfo(string name) =>
        _entries.TryGetValue(name, out var e) ? e.Info : throw new CheckpointFormatException("Tensor not found", FilePath, name);

    /// <summary>The storage offset, strides and storage key of a tensor as saved (for diagnostics and tests).</summary>
    public (string StorageKey, long StorageOffset, long[] Strides) GetLayout(string name)
    {
        var e = _entries.TryGetValue(name, out var x) ? x : throw new CheckpointFormatException("Tensor not found", FilePath, name);
        return (e.Ref.Storage.Key, e.Ref.StorageOffset, e.Ref.Strides);
    }

    public torch.Tensor Load(string name, torch.ScalarType? dtype = null, torch.Device? device = null)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (!_entries.TryGetValue(name, out var e))
            throw new CheckpointFormatException("Tensor not found", FilePath, name);
        CheckUnchanged(name);
        var t = e.Ref;
        var stored = t.Storage.DType;
        var target = dtype ?? stored;
        int item = SafeTensorsFile.ElementSize(stored);
        long count = e.Info.ElementCount;

        using var scope = torch.NewDisposeScope();
        torch.Tensor result;
        if (count == 0)
        {
            result = torch.empty(t.Shape, target);
        }
        else
        {
            torch.Tensor view;
            bool mapped = e.Record.Offset % item == 0;
            if (mapped)
            {
                view = Mapped(stored).as_strided(t.Shape, t.Strides, e.Record.Offset / item + t.StorageOffset);
            }
            else
            {
                // Unaligned storage (legacy streams have no padding): read just this view's extent.
                long last = t.StorageOffset;
                for (int i = 0; i < t.Shape.Length; i++) last += (t.Shape[i] - 1) * t.Strides[i];
                long extent = last - t.StorageOffset + 1;
                var buffer = torch.empty(extent, stored);
                using (var fs = new FileStream(FilePath, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16))
                {
                    fs.Seek(e.Record.Offset + t.StorageOffset * item, SeekOrigin.Begin);
                    buffer.ReadBytesFromStream(fs);
                }
                view = buffer.as_strided(t.Shape, t.Strides, 0);
            }
            bool contiguous = IsContiguous(t.Shape, t.Strides);
            if (contiguous && target == stored)
                result = view;
            else if (contiguous && mapped && (device is null || device.type == DeviceType.CPU))
            {
                // As SafeTensorsFile does: convert into memory that may get huge pages, then drop the mapped source pages
                // from this process (they stay in the page cache), so a converting load never holds both copies resident.
                result = torch.empty(t.Shape, target);
                MappedMemory.AdviseHugePages(result);
                MappedMemory.Populate(view);
                result.copy_(view);
                MappedMemory.Release(view);
            }
            else if (contiguous)
                result = view.to(target);
            else
                result = torch.empty(t.Shape, target).copy_(view); // gather + convert in one pass
        }
        if (device is not null && device.type != DeviceType.CPU)
            result = result.to(device);
        return result.MoveToOuterDisposeScope();
    }

    internal static bool IsContiguous(long[] shape, long[] strides)
    {
        long expected = 1;
        for (int i = shape.Length - 1; i >= 0; i--)
        {
            if (shape[i] == 1) continue;
            if (strides[i] != expected) return false;
            expected *= shape[i];
        }
        return true;
    }

    private torch.Tensor Mapped(torch.ScalarType dtype) => _mapping.Get(dtype);

    private void CheckUnchanged(string tensor) => _mapping.CheckUnchanged(tensor);

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _mapping.Dispose();
    }
}
