using TorchSharp;

namespace ShareGPT4V.Checkpoints;

/// <summary>
/// The memory mappings of one checkpoint file, shared by its readers: one MAP_PRIVATE mapping of the whole file per
/// element type, so tensors stored in that type are views of it (copy-on-write; loading costs page-cache reads, not a
/// second copy of the weights), and a check that the file is still the one whose layout was validated.
/// </summary>
internal sealed class FileMapping(string path, long length) : IDisposable
{
    private readonly Dictionary<torch.ScalarType, torch.Tensor> _byType = new();

    public torch.Tensor Get(torch.ScalarType dtype)
    {
        lock (_byType)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (!_byType.TryGetValue(dtype, out var m))
            {
                m = torch.from_file(path, shared: false, size: length / SafeTensorsFile.ElementSize(dtype), dtype: dtype);
                m.DetachFromDisposeScope();
                _byType[dtype] = m;
            }
            return m;
        }
    }

    /// <summary>
    /// The layout was validated against the file as it was when opened. A file truncated or replaced in place since
    /// (a download still running, a copy over it) would make the mapping fault (SIGBUS) or a read come up short:
    /// refuse instead.
    /// </summary>
    public void CheckUnchanged(string tensor)
    {
        long now;
        // Through a stream, not FileInfo: a checkpoint may be a symbolic link, whose FileInfo length is the link's.
        try { using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete, 1); now = fs.Length; }
        catch (IOException) { now = -1; }
        if (now != length)
            throw new CheckpointFormatException(
                now < 0 ? "The file was removed after it was opened" : $"The file changed after it was opened ({length} bytes then, {now} now); open it again",
                path, tensor);
    }

    private bool _disposed;

    public void Dispose()
    {
        lock (_byType)
        {
            _disposed = true;
            foreach (var m in _byType.Values) m.Dispose();
            _byType.Clear();
        }
    }
}
