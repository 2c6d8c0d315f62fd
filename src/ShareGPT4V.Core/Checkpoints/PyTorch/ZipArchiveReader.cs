using System.Buffers.Binary;
using System.Text;

namespace ShareGPT4V.Checkpoints.PyTorch;

/// <summary>One record of a zip archive, as the central directory describes it.</summary>
/// <param name="Name">The record's name (path inside the archive).</param>
/// <param name="Method">Compression method: 0 = STORED.</param>
/// <param name="CompressedSize">Bytes the record occupies in the file.</param>
/// <param name="Size">Bytes of the record's content.</param>
/// <param name="LocalHeaderOffset">Where the record's local header starts.</param>
/// <param name="DataOffset">Where the record's bytes start (after the local header, name and extra field).</param>
internal sealed record ZipEntry(string Name, int Method, long CompressedSize, long Size, long LocalHeaderOffset, long DataOffset)
{
    public bool IsStored => Method == 0;
}

/// <summary>
/// A minimal, read-only zip parser for the container <c>torch.save</c> writes: it reads the central directory
/// (zip64 end records and extra fields included, since real shards exceed 4 GiB) and reports where each record's
/// bytes start in the file, so STORED records can be memory-mapped. Everything read from the file is bounds-checked
/// before it is used; nothing is decompressed.
/// </summary>
internal sealed class ZipArchiveReader
{
    private const uint EndOfCentralDirSig = 0x06054b50;
    private const uint Zip64EndLocatorSig = 0x07064b50;
    private const uint Zip64EndSig = 0x06064b50;
    private const uint CentralEntrySig = 0x02014b50;
    private const uint LocalHeaderSig = 0x04034b50;
    private const int MaxEntries = 10_000_000;

    private readonly Dictionary<string, ZipEntry> _byName;

    public string FilePath { get; }
    public long FileLength { get; }
    public IReadOnlyList<ZipEntry> Entries { get; }

    private ZipArchiveReader(string path, long length, List<ZipEntry> entries)
    {
        FilePath = path;
        FileLength = length;
        Entries = entries;
        _byName = new Dictionary<string, ZipEntry>(StringComparer.Ordinal);
        foreach (var e in entries)
            if (!_byName.TryAdd(e.Name, e))
                throw new CheckpointFormatException($"Zip archive holds the record '{e.Name}' twice", path);
    }

    public ZipEntry? Find(string name) => _byName.TryGetValue(name, out var e) ? e : null;

    /// <summary>True when the file starts with a zip local-header signature (how torch tells zip from legacy).</summary>
    public static bool LooksLikeZip(Stream s)
    {
        if (s.Length < 4) return false;
        Span<byte> b = stackalloc byte[4];
        s.Seek(0, SeekOrigin.Begin);
        s.ReadExactly(b);
        s.Seek(0, SeekOrigin.Begin);
        return BinaryPrimitives.ReadUInt32LittleEndian(b) == LocalHeaderSig;
    }

    /// <summary>Parses the central directory of <paramref name="fs"/>. Throws <see cref="CheckpointFormatException"/> on any inconsistency.</summary>
    public static ZipArchiveReader Read(FileStream fs, string path)
    {
        long len = fs.Length;
        if (len < 22)
            throw new CheckpointFormatException("Not a valid zip archive: the file is truncated (too short for an end-of-central-directory record)", path);

        // The end record sits in the last 22 + 65535 (max comment) bytes; scan backwards for its signature.
        int tailLen = (int)Math.Min(len, 22 + 65535);
        var tail = ReadAt(fs, len - tailLen, tailLen);
        int eocd = -1;
        for (int i = tailLen - 22; i >= 0; i--)
            if (BinaryPrimitives.ReadUInt32LittleEndian(tail.AsSpan(i)) == EndOfCentralDirSig)
            {
                int commentLen = BinaryPrimitives.ReadUInt16LittleEndian(tail.AsSpan(i + 20));
                if (i + 22 + commentLen == tailLen) { eocd = i; break; }
            }
        if (eocd < 0)
            throw new CheckpointFormatException("Not a valid zip archive: no end-of-central-directory record (the file is truncated or not a torch.save zip)", path);

        long eocdPos = len - tailLen + eocd;
        var e = tail.AsSpan(eocd);
        long entryCount = BinaryPrimitives.ReadUInt16LittleEndian(e[10..]);
        long cdSize = BinaryPrimitives.ReadUInt32LittleEndian(e[12..]);
        long cdOffset = BinaryPrimitives.ReadUInt32LittleEndian(e[16..]);
        long cdLimit = eocdPos;

        // miniz (torch's writer) always adds a zip64 end record + locator just before the classic end record.
        if (eocdPos >= 20)
        {
            var loc = ReadAt(fs, eocdPos - 20, 20);
            if (BinaryPrimitives.ReadUInt32LittleEndian(loc) == Zip64EndLocatorSig)
            {
                long z64Pos = ToLong(BinaryPrimitives.ReadUInt64LittleEndian(loc.AsSpan(8)), path, "zip64 end record offset");
                if (z64Pos < 0 || z64Pos > eocdPos - 20 - 56)
                    throw new CheckpointFormatException($"Zip64 end record offset {z64Pos} lies outside the file", path);
                var z = ReadAt(fs, z64Pos, 56);
                if (BinaryPrimitives.ReadUInt32LittleEndian(z) != Zip64EndSig)
                    throw new CheckpointFormatException("Zip64 end-record locator points at something that is not a zip64 end record", path);
                entryCount = ToLong(BinaryPrimitives.ReadUInt64LittleEndian(z.AsSpan(32)), path, "entry count");
                cdSize = ToLong(BinaryPrimitives.ReadUInt64LittleEndian(z.AsSpan(40)), path, "central directory size");
                cdOffset = ToLong(BinaryPrimitives.ReadUInt64LittleEndian(z.AsSpan(48)), path, "central directory offset");
                cdLimit = z64Pos;
            }
        }

        if (cdOffset < 0 || cdSize < 0 || cdOffset > cdLimit || cdSize > cdLimit - cdOffset)
            throw new CheckpointFormatException(
                $"Central directory [{cdOffset}, +{cdSize}) lies outside the file ({len} bytes): the zip is truncated or corrupt", path);
        if (entryCount > MaxEntries || entryCount * 46 > cdSize)
            throw new CheckpointFormatException($"Central directory claims {entryCount} records, more than its {cdSize} bytes can hold", path);

        if (cdSize > 1L << 30)
            throw new CheckpointFormatException($"Central directory of {cdSize} bytes is larger than the 1 GiB accepted", path);
        var cd = ReadAt(fs, cdOffset, (int)cdSize);
        var entries = new List<ZipEntry>((int)entryCount);
        int p = 0;
        for (long n = 0; n < entryCount; n++)
        {
            if (p + 46 > cd.Length || BinaryPrimitives.ReadUInt32LittleEndian(cd.AsSpan(p)) != CentralEntrySig)
                throw new CheckpointFormatException($"Central directory record {n} is malformed (bad signature or truncated)", path);
            var h = cd.AsSpan(p);
            int method = BinaryPrimitives.ReadUInt16LittleEndian(h[10..]);
            long csize = BinaryPrimitives.ReadUInt32LittleEndian(h[20..]);
            long usize = BinaryPrimitives.ReadUInt32LittleEndian(h[24..]);
            int nameLen = BinaryPrimitives.ReadUInt16LittleEndian(h[28..]);
            int extraLen = BinaryPrimitives.ReadUInt16LittleEndian(h[30..]);
            int commentLen = BinaryPrimitives.ReadUInt16LittleEndian(h[32..]);
            long localOffset = BinaryPrimitives.ReadUInt32LittleEndian(h[42..]);
            if (p + 46 + nameLen + extraLen + commentLen > cd.Length)
                throw new CheckpointFormatException($"Central directory record {n} runs past the directory's end", path);
            string name = Encoding.UTF8.GetString(cd, p + 46, nameLen);

            // Zip64 extended information: 8-byte values for exactly those fields that hold 0xFFFFFFFF, in this order.
            var extra = cd.AsSpan(p + 46 + nameLen, extraLen);
            while (extra.Length >= 4)
            {
                int id = BinaryPrimitives.ReadUInt16LittleEndian(extra);
                int size = BinaryPrimitives.ReadUInt16LittleEndian(extra[2..]);
                if (size > extra.Length - 4)
                    throw new CheckpointFormatException($"Extra field of record '{name}' runs past its end", path);
                if (id == 0x0001)
                {
                    var z = extra.Slice(4, size).ToArray();
                    int q = 0;
                    long Next(string what)
                    {
                        if (q + 8 > z.Length)
                            throw new CheckpointFormatException($"Zip64 extra field of record '{name}' lacks the {what}", path);
                        long v = ToLong(BinaryPrimitives.ReadUInt64LittleEndian(z.AsSpan(q)), path, what);
                        q += 8;
                        return v;
                    }
                    if (usize == 0xFFFFFFFF) usize = Next("size");
                    if (csize == 0xFFFFFFFF) csize = Next("compressed size");
                    if (localOffset == 0xFFFFFFFF) localOffset = Next("local header offset");
                }
                extra = extra[(4 + size)..];
            }
            p += 46 + nameLen + extraLen + commentLen;

            if (localOffset > cdOffset - 30)
                throw new CheckpointFormatException($"Record '{name}' has its local header at {localOffset}, outside the archive's data area", path);
            var lh = ReadAt(fs, localOffset, 30);
            if (BinaryPrimitives.ReadUInt32LittleEndian(lh) != LocalHeaderSig)
                throw new CheckpointFormatException($"Record '{name}': no local header at offset {localOffset}", path);
            long dataOffset = localOffset + 30 + BinaryPrimitives.ReadUInt16LittleEndian(lh.AsSpan(26)) + BinaryPrimitives.ReadUInt16LittleEndian(lh.AsSpan(28));
            if (dataOffset > cdOffset || csize > cdOffset - dataOffset)
                throw new CheckpointFormatException(
                    $"Record '{name}' claims bytes [{dataOffset}, +{csize}) beyond the archive's data area (ends at {cdOffset}): the file is truncated or corrupt", path);
            if (method == 0 && csize != usize)
                throw new CheckpointFormatException($"STORED record '{name}' has size {usize} but occupies {csize} bytes", path);
            entries.Add(new ZipEntry(name, method, csize, usize, localOffset, dataOffset));
        }
        return new ZipArchiveReader(path, len, entries);
    }

    private static long ToLong(ulong v, string path, string what) =>
        v > long.MaxValue ? throw new CheckpointFormatException($"Zip {what} {v} is out of range", path) : (long)v;

    internal static byte[] ReadAt(FileStream fs, long offset, int count)
    {
        if (offset < 0 || count < 0 || offset > fs.Length - count)
            throw new CheckpointFormatException($"Read of {count} bytes at offset {offset} runs past the end of the file ({fs.Length} bytes): the file is truncated", fs.Name);
        var buf = new byte[count];
        fs.Seek(offset, SeekOrigin.Begin);
        fs.ReadExactly(buf);
        return buf;
    }
}
